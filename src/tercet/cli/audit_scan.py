"""`tercet audit scan`: offline detection over the audit log.

Reads the log a batch of records at a time and runs the scan rules over it (API keys and private
keys in logged outputs, injected instructions in logged content, classifier flags, bursts of
refusals or guard denials per key, egress refused or cut, operators' actions refused;
src/tercet/audit/scan_rules.toml),
optionally a constitutional classifier over logged prompts and answers. Writes a JSON report of
the flagged keys, conversations and requests (to --out, or to stdout) and prints a summary.
Exit status: 0 when the report is written, findings or not; 2 for bad input.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from tercet.audit.scan import BATCH_SIZE, ScanError, ScanRules, parse_since, scan_log
from tercet.guard.classifiers import Classifier, load_factory
from tercet.guard.constitution import Constitution, ConstitutionError
from tercet.server.config import default_data_dir


def register(audit_subcommands: Any) -> None:
    """Add `scan` to `tercet audit`'s subcommands."""
    parser: argparse.ArgumentParser = audit_subcommands.add_parser(
        "scan",
        help="run detectors over the logged records; a report of flagged keys and conversations",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--dir", metavar="DIR", help="the audit log's directory (default: DATA_DIR/audit)"
    )
    parser.add_argument("--out", metavar="REPORT.json", help="write the JSON report here")
    parser.add_argument(
        "--rules", metavar="FILE", help="scan rules over the shipped ones (scan_rules.toml)"
    )
    parser.add_argument("--since", metavar="ISO", help="only records from this time on")
    parser.add_argument(
        "--classifier",
        metavar="MODULE:FACTORY",
        help="an in-process constitutional classifier over logged prompts and answers: "
        "FACTORY(constitution) returns an object with `async classify(exchange)`",
    )
    parser.add_argument(
        "--constitution",
        default="default",
        metavar="NAME|FILE",
        help="the constitution given to --classifier (default: the shipped one)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=BATCH_SIZE,
        metavar="N",
        help=f"records per batch (default {BATCH_SIZE})",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        report = asyncio.run(_scan(args))
    except (ScanError, ConstitutionError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n"
    if args.out is None:
        sys.stdout.write(text)
        print(report.summary(), file=sys.stderr)
        return 0
    try:
        Path(args.out).write_text(text, encoding="utf-8")
    except OSError as exc:
        print(f"error: {args.out}: cannot write the report: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(report.summary())
    print(f"report: {args.out}")
    return 0


async def _scan(args: argparse.Namespace) -> Any:
    if args.batch_size < 1:
        raise ScanError("--batch-size: must be at least 1")
    directory = Path(args.dir) if args.dir else default_data_dir() / "audit"
    rules = ScanRules.load(Path(args.rules) if args.rules else None)
    since = parse_since(args.since) if args.since else None
    classifier: Classifier | None = None
    if args.classifier:
        factory = load_factory(args.classifier)
        classifier = factory(Constitution.resolve(args.constitution))
    return await scan_log(
        directory,
        rules,
        since=since,
        classifier=classifier,
        classifier_name=args.classifier or "classifier",
        batch_size=args.batch_size,
    )
