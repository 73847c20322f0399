"""Running one command inside the sandbox.

The command runs under bubblewrap with every namespace unshared (no network but its own
loopback, its own PIDs, IPC and hostname), on a root that holds only read-only system
directories, the Python runtime, a private /tmp and /proc, and the container's workspace at
/workspace (the only writable place that outlives the execution). When the server runs as
root, the sandbox runs as the container's own unprivileged user, so process limits apply.
Limits are rlimits, set on the sandbox's first process while bubblewrap holds it (its
`--block-fd`), before it starts the command, which inherits them; plus a wall clock that kills
the whole process group (and with it the sandbox's PID namespace). /tmp is a tmpfs of bounded
size. While the command runs it is watched every 0.1 s: the workspace, a host directory,
against its quota (killed then, not after it has filled the host's disk), and its processes
together against the memory and process limits (rlimits bound each process alone).
A container granted egress also gets its egress proxy's socket and the proxy variables, and
its command runs behind the in-sandbox forwarder (see `egress`); others get neither.

An execution pays for bubblewrap and little else: no process runs before or inside the
sandbox but bubblewrap and (as root) `setpriv`, the limits being set from here while
bubblewrap sets up its mounts; the end is seen at once, through a pidfd; the output is read
on the calling thread, with no threads to start.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import math
import os
import resource
import select
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tercet.sandbox import egress as egress_proxy
from tercet.sandbox.config import ExecutionLimits
from tercet.sandbox.process_tree import PAGE_BYTES, parent_of, tree_usage, user_tasks

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
DRAIN_SECONDS = 5.0  # for the output's end, once the command's processes are killed
FALLBACK_SECONDS = 0.05  # how often an exit is checked for where Linux has no pidfds
CLONE_NEWIPC = 0x08000000
_libc = ctypes.CDLL(None, use_errno=True)
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
    egress: Path | None = None,
) -> ExecResult:
    """Run `command` with `workspace` mounted at /workspace; never raises for what the command
    does (a timeout is `timed_out`, a signal a negative return code, a workspace grown past
    `disk_bytes` while it ran `over_quota`, too much memory or too many processes at once
    `over_memory` or `too_many_processes`, said at the end of stderr too). `egress`: the
    host path of the container's egress proxy socket, for a container granted egress."""
    as_root = uid is not None and os.geteuid() == 0
    info_read, info_write = os.pipe()  # bubblewrap says here which process is the sandbox
    hold_read, hold_write = os.pipe()  # the sandbox waits on this until its limits are set
    try:
        argv = sandbox_argv(
            command,
            workspace,
            limits,
            uid=uid,
            runtime=runtime,
            info_fd=info_write,
            block_fd=hold_read,
            egress=egress,
        )
        started = time.monotonic()
        process = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # one process group, killed as one
            pass_fds=(info_write, hold_read),
        )
    except BaseException:
        for fd in (info_read, hold_write):
            os.close(fd)
        raise
    finally:
        for fd in (info_write, hold_read):
            os.close(fd)
    deadline = started + limits.wall_seconds
    try:
        try:
            sandbox = _sandbox_pid(info_read, deadline, process.pid)
            if sandbox is not None:
                _set_limits(sandbox, limits, as_root)
        except BaseException:
            # Killed before the hold is let go: the command never runs unlimited.
            _kill_group(process.pid)
            process.communicate()
            raise
        if sandbox is None:  # bubblewrap failed (its stderr says why), or the clock ran out
            _kill_group(process.pid)
        else:
            with contextlib.suppress(BrokenPipeError):  # it ended meanwhile
                os.write(hold_write, b"\0")
    finally:
        os.close(hold_write)
        os.close(info_read)
    return _watch(process, workspace, limits, deadline, stdin, disk_bytes)


