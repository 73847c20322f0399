"""The regression check: the project's tests run on a tree, in the sandbox.

The command is the user's (`--verify CMD`) or the project's usual one, found from its files
(`detect_test_command`). A pytest run the check finds itself reports each test (a junit XML
file, read and removed), so a candidate that breaks one test that passed before is caught
even where other tests failed from the start (the bug being fixed). Any other command is one
test, named by the command, that passes when it exits 0.

The check runs as the agent's sandboxed bash does (`agent.tools.bash_sandbox`): the tree
writable at its own path, the system and the project's linked environments read-only, no
network. Where bubblewrap cannot run, it runs directly, and says so (`sandboxed` False).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import secrets
import shlex
import signal
import time
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tercet.agent.tools.bash_sandbox import sandbox_argv
from tercet.attempts.junit import parse_junit
from tercet.attempts.select import CheckResult
from tercet.sandbox import runner
from tercet.sandbox.config import MIB, ExecutionLimits

OUTPUT_TAIL = 4000  # characters of the command's output kept
NPM_NO_TEST = "no test specified"  # npm init's placeholder test script


@dataclass(frozen=True)
class TestCommand:
    """A check command, and whether it is pytest (then each test is reported)."""

    __test__ = False  # not a pytest test class

    command: str
    pytest: bool = False


def verify_command(command: str) -> TestCommand:
    """A `--verify` command: a plain pytest call (no shell operators) is reported per test."""
    try:
        words = shlex.split(command)
    except ValueError:
        return TestCommand(command)
    if any(w in ("&&", "||", "|", ";", ">", "<") or w.endswith(";") for w in words):
        return TestCommand(command)
    names = [os.path.basename(w) for w in words]
    runs_pytest = bool(names) and (
        names[0] in ("pytest", "py.test")
        or any(a == "-m" and b == "pytest" for a, b in itertools.pairwise(names))
    )
    return TestCommand(command, pytest=runs_pytest)


def detect_test_command(project: Path) -> TestCommand | None:
    """The project's usual test command, from its files: pytest, npm test, cargo test, go
    test or make test (the first that applies, in that order); None when none does."""
    if _uses_pytest(project):
        python = (
            ".venv/bin/python" if (project / ".venv" / "bin" / "python").exists() else "python3"
        )
        return TestCommand(f"{python} -m pytest", pytest=True)
    package = project / "package.json"
    if package.is_file():
        try:
            scripts = json.loads(package.read_text(encoding="utf-8")).get("scripts") or {}
        except (OSError, ValueError, AttributeError):
            scripts = {}
        test = scripts.get("test") if isinstance(scripts, dict) else None
        if isinstance(test, str) and NPM_NO_TEST not in test:
            return TestCommand("npm test")
    if (project / "Cargo.toml").is_file():
        return TestCommand("cargo test")
    if (project / "go.mod").is_file():
        return TestCommand("go test ./...")
    for name in ("Makefile", "makefile", "GNUmakefile"):
        makefile = project / name
        if makefile.is_file() and re.search(
            r"^test\s*:", makefile.read_text(encoding="utf-8", errors="replace"), re.M
        ):
            return TestCommand("make test")
    return None


def _uses_pytest(project: Path) -> bool:
    if (project / "pytest.ini").is_file() or (project / "conftest.py").is_file():
        return True
    pyproject = project / "pyproject.toml"
    if pyproject.is_file():
        try:
            data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError):
            data = {}
        if "pytest" in data.get("tool", {}):
            return True
    for name, section in (("setup.cfg", "[tool:pytest]"), ("tox.ini", "[pytest]")):
        path = project / name
        if path.is_file() and section in path.read_text(encoding="utf-8", errors="replace"):
            return True
    tests = [*project.glob("test_*.py"), *project.glob("tests/test_*.py")]
    tests += [*project.glob("*_test.py"), *project.glob("tests/*_test.py")]
    return bool(tests)


def limits(timeout_s: float) -> ExecutionLimits:
    return ExecutionLimits(
        wall_seconds=timeout_s,
        cpu_seconds=int(timeout_s) + 60,
        memory_bytes=4096 * MIB,
        file_bytes=512 * MIB,
        processes=512,
    )


async def run_check(
    check: TestCommand,
    tree: Path,
    *,
    read_only: Sequence[Path] = (),
    timeout_s: float = 600.0,
    sandbox: bool = True,
) -> CheckResult:
    """Run `check` on `tree`; never raises for what the command does (a timeout is an
    `error`: the check says nothing about the tree then)."""
    report = tree / f".tercet-junit-{secrets.token_hex(6)}.xml"
    command = check.command
    if check.pytest:
        command += " " + shlex.join(
            ["-p", "no:cacheprovider", "-q", f"--junitxml={report}", "-o", "junit_family=xunit1"]
        )
    sandboxed = sandbox and runner.unavailable_reason() is None
    if sandboxed:
        argv = sandbox_argv(command, tree, limits(timeout_s), read_only=read_only)
    else:
        argv = ["/bin/bash", "--noprofile", "--norc", "-c", command]
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        *argv,
        cwd=tree,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout_s)
    except BaseException as exc:  # a timeout, or cancelled: leave nothing running
        _kill_group(process.pid)
        await process.wait()
        if not isinstance(exc, TimeoutError):
            raise
        return CheckResult(
            check.command, {}, None, time.monotonic() - started, sandboxed=sandboxed,
            error=f"the check timed out after {timeout_s:g} s",
        )  # fmt: skip
    seconds = time.monotonic() - started
    text = output.decode("utf-8", errors="replace")[-OUTPUT_TAIL:]
    code = process.returncode
    outcomes: dict[str, str] = {check.command: "passed" if code == 0 else "failed"}
    if check.pytest:
        try:
            outcomes = parse_junit(report.read_bytes())
        except FileNotFoundError:
            # pytest wrote no report: it could not start (a usage or collection problem).
            outcomes = {check.command: "failed"}
        except Exception as exc:
            return CheckResult(check.command, {}, code, seconds, text, sandboxed,
                               error=f"unreadable test report: {exc}")  # fmt: skip
        finally:
            report.unlink(missing_ok=True)
    return CheckResult(check.command, outcomes, code, seconds, text, sandboxed)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
