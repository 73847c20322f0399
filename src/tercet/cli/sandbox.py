"""`tercet sandbox exec`: run a command in the code-execution sandbox, as the server would.

Without `--container` the command runs in a fresh container that is removed afterwards; with
`--container ID` it runs in that container (created if it does not exist), whose workspace
persists under the data directory until it sits idle too long.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from tercet.sandbox.containers import Container, ContainerError, ContainerManager
from tercet.sandbox.runner import SandboxUnavailable
from tercet.sandbox.runtime import default_runtime
from tercet.server.config import default_data_dir


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "sandbox", help="run commands in the code-execution sandbox", description=__doc__
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    run_parser = actions.add_parser("exec", help="run a command: tercet sandbox exec -- CMD...")
    run_parser.add_argument("--container", metavar="ID", help="reuse (or create) this container")
    run_parser.add_argument("--data-dir", help="default: $TERCET_DATA_DIR or the user's data dir")
    run_parser.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        print("error: give a command after --", file=sys.stderr)
        return 2
    data_dir = default_data_dir() if args.data_dir is None else Path(args.data_dir)
    manager = ContainerManager(data_dir / "sandbox", runtime=default_runtime())
    try:
        container = _container(manager, args.container)
        try:
            result = manager.run(container, command)
        finally:
            if args.container is None:
                manager.delete(container.id)
    except SandboxUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ContainerError as exc:
        print(f"error: {exc.code}: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    if result.timed_out:
        print("error: execution_time_exceeded", file=sys.stderr)
        return 124
    return result.return_code if result.return_code >= 0 else 128 - result.return_code


def _container(manager: ContainerManager, wanted: str | None) -> Container:
    if wanted is None:
        return manager.create()
    try:
        return manager.get(wanted)
    except ContainerError:
        return manager.create(wanted)
