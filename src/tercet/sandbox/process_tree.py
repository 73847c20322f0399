"""What a process and all its descendants use together, read from /proc.

rlimits bound each process on its own, so an execution that forks could hold the process limit
times the memory limit. The runner watches the whole tree with this instead, on any Linux (no
cgroup needed, which containers and unprivileged servers often cannot create).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
_PROC = Path("/proc")


@dataclass(frozen=True)
class TreeUsage:
    processes: int
    resident_bytes: int  # the sum of each process's RSS: pages shared between them count twice


def tree_usage(root: int, stop_after: int | None = None) -> TreeUsage:
    """`root` and its descendants: how many are alive and the memory they hold. Processes
    that end while it is read are skipped. With `stop_after`, the walk ends once it has seen
    more processes than that (a fork bomb's tree is not read to its end)."""
    children = _children_lister()
    seen: set[int] = set()
    pending = [root]
    resident = 0
    while pending:
        pid = pending.pop()
        if pid in seen:
            continue
        pages = _resident_pages(pid)
        if pages is None:
            continue
        seen.add(pid)
        resident += pages * PAGE_BYTES
        if stop_after is not None and len(seen) > stop_after:
            break
        pending.extend(children(pid))
    return TreeUsage(len(seen), resident)


def _resident_pages(pid: int) -> int | None:
    """The process's resident set in pages, None when it is gone."""
    try:
        stat = (_PROC / str(pid) / "stat").read_bytes()
    except OSError:
        return None
    # After the command name (in parentheses, and free to hold spaces or parentheses itself)
    # come the fields from the third on; the resident set is the 24th.
    fields = stat[stat.rindex(b")") + 2 :].split()
    return int(fields[24 - 3])


def _children_lister() -> Callable[[int], list[int]]:
    """A function from a pid to its children's: through /proc/PID/task/TID/children where the
    kernel has it, else from one scan of every process's parent."""
    if (_PROC / "self" / "task" / str(os.getpid()) / "children").exists():
        return _listed_children
    parents: dict[int, list[int]] = {}
    for entry in os.scandir(_PROC):
        if entry.name.isdigit():
            parent = _parent(int(entry.name))
            if parent is not None:
                parents.setdefault(parent, []).append(int(entry.name))
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


def _parent(pid: int) -> int | None:
    try:
        stat = (_PROC / str(pid) / "stat").read_bytes()
    except OSError:
        return None
    return int(stat[stat.rindex(b")") + 2 :].split()[1])
