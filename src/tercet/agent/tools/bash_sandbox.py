"""The bubblewrap command line for a bash command run in the project, without network.

`tercet.sandbox.runner.run` mounts its workspace at /workspace and runs as a container's user;
an agent needs the project at its own path (so paths in the conversation stay true) and
written as the user who owns it. So this module builds its own bubblewrap invocation from
the runner's pieces: the same read-only system directories, rlimits, private /tmp and /proc,
no network but loopback, its own PID namespace, and every capability dropped.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from tercet.sandbox import runner
from tercet.sandbox.config import ExecutionLimits

PATH = "/usr/local/bin:/usr/bin:/bin"
LINKED_ENVIRONMENTS = (".venv", "venv", "node_modules")


def sandbox_argv(
    command: str,
    project: Path,
    limits: ExecutionLimits,
    *,
    read_only: Sequence[Path] = (),
    protected: Sequence[Path] = (),
) -> list[str]:
    """The argv that runs `command` with bash in `project` (bound read-write at its own path,
    but for the `protected` paths inside it), the system and `read_only` paths readable, a
    private /tmp, and no network.

    A virtual environment at `project/.venv` works inside: the Python it was made from is
    bound read-only too.
    """
    project = project.resolve()
    as_root = os.geteuid() == 0
    # As root bubblewrap needs no user namespace; it keeps the uid (so files written in the
    # project keep their owner) and drops every capability.
    unshare = (
        ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"]
        if as_root
        else ["--unshare-all"]
    )
    argv = [runner.bubblewrap(), *unshare, "--die-with-parent", "--new-session"]
    if as_root:
        argv += ["--cap-drop", "ALL"]
    for path in runner.SYSTEM_PATHS:
        if os.path.islink(path):
            argv += ["--symlink", os.readlink(path), path]
        elif os.path.exists(path):
            argv += ["--ro-bind", path, path]
    argv += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    extra = [*read_only]
    # An environment linked in from elsewhere (a copy of a project made for an attempt links
    # the project's .venv): its target must be readable where the link points.
    for name in LINKED_ENVIRONMENTS:
        link = project / name
        if link.is_symlink() and link.resolve().is_dir():
            extra.append(link.resolve())
    base = _venv_base(project)
    if base is not None:
        extra.append(base)
    for extra_path in extra:  # before the project, so that the project stays writable
        if extra_path.exists():
            argv += ["--ro-bind", str(extra_path), str(extra_path)]
    argv += ["--bind", str(project), str(project)]
    # Files and folders inside the project bound read-only over it (tests kept from changes).
    for kept in protected:
        if kept.exists() and kept.resolve().is_relative_to(project):
            argv += ["--ro-bind", str(kept), str(kept)]
    argv += [
        "--chdir", str(project),
        "--clearenv",
        "--setenv", "HOME", "/tmp",
        "--setenv", "PATH", PATH,
        "--setenv", "LANG", "C.UTF-8",
        "--setenv", "PAGER", "cat",
        "--setenv", "GIT_PAGER", "cat",
        "--",
        "/bin/bash", "--noprofile", "--norc", "-c", command,
    ]  # fmt: skip
    return [*runner._limits_prefix(limits, per_user=False), *argv]


def _venv_base(project: Path) -> Path | None:
    """The installation `project/.venv` was made from, unless the system paths hold it."""
    base = runner._base_prefix(project / ".venv")
    if base is None or any(base.is_relative_to(p) for p in runner.SYSTEM_PATHS):
        return None
    return base
