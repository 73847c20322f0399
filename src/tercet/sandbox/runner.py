"""Running one command inside the sandbox.

The command runs under bubblewrap with every namespace unshared (no network but its own
loopback, its own PIDs, IPC and hostname), on a root that holds only read-only system
directories, the Python runtime, a private /tmp and /proc, and the container's workspace at
/workspace (the only writable place that outlives the execution). When the server runs as
root, the sandbox runs as the container's own unprivileged user, so process limits apply.
Limits are rlimits set (by `prlimit`) before bubblewrap starts, plus a wall clock that kills the whole
process group (and with it the sandbox's PID namespace). /tmp is a tmpfs of bounded size. While
the command runs it is watched every 0.1 s: the workspace, a host directory, against its quota
(killed then, not after it has filled the host's disk), and its processes together against the
memory and process limits (rlimits bound each process alone).
"""

from __future__ import annotations

import contextlib
import functools
import os
import select
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from tercet.sandbox.config import ExecutionLimits
from tercet.sandbox.process_tree import PAGE_BYTES, tree_usage, user_tasks

WORKSPACE = "/workspace"
RUNTIME = "/opt/python"  # where the runtime's virtual environment appears
# System directories the runtime needs, bound read-only (symlinks such as /bin -> usr/bin are
# recreated as symlinks).
SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/etc/alternatives", "/etc/ssl")
TRUNCATED = "\n[output truncated: {} more bytes]\n"
FIRST_PROBE_UID = 65534  # nobody
_BLOCK_BYTES = 4096
WATCH_SECONDS = 0.1  # how often a running command's workspace and processes are measured
# bubblewrap's own processes in the tree: its monitor and the namespace's init
BWRAP_PROCESSES = 2
OVER_MEMORY = "\n[stopped: its processes held more than {} MiB of memory together]\n"
TOO_MANY_PROCESSES = "\n[stopped: it ran more than {} processes and threads at once]\n"
SET_SHMALL = 'echo "$0" > /proc/sys/kernel/shmall && exec "$@"'
THREADS_PER_LIBRARY = "4"  # for numerical libraries, which would start one a core


class SandboxUnavailable(RuntimeError):
    """bubblewrap is missing or cannot create namespaces here."""


@dataclass(frozen=True)
class ExecResult:
    stdout: str
    stderr: str
    return_code: int
    timed_out: bool = False
    over_quota: bool = False  # killed for growing the workspace past `disk_bytes`
    over_memory: bool = False  # killed: its processes together held over `total_memory_bytes`
    too_many_processes: bool = False  # killed: more than `processes` at once


def bubblewrap() -> str:
    found = shutil.which("bwrap")
    if found is None:
        raise SandboxUnavailable(
            "bubblewrap (bwrap) is not installed; ./scripts/setup installs Debian's `bubblewrap`"
        )
    return found


@functools.cache
def unavailable_reason() -> str | None:
    """Why the sandbox cannot run here (no bubblewrap, or no namespaces allowed), or None."""
    try:
        probe = run(
            ["/bin/true"], Path("/tmp"), ExecutionLimits(wall_seconds=20), uid=FIRST_PROBE_UID
        )
    except (SandboxUnavailable, OSError) as exc:
        return str(exc)
    if probe.return_code != 0:
        return f"bubblewrap cannot create namespaces here: {probe.stderr.strip()}"
    return None