def _sandbox_pid(info: int, deadline: float, bubblewrap_pid: int) -> int | None:
    """The pid of the sandbox's first process, as bubblewrap reports it on `info` (a JSON
    object with `child-pid`, the fd then closed); None if bubblewrap ends without one, or
    the wall clock runs out first."""
    report = b""
    waiting = select.poll()  # not select(), which fails for a descriptor past 1023
    waiting.register(info, select.POLLIN)
    while True:
        if not waiting.poll(max(math.ceil((deadline - time.monotonic()) * 1000), 0)):
            return None
        chunk = os.read(info, 4096)
        if not chunk:
            break
        report += chunk
    try:
        pid = json.loads(report)["child-pid"]
    except (ValueError, KeyError, TypeError):
        return None
    # bubblewrap's own child, not a process that took the pid of one that ended already
    return pid if isinstance(pid, int) and parent_of(pid) == bubblewrap_pid else None


def _set_limits(pid: int, limits: ExecutionLimits, as_root: bool) -> None:
    """Set the rlimits of the sandbox's first process `pid`, held before it starts the
    command; as root, also cap SysV shared memory in its IPC namespace. `SandboxUnavailable`
    when either cannot be done (the caller kills the sandbox then)."""
    try:
        for kind, value in _rlimits(limits, as_root).items():
            resource.prlimit(pid, kind, value)
        if as_root:
            _cap_shared_memory(pid, limits.shm_bytes // PAGE_BYTES)
    except ProcessLookupError:
        return  # it already ended: it cannot start the command, and its stderr says why
    except OSError as exc:
        raise SandboxUnavailable(f"cannot set the sandbox's limits: {exc}") from exc


def _rlimits(limits: ExecutionLimits, as_root: bool) -> dict[int, tuple[int, int]]:
    """The (soft, hard) rlimits of an execution, none above this process's own hard limits
    (which only a privileged process could raise).

    The process limit counts every process (and thread) of the user. Run as the container's
    own user (a server started as root), it is the execution's limit; otherwise the user's
    own processes count too, so it is set to those now plus the execution's limit.
    """
    processes = limits.processes if as_root else user_tasks(os.getuid()) + limits.processes
    wanted = {
        resource.RLIMIT_CPU: (limits.cpu_seconds, limits.cpu_seconds + 1),  # SIGXCPU, then KILL
        resource.RLIMIT_AS: (limits.memory_bytes, limits.memory_bytes),
        resource.RLIMIT_FSIZE: (limits.file_bytes, limits.file_bytes),
        resource.RLIMIT_NOFILE: (limits.open_files, limits.open_files),
        resource.RLIMIT_CORE: (0, 0),
        resource.RLIMIT_NPROC: (processes, processes),
    }
    capped = {}
    for kind, (soft, hard) in wanted.items():
        own_hard = resource.getrlimit(kind)[1]
        if own_hard != resource.RLIM_INFINITY:
            hard = min(hard, own_hard)
        capped[kind] = (min(soft, hard), hard)
    return capped


def _cap_shared_memory(pid: int, pages: int) -> None:
    """Set kernel.shmall in the IPC namespace of `pid` (the sandbox's own, where the container's
    user, without capabilities, cannot raise it again): this thread enters it for the write
    and comes back. Segments no process maps would escape the memory watch; this bounds them
    by the /dev/shm size."""
    own = os.open("/proc/thread-self/ns/ipc", os.O_RDONLY | os.O_CLOEXEC)
    try:
        theirs = os.open(f"/proc/{pid}/ns/ipc", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _enter_namespace(theirs)
            try:
                with open("/proc/sys/kernel/shmall", "w") as shmall:
                    shmall.write(str(pages))
            finally:
                _enter_namespace(own)
        finally:
            os.close(theirs)
    finally:
        os.close(own)


def _enter_namespace(fd: int) -> None:
    """setns(2) for this thread, into the IPC namespace `fd` (os.setns is Python 3.12's)."""
    if _libc.setns(fd, CLONE_NEWIPC) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"setns: {os.strerror(error)}")


def _watch(
    process: subprocess.Popen[bytes],
    workspace: Path,
    limits: ExecutionLimits,
    deadline: float,
    stdin: bytes,
    disk_bytes: int | None,
) -> ExecResult:
    """Feed `stdin`, read the output and watch the running command until it ends or breaks a
    limit, all on this thread; then kill what is left of it."""
    pipes = _Pipes(process, stdin, limits.output_bytes)
    timed_out = over_quota = over_memory = too_many = False
    max_tasks = limits.processes + BWRAP_PROCESSES
    next_watch = time.monotonic() + WATCH_SECONDS
    try:
        while not pipes.exited:
            now = time.monotonic()
            if now >= deadline:
                timed_out = True
                break
            if now >= next_watch:
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
                next_watch = time.monotonic() + WATCH_SECONDS
            pipes.serve(min(deadline, next_watch) - time.monotonic())
    finally:
        _kill_group(process.pid)
        pipes.drain(DRAIN_SECONDS)
        process.wait()
    stdout, stderr = pipes.text()
    if over_memory:
        stderr += OVER_MEMORY.format(limits.total_memory_bytes // 2**20)
    if too_many:
        stderr += TOO_MANY_PROCESSES.format(limits.processes)
    return ExecResult(
        stdout, stderr, process.returncode, timed_out, over_quota, over_memory, too_many
    )


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
    info_fd: int | None = None,
    block_fd: int | None = None,
    egress: Path | None = None,
) -> list[str]:
    """bubblewrap's whole command line for `command`, without the rlimits (set on its first
    process by `run`, which passes the `--info-fd` and `--block-fd` it does that through);
    with `egress` (a proxy's socket), the command behind the in-sandbox forwarder."""
    as_root = uid is not None and os.geteuid() == 0
    argv = [bubblewrap(), *namespace_args(as_root)]
    if info_fd is not None:
        argv += ["--info-fd", str(info_fd)]
    if block_fd is not None:
        argv += ["--block-fd", str(block_fd)]
    argv += mount_args(workspace, runtime, limits)
    if egress is not None:
        argv += egress_args(egress)
        command = [*forwarder_command(runtime), *command]
    argv.append("--")
    if as_root:
        assert uid is not None
        argv += user_switch_args(uid)
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


def egress_args(proxy_socket: Path) -> list[str]:
    """A container's egress in its sandbox: the proxy's socket, the forwarder (the `egress`
    module's own file) and the proxy variables, pointing at the forwarder."""
    return [
        *_readable_bind(proxy_socket, Path(egress_proxy.SANDBOX_SOCKET)),
        *_readable_bind(Path(egress_proxy.__file__), Path(egress_proxy.SANDBOX_FORWARDER)),
        *(a for name, url in egress_proxy.PROXY_ENV.items() for a in ("--setenv", name, url)),
    ]


def forwarder_command(runtime: Path | None) -> list[str]:
    """The egress forwarder, started in the sandbox before (and around) the command."""
    python = forwarder_python(runtime)
    if python is None:
        raise SandboxUnavailable("egress needs a Python in the sandbox to run its forwarder")
    return [python, "-I", "-S", egress_proxy.SANDBOX_FORWARDER, "forward", "--"]


def forwarder_python(runtime: Path | None) -> str | None:
    """The sandbox's Python (the runtime's, else the system's), or None where it has none."""
    if runtime is not None:
        return f"{RUNTIME}/bin/python"
    return "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else None


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
    """`prlimit` before bubblewrap, for callers that start bubblewrap themselves (`run` sets
    the same limits without this extra process): limits inherited by everything it runs. (A
    command rather than a `preexec_fn`, so that Python can start the process without copying
    itself.)

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


class _Pipes:
    """The command's stdin, fed from `stdin`, and its stdout and stderr, each keeping its first
    `limit` bytes, served on the calling thread; and its exit, seen the moment it happens:
    through a pidfd where Linux has them, polled with the pipes (`Popen.wait(timeout)` sleeps
    in steps of up to 50 ms, which a 20 ms command would pay for on every run), else checked
    every `FALLBACK_SECONDS` without reaping it (its process group is killed after)."""

    def __init__(self, process: subprocess.Popen[bytes], stdin: bytes, limit: int) -> None:
        assert process.stdin and process.stdout and process.stderr
        self._process = process
        self._files = (process.stdin, process.stdout, process.stderr)
        self._limit = limit
        self._kept = {process.stdout.fileno(): bytearray(), process.stderr.fileno(): bytearray()}
        self._dropped = dict.fromkeys(self._kept, 0)
        self._poll = select.poll()
        for fd in self._kept:
            self._poll.register(fd, select.POLLIN)
        self._open = set(self._kept)
        self._stdin: int | None = process.stdin.fileno()
        self._unsent = memoryview(stdin)
        if self._unsent:
            os.set_blocking(self._stdin, False)
            self._poll.register(self._stdin, select.POLLOUT)
        else:
            self._close_stdin()
        self.exited = False
        self._pidfd: int | None = None
        with contextlib.suppress(AttributeError, OSError):
            self._pidfd = os.pidfd_open(process.pid)
            self._poll.register(self._pidfd, select.POLLIN)

    def serve(self, seconds: float) -> None:
        """Move what is ready within `seconds` (at once when something is); set `exited` when
        the process ends meanwhile."""
        if self._pidfd is None:
            seconds = min(seconds, FALLBACK_SECONDS)
        for fd, _ in self._poll.poll(max(math.ceil(seconds * 1000), 0)):
            if fd == self._pidfd:
                self.exited = True
                self._close_pidfd()
            elif fd == self._stdin:
                self._send()
            elif fd in self._open:
                self._receive(fd)
        if self._pidfd is None and not self.exited:
            flags = os.WEXITED | os.WNOHANG | os.WNOWAIT
            self.exited = os.waitid(os.P_PID, self._process.pid, flags) is not None

    def drain(self, seconds: float) -> None:
        """Read to the end of both outputs (the command's processes are gone then), for at
        most `seconds`: one of them may have passed its end of a pipe on."""
        self._close_stdin()
        self._close_pidfd()
        until = time.monotonic() + seconds
        while self._open and (left := until - time.monotonic()) > 0:
            for fd, _ in self._poll.poll(math.ceil(left * 1000)):
                if fd in self._open:
                    self._receive(fd)

    def text(self) -> tuple[str, str]:
        for file in self._files:
            file.close()
        stdout, stderr = (self._decoded(fd) for fd in self._kept)
        return stdout, stderr

    def _send(self) -> None:
        assert self._stdin is not None
        try:
            sent = os.write(self._stdin, self._unsent[:65536])
        except BlockingIOError:
            return
        except OSError:  # it closed its stdin (a broken pipe): the rest is not wanted
            self._close_stdin()
            return
        self._unsent = self._unsent[sent:]
        if not self._unsent:
            self._close_stdin()

    def _close_stdin(self) -> None:
        if self._stdin is not None:
            # Registered while there was input to send; `_send` empties `_unsent` before it
            # gets here, so that cannot tell. A closed fd left registered polls as POLLNVAL.
            with contextlib.suppress(KeyError):
                self._poll.unregister(self._stdin)
            self._files[0].close()
            self._stdin = None
            self._unsent = memoryview(b"")

    def _close_pidfd(self) -> None:
        if self._pidfd is not None:
            self._poll.unregister(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None

    def _receive(self, fd: int) -> None:
        chunk = os.read(fd, 65536)
        if not chunk:
            self._poll.unregister(fd)
            self._open.discard(fd)
            return
        kept = self._kept[fd]
        room = max(self._limit - len(kept), 0)
        kept += chunk[:room]
        self._dropped[fd] += len(chunk) - min(len(chunk), room)

    def _decoded(self, fd: int) -> str:
        text = self._kept[fd].decode("utf-8", "replace")
        dropped = self._dropped[fd]
        return text + TRUNCATED.format(dropped) if dropped else text
