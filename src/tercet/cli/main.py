"""`tercet`: the command line. One subcommand per module; this file only dispatches."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from tercet import __version__
from tercet.cli import admin, audit, chat, code, eval, files, sandbox, serve


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tercet",
        description="A self-hosted server compatible with Anthropic's Messages API.",
    )
    parser.add_argument("--version", action="version", version=f"tercet {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve.register(commands)
    chat.register(commands)
    code.register(commands)
    files.register(commands)
    sandbox.register(commands)
    eval.register(commands)
    audit.register(commands)
    admin.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
