"""`tercet serve`: run the Messages API server."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from tercet.cli.engine_options import (
    add_cache_arguments,
    add_engine_arguments,
    load_engine,
    prompt_cache,
)
from tercet.engine.bundled import BundledModelMissing
from tercet.guard import PolicyError
from tercet.guard.constitution import ConstitutionError
from tercet.server.admin import AdminConfigError, AdminSettings
from tercet.server.app import create_app
from tercet.server.classifiers import ClassifierConfigError
from tercet.server.config import ModelRoute, ServerConfig, default_api_keys, default_data_dir
from tercet.server.runner import bind, url_of, uvicorn_server


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "serve", help="run the Messages API server", description=__doc__
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)"
    )
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks one)")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="where files, caches and keys live (default $TERCET_DATA_DIR or the user data folder)",
    )
    parser.add_argument(
        "--api-key",
        action="append",
        default=None,
        metavar="KEY",
        help="accept this key (x-api-key or Bearer); repeatable; also $TERCET_API_KEYS",
    )
    parser.add_argument(
        "--no-auth",
        action="store_true",
        help="serve without keys on a non-loopback address (not recommended)",
    )
    parser.add_argument(
        "--route",
        action="append",
        default=[],
        metavar="PATTERN=MODEL",
        help="send requested model names matching PATTERN to MODEL (default: claude-* and "
        "anthropic* go to the served model)",
    )
    parser.add_argument(
        "--max-queue", type=int, default=16, help="requests that may wait (then 529)"
    )
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    parser.add_argument(
        "--mcp-allow",
        action="append",
        default=[],
        metavar="URL_PREFIX",
        help="MCP connector: requests may name MCP servers under this URL prefix; repeatable; "
        "'*' allows any (default: loopback only)",
    )
    parser.add_argument(
        "--no-mcp-loopback",
        action="store_true",
        help="MCP connector: refuse MCP servers on loopback too",
    )
    parser.add_argument(
        "--mcp-call-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="MCP connector: the longest one tool call may take (default 60)",
    )
    parser.add_argument(
        "--guard",
        default=None,
        metavar="POLICY",
        help="guard the tools the server runs (code execution, MCP connector) against prompt "
        "injection with a guard policy: a TOML file, or 'default' (tercet's; README: The guard). "
        "Off by default",
    )
    parser.add_argument(
        "--classifiers",
        default=None,
        metavar="SETTINGS",
        help="constitutional classifiers on each request and its streamed answer: a settings "
        "TOML file, or 'default' (enforce, tercet's constitution, the served model as judge; "
        "docs/classifiers.md). Off by default",
    )
    parser.add_argument(
        "--end-conversation",
        action="store_true",
        help="offer the model an end_conversation tool, for repeated abuse only; a conversation "
        "it ended is refused (403) when sent again (docs/classifiers.md). Off by default",
    )
    parser.add_argument(
        "--audit",
        action="store_true",
        help="keep the hash-chained audit log in <data-dir>/audit: every request, server-run "
        "tool call, classifier and guard decision, operator action and egress connection "
        "(`tercet audit verify|tail|search|scan`). Off by default",
    )
    parser.add_argument(
        "--audit-content",
        action="store_true",
        help="with --audit, log prompts, answers and tool inputs and outputs as text (by "
        "default only their SHA-256)",
    )
    parser.add_argument(
        "--audit-retention-days",
        type=int,
        default=90,
        metavar="DAYS",
        help="with --audit, delete segments older than this (0 keeps all; default 90)",
    )
    parser.add_argument(
        "--admin",
        type=Path,
        default=None,
        metavar="FILE",
        help="the admin API's operators and approval rules (TOML: [operators] name = admin key "
        "or 'sha256:<hex>', sensitive_actions, approvals_required, approval_ttl_s); default: "
        "operators from $TERCET_ADMIN_KEYS (name=key,...), the admin API off without any",
    )
    parser.add_argument(
        "--metrics",
        choices=["open", "key", "off"],
        default="open",
        help="/metrics for Prometheus: open (no API key, as vLLM's), key (one of the API keys, "
        "e.g. Prometheus' `authorization: {credentials: KEY}`), or off (default open)",
    )
    parser.add_argument(
        "--prefill-progress",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="log a long prompt's prefill progress this often (default 5)",
    )
    add_engine_arguments(parser)
    add_cache_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    settings: dict[str, Any] = {"host": args.host, "port": args.port, "max_queue": args.max_queue}
    settings["data_dir"] = args.data_dir or default_data_dir()
    settings["api_keys"] = args.api_key or default_api_keys()
    if args.route:
        settings["routes"] = [_parse_route(r) for r in args.route]
    settings["mcp_allowed_urls"] = args.mcp_allow
    settings["mcp_allow_loopback"] = not args.no_mcp_loopback
    settings["mcp_call_timeout_s"] = args.mcp_call_timeout
    settings["metrics"] = args.metrics
    settings["prefill_progress_interval_s"] = args.prefill_progress
    settings["guard"] = args.guard
    settings["classifiers"] = args.classifiers
    settings["end_conversation"] = args.end_conversation
    settings["audit"] = args.audit
    settings["audit_content"] = args.audit_content
    settings["audit_retention_days"] = args.audit_retention_days
    if args.admin is not None:
        try:
            settings["admin"] = AdminSettings.from_toml(args.admin)
        except AdminConfigError as exc:
            print(f"error: --admin: {exc}", file=sys.stderr)
            return 2
    try:
        config = ServerConfig(**settings)
    except ValidationError as invalid:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in invalid.errors()
        )
        print(f"error: {problems}", file=sys.stderr)
        return 2
    if not config.is_loopback and not config.api_keys and not args.no_auth:
        print(
            f"error: {config.host} is reachable from other machines; pass --api-key KEY "
            "(or set TERCET_API_KEYS), or --no-auth to serve it open",
            file=sys.stderr,
        )
        return 2
    try:
        config.guard_policy()  # before the model loads: a policy that cannot be used fails now
    except PolicyError as exc:
        print(f"error: --guard: {exc}", file=sys.stderr)
        return 2
    try:
        config.classifier_settings()  # the settings and the constitution, before the model
    except (ClassifierConfigError, ConstitutionError) as exc:
        print(f"error: --classifiers: {exc}", file=sys.stderr)
        return 2
    config.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        sock = bind(config.host, config.port)
    except OSError as exc:
        print(f"error: cannot listen on {config.host}:{config.port}: {exc}", file=sys.stderr)
        return 1
    try:
        cache = prompt_cache(args, config.data_dir) if args.engine == "llama" else None
        engine = load_engine(args, cache)
    except (BundledModelMissing, ValueError, OSError) as exc:
        print(f"error: cannot load the model: {exc}", file=sys.stderr)
        return 1
    try:
        app = create_app(config, [engine])
    except ClassifierConfigError as exc:  # the judge's model, known once the engine is
        print(f"error: --classifiers: {exc}", file=sys.stderr)
        return 2
    base_url = url_of(sock)
    key_hint = "one of your --api-key values" if config.api_keys else "anything"
    print(
        f"tercet {engine.spec.id} listening on {base_url} (data in {config.data_dir})\n"
        f"  anthropic SDK: anthropic.Anthropic(base_url={base_url!r}, api_key=...)\n"
        f"  Claude Code:   ANTHROPIC_BASE_URL={base_url} ANTHROPIC_API_KEY=<{key_hint}> claude\n",
        file=sys.stderr,
        flush=True,
    )
    _log_to_stderr(args.log_level)
    uvicorn_server(app, args.log_level).run(sockets=[sock])
    return 0


def _log_to_stderr(level: str) -> None:
    """tercet's own lines (one per request as it ends, prefill progress) beside uvicorn's."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("tercet")
    logger.addHandler(handler)
    logger.setLevel(level.upper())


def _parse_route(text: str) -> ModelRoute:
    pattern, sep, target = text.partition("=")
    if not sep or not pattern or not target:
        raise SystemExit(f"error: --route wants PATTERN=MODEL, got {text!r}")
    return ModelRoute(pattern=pattern, target=target)