def run(
    command: Sequence[str],
    workspace: Path,
    limits: ExecutionLimits,
    *,
    uid: int | None = None,
    runtime: Path | None = None,
    stdin: bytes = b"",
    disk_bytes: int | None = None,
) -> ExecResult:
    """Run `command` with `workspace` mounted at /workspace; never raises for what the command
    does (a timeout is `timed_out`, a signal a negative return code, a workspace grown past
    `disk_bytes` while it ran `over_quota`, too much memory or too many processes at once
    `over_memory` or `too_many_processes`, said at the end of stderr too)."""
    per_user = uid is not None and os.geteuid() == 0
    argv = [
        *_limits_prefix(limits, per_user),
        *sandbox_argv(command, workspace, limits, uid=uid, runtime=runtime),
    ]
    started = time.monotonic()
    process = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # one process group, killed as one
        close_fds=True,
    )
    assert process.stdin and process.stdout and process.stderr
    outputs = [
        _Capture(process.stdout, limits.output_bytes),
        _Capture(process.stderr, limits.output_bytes),
    ]
    try:
        process.stdin.write(stdin)
        process.stdin.close()
    except BrokenPipeError:
        pass
    timed_out = over_quota = over_memory = too_many = False
    deadline = started + limits.wall_seconds
    max_tasks = limits.processes + BWRAP_PROCESSES
    try:
        with _ExitWatch(process) as exited:
            while not exited.within(min(max(deadline - time.monotonic(), 0.0), WATCH_SECONDS)):
                if time.monotonic() >= deadline:
                    timed_out = True
                    break
                usage = tree_usage(process.pid, stop_after=max_tasks)
                if usage.memory_bytes > limits.total_memory_bytes:
                    over_memory = True
                    break
                if usage.processes > max_tasks:
                    too_many = True
                    break
                if disk_bytes is not None and disk_usage(workspace) > disk_bytes:
                    over_quota = True
                    break
    finally:
        _kill_group(process.pid)
        process.wait()
    stdout, stderr = (capture.text() for capture in outputs)
    if over_memory:
        stderr += OVER_MEMORY.format(limits.total_memory_bytes // 2**20)
    if too_many:
        stderr += TOO_MANY_PROCESSES.format(limits.processes)
    return ExecResult(
        stdout, stderr, process.returncode, timed_out, over_quota, over_memory, too_many
    )


class _ExitWatch:
    """Waits for a process to exit, waking the moment it does: through a pidfd where Linux has
    them (`Popen.wait(timeout)` sleeps in steps of up to 50 ms, which a 20 ms command would
    pay for on every run), else through `Popen.wait`."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self._process = process
        self._fd: int | None = None

    def __enter__(self) -> _ExitWatch:
        with contextlib.suppress(AttributeError, OSError):
            self._fd = os.pidfd_open(self._process.pid)
        return self

    def __exit__(self, *_: object) -> None:
        if self._fd is not None:
            os.close(self._fd)

    def within(self, seconds: float) -> bool:
        """Whether the process exits within `seconds`."""
        if self._fd is None:
            try:
                self._process.wait(timeout=seconds)
            except subprocess.TimeoutExpired:
                return False
            return True
        ready, _, _ = select.select([self._fd], [], [], seconds)
        return bool(ready)


def disk_usage(path: Path) -> int:
    """What the tree under `path` takes: the blocks of every entry (files, directories, links),
    each counted as at least one 4 KiB block, so empty files and directories, which hold
    inodes and directory space, count against a quota too (not following links)."""
    total = 0
    for directory, subdirectories, files in os.walk(path):
        for name in (*subdirectories, *files):
            try:
                info = os.lstat(os.path.join(directory, name))
            except OSError:
                continue
            total += max(info.st_blocks * 512, _BLOCK_BYTES)
    return total


def sandbox_argv(
    command: Sequence[str],
    workspace: Path,
    limits: ExecutionLimits,
    *,
    uid: int | None = None,
    runtime: Path | None = None,
) -> list[str]:
    """bubblewrap's whole command line for `command`, without the rlimits (set around it)."""
    as_root = uid is not None and os.geteuid() == 0
    argv = [
        bubblewrap(),
        *namespace_args(as_root),
        *mount_args(workspace, runtime, limits),
        "--",
    ]
    if as_root:
        assert uid is not None
        # Still root in the sandbox, cap SysV shared memory in its own IPC namespace at the
        # /dev/shm size (segments no process maps would escape the memory watch), then become
        # the container's user, who cannot raise it again.
        shm_pages = str(limits.shm_bytes // PAGE_BYTES)
        argv += ["/bin/sh", "-c", SET_SHMALL, shm_pages, *user_switch_args(uid)]
    return [*argv, *command]


def namespace_args(as_root: bool) -> list[str]:
    """bubblewrap's namespaces: every one unshared.

    As root, bubblewrap sets up the namespaces itself (no user namespace, so that the command
    can become the container's user, a real user on the host, with no capabilities);
    otherwise it uses an unprivileged user namespace."""
    unshare = (
        ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"]
        if as_root
        else ["--unshare-all"]
    )
    return [*unshare, "--die-with-parent", "--new-session"]


def mount_args(workspace: Path, runtime: Path | None, limits: ExecutionLimits) -> list[str]:
    """The sandbox's root, working directory and environment, as bubblewrap options."""
    argv: list[str] = []
    for path in SYSTEM_PATHS:
        if os.path.islink(path):
            argv += ["--symlink", os.readlink(path), path]
        elif os.path.exists(path):
            argv += _readable_bind(Path(path), Path(path))
    if runtime is not None:  # at a fixed place, whose parents the sandbox's user may enter
        argv += _readable_bind(runtime, Path(RUNTIME))
        base = _base_prefix(runtime)  # the interpreter the environment was made from
        if base is not None and not any(base.is_relative_to(p) for p in SYSTEM_PATHS):
            argv += _readable_bind(base, base)
    path_dirs = [f"{RUNTIME}/bin"] if runtime is not None else []
    return [
        *argv,
        "--proc", "/proc",
        "--dev", "/dev",
        # /dev is a tmpfs the command could fill (as root in a user namespace): read-only,
        # with a small shared-memory folder of its own.
        "--perms", "1777", "--size", str(limits.shm_bytes), "--tmpfs", "/dev/shm",
        "--remount-ro", "/dev",
        "--perms", "1777", "--size", str(limits.tmp_bytes), "--tmpfs", "/tmp",
        "--bind", str(workspace), WORKSPACE,
        "--chdir", WORKSPACE,
        "--clearenv",
        "--setenv", "HOME", WORKSPACE,
        "--setenv", "PATH", ":".join([*path_dirs, "/usr/local/bin", "/usr/bin", "/bin"]),
        "--setenv", "LANG", "C.UTF-8",
        "--setenv", "MPLBACKEND", "Agg",
        "--setenv", "MPLCONFIGDIR", "/tmp",
        "--setenv", "OMP_NUM_THREADS", THREADS_PER_LIBRARY,
        "--setenv", "OPENBLAS_NUM_THREADS", THREADS_PER_LIBRARY,
        "--setenv", "MKL_NUM_THREADS", THREADS_PER_LIBRARY,
    ]  # fmt: skip


def user_switch_args(uid: int) -> list[str]:
    """Become the container's user with no capabilities, none to gain (as root)."""
    return [
        "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
        "--bounding-set=-all", "--inh-caps=-all", "--no-new-privs", "--",
    ]  # fmt: skip


def _readable_bind(source: Path, target: Path) -> list[str]:
    """Bind `source` read-only at `target`, creating the parents as directories anyone may
    enter (bubblewrap would make them private to root)."""
    parents = [str(p) for p in reversed(target.parents) if str(p) != "/"]
    return [
        *(arg for parent in parents for arg in ("--perms", "0755", "--dir", parent)),
        "--ro-bind", str(source), str(target),
    ]  # fmt: skip


def _base_prefix(environment: Path) -> Path | None:
    """The installation a virtual environment's Python comes from (`home` in pyvenv.cfg)."""
    try:
        for line in (environment / "pyvenv.cfg").read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "home":
                return Path(value.strip()).parent
    except OSError:
        return None
    return None


def _limits_prefix(limits: ExecutionLimits, per_user: bool) -> list[str]:
    """`prlimit` before bubblewrap: limits inherited by everything it runs. (A command rather
    than a `preexec_fn`, so that Python can start the process without copying itself.)

    The process limit counts every process (and thread) of the user. Run as the container's
    own user (a server started as root), it is the execution's limit; otherwise the user's
    own processes count too, so it is set to those now plus the execution's limit.
    """
    prefix = [
        "prlimit",
        f"--cpu={limits.cpu_seconds}:{limits.cpu_seconds + 1}",
        f"--as={limits.memory_bytes}",
        f"--fsize={limits.file_bytes}",
        f"--nofile={limits.open_files}",
        "--core=0",
    ]
    if per_user:
        prefix.append(f"--nproc={limits.processes}")
    else:  # what the user runs now, and room for the command's own (a fork bomb's bound)
        prefix.append(f"--nproc={user_tasks(os.getuid()) + limits.processes}")
    return [*prefix, "--"]


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


class _Capture:
    """Reads a pipe to its end on a thread, keeping the first `limit` bytes."""

    def __init__(self, pipe: IO[bytes], limit: int) -> None:
        self._pipe = pipe
        self._limit = limit
        self._kept = bytearray()
        self._dropped = 0
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while chunk := self._pipe.read1(65536):  # type: ignore[attr-defined]
            room = self._limit - len(self._kept)
            self._kept += chunk[:room]
            self._dropped += max(len(chunk) - room, 0)

    def text(self) -> str:
        self._thread.join(timeout=5)
        text = self._kept.decode("utf-8", "replace")
        return text + TRUNCATED.format(self._dropped) if self._dropped else text
