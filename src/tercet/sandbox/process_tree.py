"""What a process and all its descendants use together, read from /proc.

rlimits bound each process on its own, so an execution that forks could hold the process limit
times the memory limit. The runner watches the whole tree with this instead, on any Linux (no
cgroup needed, which containers and unprivileged servers often cannot create).

Memory is each process's proportional share of what it maps (PSS, so pages that forked workers
share count once in all), plus the memfd files they hold open, which no process maps and which
would otherwise be invisible. SysV shared memory detached from every process is not seen (the
runner caps it in the sandbox's IPC namespace instead, where it can: run as root).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
_PROC = Path("/proc")
_MEMFD = "/memfd:"
_HAS_ROLLUP = (_PROC / "self" / "smaps_rollup").exists()  # Linux 4.14 and later


@dataclass(frozen=True)
class TreeUsage:
    processes: int  # tasks, as RLIMIT_NPROC counts them: every thread of every process
    memory_bytes: int


def tree_usage(root: int, stop_after: int | None = None) -> TreeUsage:
    """`root` and its descendants: their tasks and memory. Processes that end while it is
    read are skipped. With `stop_after`, once more tasks than that are seen the walk ends and
    memory is not read (a fork bomb's tree is not read to its end, nor its memory maps, which
    a process that keeps forking holds locked)."""
    children = _children_lister()
    resident: dict[int, int] = {}  # pid -> resident pages, from the stat line
    pending = [root]
    tasks = 0
    while pending:
        pid = pending.pop()
        if pid in resident:
            continue
        stat = _stat_fields(pid)
        if stat is None:
            continue
        resident[pid] = int(stat[24 - 3])
        tasks += int(stat[20 - 3])  # num_threads, the 20th field
        if stop_after is not None and tasks > stop_after:
            return TreeUsage(tasks, 0)
        pending.extend(children(pid))
    memfds: dict[tuple[int, int], int] = {}
    memory = 0
    for pid, pages in resident.items():
        memory += _proportional_bytes(pid, pages)
        _add_memfds(pid, memfds)
    return TreeUsage(tasks, memory + sum(memfds.values()))


def user_tasks(uid: int) -> int:
    """How many tasks (threads of every process) `uid` runs now, as RLIMIT_NPROC counts."""
    tasks = 0
    for entry in os.scandir(_PROC):
        try:
            if not entry.name.isdigit() or entry.stat().st_uid != uid:
                continue
        except OSError:
            continue
        stat = _stat_fields(int(entry.name))
        tasks += int(stat[20 - 3]) if stat is not None else 0
    return tasks


def parent_of(pid: int) -> int | None:
    """The parent of `pid`, None when it is gone."""
    stat = _stat_fields(pid)
    return int(stat[1]) if stat is not None else None


def _stat_fields(pid: int) -> list[bytes] | None:
    """/proc/PID/stat from its third field on, None when the process is gone."""
    try:
        stat = (_PROC / str(pid) / "stat").read_bytes()
    except OSError:
        return None
    # The command name before them is in parentheses and may hold spaces or parentheses.
    return stat[stat.rindex(b")") + 2 :].split()


def _proportional_bytes(pid: int, resident_pages: int) -> int:
    """The process's PSS (smaps_rollup), or its RSS where the kernel has no rollup; 0 once
    it is gone (its RSS read a moment ago would count its shared pages whole)."""
    if not _HAS_ROLLUP:
        return resident_pages * PAGE_BYTES
    try:
        with open(_PROC / str(pid) / "smaps_rollup", "rb") as rollup:
            for line in rollup:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0  # ended, or a zombie, which maps nothing


def _add_memfds(pid: int, memfds: dict[tuple[int, int], int]) -> None:
    """The memfd files `pid` holds open, by inode (several processes may share one)."""
    fd_dir = _PROC / str(pid) / "fd"
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return
    for fd in fds:
        try:
            if not os.readlink(fd_dir / fd).startswith(_MEMFD):
                continue
            info = os.stat(fd_dir / fd)
        except OSError:
            continue
        memfds[info.st_dev, info.st_ino] = info.st_blocks * 512


def _children_lister() -> Callable[[int], list[int]]:
    """A function from a pid to its children's: through /proc/PID/task/TID/children where the
    kernel has it, else from one scan of every process's parent."""
    if (_PROC / "self" / "task" / str(os.getpid()) / "children").exists():
        return _listed_children
    parents: dict[int, list[int]] = {}
    for entry in os.scandir(_PROC):
        if entry.name.isdigit():
            stat = _stat_fields(int(entry.name))
            if stat is not None:
                parents.setdefault(int(stat[1]), []).append(int(entry.name))
    return lambda pid: parents.get(pid, [])


def _listed_children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = list((_PROC / str(pid) / "task").iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue
    return found
