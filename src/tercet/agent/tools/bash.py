"""The bash tool (`bash_20250124`): commands run in one persistent bash session.

As with Anthropic's bash tool, the working directory, variables and functions carry over from
one call to the next; `{"restart": true}` starts a fresh shell. Each command reads from
/dev/null, its stdout and stderr come back together, cut in the middle (head and tail kept)
when long, with the exit status when it is not 0. A command that runs past the timeout is
killed with everything in its process group, background jobs included, and the shell restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import shlex
import shutil
import signal
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tercet.agent.tools.base import ToolContext, ToolResult, one_line
from tercet.agent.tools.bash_sandbox import sandbox_argv
from tercet.agent.tools.bash_syntax import is_read_only_command
from tercet.sandbox.config import MIB, ExecutionLimits
from tercet.sandbox.runner import SandboxUnavailable

NAME = "bash"
TOOL_TYPE = "bash_20250124"
# Variables that keep programs from waiting on a terminal nobody is at.
QUIET_ENV = {"PAGER": "cat", "GIT_PAGER": "cat", "GIT_EDITOR": "true", "GIT_TERMINAL_PROMPT": "0"}
# How long a shell whose output closed may take to exit before it counts as still running:
# `exit` ends it at once, while after `exec >file` bash lives on, waiting for input.
SHELL_EXIT_GRACE_S = 1.0


class BashTool:
    """Runs the model's commands in a persistent bash session, or, with `sandbox=True`, each
    command in a fresh bash under bubblewrap: the project (`ctx.cwd`) read-write at its own
    path, the system read-only, no network. Sandboxed, nothing persists between calls but the
    files in the project (each command starts in `ctx.cwd` with a clean environment),
    `sandbox_read_only` paths are readable there too, and the paths `sandbox_protected` gives
    for the project are read-only in it (`agent.test_protection`)."""

    name = NAME

    def __init__(
        self,
        timeout_s: float = 120,
        max_output_chars: int = 30_000,
        sandbox: bool = False,
        *,
        env: Mapping[str, str] | None = None,
        sandbox_limits: ExecutionLimits | None = None,
        sandbox_read_only: Sequence[Path] = (),
        sandbox_protected: Callable[[Path], Sequence[Path]] | None = None,
    ) -> None:
        self.timeout_s = timeout_s
        self.max_output_chars = max_output_chars
        self.sandbox = sandbox
        self._env = {**(os.environ if env is None else env), **QUIET_ENV}
        self._limits = sandbox_limits or ExecutionLimits(
            wall_seconds=timeout_s,
            cpu_seconds=int(timeout_s) + 1,
            memory_bytes=8192 * MIB,  # address space: compilers and node reserve a lot
            file_bytes=1024 * MIB,
        )
        self._read_only = tuple(sandbox_read_only)  # more paths readable in the sandbox
        # Paths of the project the sandbox binds read-only (looked up at each command).
        self._protected = sandbox_protected
        self._shell: _Shell | None = None
        self._lock = asyncio.Lock()

    def definition(self) -> dict[str, Any]:
        return {"type": TOOL_TYPE, "name": NAME}

    def is_read_only(self, input: dict[str, Any]) -> bool:
        if input.get("restart"):
            return True  # a fresh shell changes no file
        command = input.get("command")
        return isinstance(command, str) and is_read_only_command(command)

    def describe(self, input: dict[str, Any]) -> str:
        if input.get("restart"):
            return f"{NAME}: restart the shell"
        return f"{NAME}: {one_line(str(input.get('command', '')))}"

    async def run(self, input: dict[str, Any], ctx: ToolContext) -> ToolResult:
        async with self._lock:
            if input.get("restart"):
                await self._close_shell()
                return ToolResult("The shell has been restarted.")
            command = input.get("command")
            if not isinstance(command, str) or not command.strip():
                return ToolResult("Parameter `command` is required (a non-empty string).", True)
            if self.sandbox:
                return await self._run_sandboxed(command, ctx.cwd)
            return await self._run_in_shell(command, ctx.cwd)

    async def aclose(self) -> None:
        async with self._lock:
            await self._close_shell()

    async def _run_in_shell(self, command: str, cwd: Path) -> ToolResult:
        if self._shell is None or self._shell.exited:
            self._shell = await _Shell.start(cwd, self._env)
        shell = self._shell
        output = _Output(self.max_output_chars)
        code: int | None = None
        try:
            status = await asyncio.wait_for(shell.execute(command, output), self.timeout_s)
            if status is None:  # the shell's output closed: it exited, or a command redirected it
                code = await shell.exit_status(SHELL_EXIT_GRACE_S)
        except TimeoutError:
            await self._close_shell()
            note = (
                f"Command timed out after {self.timeout_s:g} seconds: it was killed with every "
                "process it started, and the shell was restarted (the working directory and "
                "environment variables are back to their starting values)."
            )
            return ToolResult(output.text(note), is_error=True)
        except BaseException:  # cancelled: leave nothing running
            await self._close_shell()
            raise
        if status is None:
            await self._close_shell()  # kills a shell still alive with its output gone
            if code is None:
                note = (
                    "The shell's output was closed (`exec >file`?), so nothing more could be "
                    "read from it: it was killed with every process it started, and the shell "
                    "was restarted (the working directory and environment variables are back "
                    "to their starting values). Redirect single commands instead."
                )
            else:  # the command ended the shell (`exit`, `set -e`, ...)
                note = (
                    f"The shell exited with status {code}; the next command starts a fresh shell."
                )
            return ToolResult(output.text(note), is_error=True)
        return ToolResult(output.text(f"Exit code {status}" if status else None))

    async def _run_sandboxed(self, command: str, cwd: Path) -> ToolResult:
        try:
            protected = self._protected(cwd) if self._protected is not None else ()
            argv = sandbox_argv(
                command, cwd, self._limits, read_only=self._read_only, protected=protected
            )
        except SandboxUnavailable as exc:
            return ToolResult(f"The sandbox cannot run here: {exc}", is_error=True)
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        output = _Output(self.max_output_chars)

        async def drain() -> int:
            assert process.stdout is not None
            while chunk := await process.stdout.read(65536):
                output.add(chunk)
            return await process.wait()

        try:
            status = await asyncio.wait_for(drain(), self.timeout_s)
        except BaseException as exc:  # a timeout, or cancelled: leave nothing running
            _kill_group(process.pid)
            await process.wait()
            if not isinstance(exc, TimeoutError):
                raise
            note = (
                f"Command timed out after {self.timeout_s:g} seconds: the sandbox and every "
                "process in it were killed."
            )
            return ToolResult(output.text(note), is_error=True)
        return ToolResult(output.text(f"Exit code {status}" if status else None))

    async def _close_shell(self) -> None:
        if self._shell is not None:
            shell, self._shell = self._shell, None
            await shell.kill()


class _Shell:
    """One bash process; each command is sourced from a file, followed by a marker line that
    carries its exit status."""

    def __init__(self, process: asyncio.subprocess.Process, scratch: Path) -> None:
        self.process = process
        self.scratch = scratch
        self.token = f"__tercet_done_{secrets.token_hex(8)}__"
        self._marker = re.compile(rb"\n" + re.escape(self.token.encode()) + rb" (\d+)\n")
        self.exited = False

    @classmethod
    async def start(cls, cwd: Path, env: Mapping[str, str]) -> _Shell:
        process = await asyncio.create_subprocess_exec(
            "bash", "--noprofile", "--norc",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=cwd,
            env=dict(env),
            start_new_session=True,  # the shell leads a process group: a timeout kills it all
        )  # fmt: skip
        return cls(process, Path(tempfile.mkdtemp(prefix="tercet-bash-")))

    async def execute(self, command: str, output: _Output) -> int | None:
        """Run `command`, feeding `output`; its exit status, or None if the shell ended."""
        assert self.process.stdin is not None and self.process.stdout is not None
        script = self.scratch / "command.sh"
        script.write_text(command + "\n")
        # Sourced, so `cd` and variables persist; from a file, so a syntax error or a stray
        # quote cannot swallow the marker; stdin from /dev/null, so nothing waits for input.
        line = (
            f". {shlex.quote(str(script))} < /dev/null; printf '\\n%s %d\\n' {self.token} \"$?\"\n"
        )
        try:
            self.process.stdin.write(line.encode())
            await self.process.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            self.exited = True
            return None
        while chunk := await self.process.stdout.read(65536):
            found = output.add(chunk, self._marker)
            if found is not None:
                return found
        self.exited = True
        return None

    async def exit_status(self, grace_s: float) -> int | None:
        """The shell's exit status once its output has closed, or None if it is still alive
        after `grace_s` (a command redirected the shell's own output, and bash waits for input)."""
        try:
            return await asyncio.wait_for(self.process.wait(), grace_s)
        except TimeoutError:
            return None

    async def kill(self) -> None:
        _kill_group(self.process.pid)
        with contextlib.suppress(ProcessLookupError):
            await self.process.wait()
        shutil.rmtree(self.scratch, ignore_errors=True)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


class _Output:
    """A command's output as it arrives: the head and the tail kept (in bytes, generously),
    the middle counted and dropped, so a flood of output costs bounded memory."""

    def __init__(self, max_chars: int) -> None:
        self.max_chars = max_chars
        self._keep = max(max_chars * 2, 4096)  # bytes at each end; the cut to chars is later
        self._head = bytearray()
        self._tail = bytearray()
        self._dropped_lines = 0
        self._dropped_chars = 0

    def add(self, chunk: bytes, marker: re.Pattern[bytes] | None = None) -> int | None:
        """Append `chunk`; with `marker`, return its status once the marker has arrived (the
        marker and anything after it are not kept)."""
        end = self._tail if self._dropped_lines or self._dropped_chars else self._head
        start = max(len(end) - 64, 0)
        end += chunk
        status = None
        if marker is not None and (found := marker.search(end, start)):
            status = int(found.group(1))
            del end[found.start() :]
        if end is self._head and len(self._head) > 2 * self._keep:
            self._tail = self._head[self._keep :]
            del self._head[self._keep :]
        if len(self._tail) > self._keep:
            cut = len(self._tail) - self._keep
            self._dropped_lines += self._tail.count(b"\n", 0, cut)
            self._dropped_chars += len(self._tail[:cut].decode("utf-8", "replace"))
            del self._tail[:cut]
        return status

    def text(self, note: str | None = None) -> str:
        """The output, cut to `max_chars` around a marker saying how much was left out, and
        `note` (the exit status, a timeout) on a line of its own at the end."""
        head = self._head.decode("utf-8", "replace")
        tail = self._tail.decode("utf-8", "replace")
        if not self._dropped_chars and len(head) + len(tail) <= self.max_chars:
            text = head + tail
        else:
            keep = self.max_chars // 2
            if not self._dropped_chars:
                head, tail = head + tail, ""
            kept_head = _first(head, keep)
            kept_tail = _last(tail or head, keep)
            chars = self._dropped_chars + len(head) + len(tail) - len(kept_head) - len(kept_tail)
            lines = head.count("\n") + tail.count("\n") + self._dropped_lines
            lines -= kept_head.count("\n") + kept_tail.count("\n")
            separator = "" if kept_head.endswith("\n") or not kept_head else "\n"
            text = (
                f"{kept_head}{separator}[... output truncated: {chars} characters "
                f"({lines} lines) omitted from the middle ...]\n{kept_tail}"
            )
        if note:
            text = f"{text.rstrip(chr(10))}\n{note}" if text.strip() else note
        return text or "(no output)"


def _first(text: str, keep: int) -> str:
    """The first `keep` characters of `text`, cut after a line break when one is near."""
    head = text[:keep]
    newline = head.rfind("\n")
    return head[: newline + 1] if newline >= keep // 2 else head


def _last(text: str, keep: int) -> str:
    """The last `keep` characters of `text`, starting after a line break when one is near."""
    tail = text[len(text) - keep :] if keep else ""
    newline = tail.find("\n")
    return tail[newline + 1 :] if 0 <= newline < keep // 2 else tail
