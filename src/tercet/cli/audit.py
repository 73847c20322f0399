"""`tercet audit`: check and read the audit log.

  verify   check the hash chain: exit 0 if intact, 1 with each problem on a line
  tail     the newest records (--follow: then those appended, until Ctrl-C)
  search   records by kind, actor (key id), time, request id or text
  scan     offline detection: flagged keys and conversations (tercet audit scan --help)

The log is `<data dir>/audit` unless --dir names another.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from tercet.audit.log import AuditRecord, parse_ts
from tercet.audit.read import Follower, RecordFilter, records, tail
from tercet.audit.verify import verify
from tercet.cli import audit_scan
from tercet.server.config import default_data_dir

_VALUE_WIDTH = 80
_FIRST = ("request_id", "event", "action", "tool")


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "audit",
        help="verify and read the audit log",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name: str, help: str) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = actions.add_parser(name, help=help, description=help)
        sub.add_argument("--dir", type=Path, help="the audit log (default: <data dir>/audit)")
        return sub

    check = action("verify", "check the hash chain; each problem with its file, line and seq")
    check.set_defaults(run=run_verify)

    newest = action("tail", "the newest records")
    newest.add_argument("-n", type=int, default=20, metavar="N", help="how many (default 20)")
    newest.add_argument("-f", "--follow", action="store_true", help="then wait for new ones")
    newest.add_argument("--json", action="store_true", help="each record as its JSON line")
    newest.set_defaults(run=run_tail)

    find = action("search", "records that match every condition given")
    find.add_argument("--kind", action="append", metavar="K", help="request, tool_call, ...")
    find.add_argument("--actor", metavar="ID", help="a key id, op:<name> or server")
    find.add_argument("--since", metavar="ISO", help="from this time (UTC unless it says)")
    find.add_argument("--until", metavar="ISO", help="up to this time")
    find.add_argument("--request", metavar="ID", help="a request id")
    find.add_argument("text", nargs="?", help="a substring of the record (any case)")
    find.add_argument("--json", action="store_true", help="each record as its JSON line")
    find.set_defaults(run=run_search)

    audit_scan.register(actions)


def _directory(args: argparse.Namespace) -> Path | None:
    directory: Path = args.dir if args.dir is not None else default_data_dir() / "audit"
    if not directory.is_dir():
        hint = "" if args.dir is not None else " (give --dir, or set TERCET_DATA_DIR)"
        print(f"error: no audit log at {directory}{hint}", file=sys.stderr)
        return None
    return directory


def run_verify(args: argparse.Namespace) -> int:
    directory = _directory(args)
    if directory is None:
        return 2
    report = verify(directory)
    if report.segments == 0:
        print(f"error: no audit segments in {directory}", file=sys.stderr)
        return 2
    for problem in report.problems:
        print(problem)
    for note in report.notes:
        print(f"note: {note}")
    print(report.summary())
    if report.last_hash is not None:
        print(f"last hash: {report.last_hash}")
    return 0 if report.ok else 1


def run_tail(args: argparse.Namespace) -> int:
    directory = _directory(args)
    if directory is None:
        return 2
    follower = Follower(directory) if args.follow else None
    shown = tail(directory, args.n)
    _print(shown, args.json)
    if follower is None:
        return 0
    last = shown[-1].seq if shown else -1
    for record in follower.follow():
        if record.seq > last:  # those already shown by tail are not shown again
            _print([record], args.json)
    return 0


def run_search(args: argparse.Namespace) -> int:
    directory = _directory(args)
    if directory is None:
        return 2
    try:
        keep = RecordFilter(
            kinds=frozenset(args.kind) if args.kind else None,
            actor=args.actor,
            since=_time(args.since, "--since"),
            until=_time(args.until, "--until"),
            request_id=args.request,
            text=args.text,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _print(records(directory, keep), args.json)
    return 0


def _time(text: str | None, option: str) -> datetime | None:
    if text is None:
        return None
    try:
        return parse_ts(text)
    except ValueError:
        raise ValueError(f"{option}: not an ISO 8601 time: {text!r}") from None


def _print(found: Iterable[AuditRecord], as_json: bool) -> None:
    try:
        for record in found:
            if as_json:
                print(json.dumps(record.to_dict(), ensure_ascii=False))
            else:
                print(format_record(record))
            sys.stdout.flush()
    except BrokenPipeError:  # `| head`: the reader is gone; no traceback at exit either
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def format_record(record: AuditRecord) -> str:
    """One compact line: `seq ts kind actor key=value...` (digests cut to 12 hex)."""
    parts = [str(record.seq), record.ts, record.kind, record.actor or "-"]
    first = [key for key in _FIRST if key in record.fields]
    keys = first + [key for key in record.fields if key not in _FIRST]
    parts += [f"{key}={_value(record.fields[key])}" for key in keys]
    return " ".join(parts)


def _value(value: Any) -> str:
    if isinstance(value, str):
        if value.startswith("sha256:") and len(value) == 71:
            return value[:19]
        text = value if value and " " not in value and "=" not in value else json.dumps(value)
    else:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return text if len(text) <= _VALUE_WIDTH else text[: _VALUE_WIDTH - 1] + "…"
