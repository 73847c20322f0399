"""`tercet admin`: operators' actions on a running server, through its admin API (/admin/v1).

Each command is one request under an operator's admin key (--admin-key, else
$TERCET_ADMIN_KEY). A sensitive action answers with an approval request that other operators
approve (`tercet admin approvals approve ID`). Exit status: 0 done (or waiting for approvals),
1 refused by the server or the server unreachable (its message printed), 2 bad input here.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import httpx

ADMIN_KEY_ENV = "TERCET_ADMIN_KEY"
ADMIN_URL_ENV = "TERCET_ADMIN_URL"
MODES = ("off", "monitor", "enforce", "default")
STATES = ("pending", "executed", "rejected", "expired", "failed")


class BadInput(Exception):
    """Input this command refuses before asking the server (exit 2)."""


class Refused(Exception):
    """The server refused, or could not be reached (exit 1)."""


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "admin",
        help="operators' actions: API keys, egress grants, approvals",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--url",
        default=os.environ.get(ADMIN_URL_ENV, "http://127.0.0.1:8080"),
        help=f"the server (default ${ADMIN_URL_ENV}, else http://127.0.0.1:8080)",
    )
    parser.add_argument(
        "--admin-key",
        default=os.environ.get(ADMIN_KEY_ENV),
        help=f"your operator admin key (default ${ADMIN_KEY_ENV}); not an API key",
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    topics = parser.add_subparsers(dest="topic", required=True, metavar="TOPIC")

    keys = topics.add_parser("keys", help="API keys").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    create = keys.add_parser("create", help="make an API key; prints it, once")
    create.add_argument("name", help="what the key is for (shown in listings)")
    create.add_argument("--classifier-mode", choices=MODES, help="the key's classifier mode")
    keys.add_parser("list", help="API keys: the configured ones by id, and those made here")
    revoke = keys.add_parser("revoke", help="revoke a key made here (at once)")
    revoke.add_argument("key_id")
    policy = keys.add_parser("policy", help="change a key's policy")
    policy.add_argument("key_id")
    policy.add_argument(
        "--classifier-mode",
        choices=MODES,
        required=True,
        help="the safety classifiers' mode for this key ('default': the server's)",
    )

    egress = topics.add_parser("egress", help="containers' network egress").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    grant = egress.add_parser("grant", help="grant a code-execution container egress")
    grant.add_argument("container_id")
    grant.add_argument(
        "--grant",
        required=True,
        metavar="JSON",
        help='the grant as a JSON object, or @FILE: {"allow": ["host:port", ...], '
        '"byte_budget": bytes, "window_s": seconds, "expires_at": unix time}',
    )
    take = egress.add_parser("revoke", help="take a container's egress away (at once)")
    take.add_argument("container_id")

    held = topics.add_parser(
        "requests", help="requests the classifiers held (refused in enforce mode)"
    ).add_subparsers(dest="action", required=True, metavar="ACTION")
    release = held.add_parser(
        "release", help="let a held request's key send it again past the input classifier"
    )
    release.add_argument("request_id", help="the id the refusal named (req_...)")

    approvals = topics.add_parser("approvals", help="approval requests").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    listing = approvals.add_parser("list", help="approval requests, newest first")
    listing.add_argument("--state", choices=STATES, help="only these (e.g. pending)")
    show = approvals.add_parser("show", help="one approval request")
    show.add_argument("approval_id")
    approve = approvals.add_parser("approve", help="approve a request (the last one runs it)")
    approve.add_argument("approval_id")
    reject = approvals.add_parser("reject", help="reject (or, as its requester, withdraw) one")
    reject.add_argument("approval_id")
    reject.add_argument("--reason", help="why, for the record")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        if not args.admin_key:
            raise BadInput(f"an admin key is needed: --admin-key or ${ADMIN_KEY_ENV}")
        request = _request(args)
        with httpx.Client(
            base_url=args.url.rstrip("/") + "/admin/v1",
            headers={"x-api-key": args.admin_key},
            timeout=args.timeout,
        ) as client:
            response = _send(client, *request)
    except BadInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Refused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    _show(args, response)
    return 0


def _request(args: argparse.Namespace) -> tuple[str, str, dict[str, Any] | None]:
    """The method, path and body of what `args` ask for."""
    if args.topic == "keys":
        if args.action == "create":
            body: dict[str, Any] = {"name": args.name}
            if args.classifier_mode is not None:
                body["policy"] = {"classifier_mode": _mode(args.classifier_mode)}
            return "POST", "/keys", body
        if args.action == "list":
            return "GET", "/keys", None
        if args.action == "revoke":
            return "DELETE", f"/keys/{_segment(args.key_id)}", None
        return (
            "PATCH",
            f"/keys/{_segment(args.key_id)}",
            {"classifier_mode": _mode(args.classifier_mode)},
        )
    if args.topic == "egress":
        path = f"/containers/{_segment(args.container_id)}/egress"
        if args.action == "revoke":
            return "DELETE", path, None
        return "POST", path, _grant(args.grant)
    if args.topic == "requests":
        return "POST", "/actions/request.release", {"target": args.request_id}
    if args.action == "list":
        return "GET", "/approvals" + (f"?state={args.state}" if args.state else ""), None
    approval = _segment(args.approval_id)
    if args.action == "show":
        return "GET", f"/approvals/{approval}", None
    if args.action == "approve":
        return "POST", f"/approvals/{approval}/approve", None
    reason = {"reason": args.reason} if args.reason else {}
    return "POST", f"/approvals/{approval}/reject", reason


def _send(
    client: httpx.Client, method: str, path: str, body: dict[str, Any] | None
) -> dict[str, Any]:
    try:
        response = client.request(method, path, json=body)
    except httpx.HTTPError as exc:
        raise Refused(f"cannot reach the server at {client.base_url}: {exc}") from exc
    try:
        data = response.json()
    except ValueError:
        data = None
    if response.is_error:
        error = data.get("error") if isinstance(data, dict) else None
        if isinstance(error, dict) and "message" in error:
            raise Refused(f"{response.status_code} {error.get('type')}: {error['message']}")
        raise Refused(f"{response.status_code}: {response.text[:500] or response.reason_phrase}")
    if not isinstance(data, dict):
        raise Refused(f"{response.status_code}: not a JSON object: {response.text[:500]}")
    data["_status"] = response.status_code
    return data


def _show(args: argparse.Namespace, data: dict[str, Any]) -> None:
    status = data.pop("_status")
    if "data" in data:  # a listing
        for item in data["data"]:
            print(_row(item))
        return
    print(json.dumps(data, indent=2))
    if status == 202:
        print(
            f"waiting for {data['approvals_required']} approvals from other operators: "
            f"tercet admin approvals approve {data['id']}",
            file=sys.stderr,
        )
    if "key" in data or "key" in data.get("shown_once", {}):
        print("the key is shown only now: keep it safe", file=sys.stderr)


def _row(item: dict[str, Any]) -> str:
    if item.get("type") == "api_key":
        if item.get("source") == "config":
            return f"{item['id']}\tconfig"
        state = "revoked" if item.get("revoked_at") else "live"
        mode = (item.get("policy") or {}).get("classifier_mode") or "default"
        return f"{item['id']}\t{state}\t{item['created_at']}\tclassifiers={mode}\t{item['name']}"
    approvers = ",".join(a["operator"] for a in item.get("approvals", []))
    return (
        f"{item['id']}\t{item['state']}\t{item['action']}\t{item['target']}\t"
        f"by={item['requester']}\tapprovals={len(item.get('approvals', []))}/"
        f"{item['approvals_required']}{(' ' + approvers) if approvers else ''}\t"
        f"expires={item['expires_at']}"
    )


def _mode(mode: str) -> str | None:
    return None if mode == "default" else mode


def _grant(text: str) -> dict[str, Any]:
    source = "--grant"
    if text.startswith("@"):
        source = text[1:]
        try:
            text = Path(source).read_text()
        except OSError as exc:
            raise BadInput(f"--grant: cannot read {source}: {exc.strerror or exc}") from exc
    try:
        grant = json.loads(text)
    except ValueError as exc:
        raise BadInput(f"{source}: not valid JSON: {exc}") from exc
    if not isinstance(grant, dict):
        raise BadInput(f"{source}: the grant is a JSON object")
    return grant


def _segment(value: str) -> str:
    """An id as one path segment: nothing that would reach another route."""
    if not value or any(c in value for c in "/?#%") or value in (".", ".."):
        raise BadInput(f"{value!r} is not an id")
    return value
