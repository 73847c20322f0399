"""Sandbox limits, as data."""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1024 * 1024


@dataclass(frozen=True)
class ExecutionLimits:
    """What one execution may use."""

    wall_seconds: float = 60.0
    cpu_seconds: int = 60
    memory_bytes: int = 1024 * MIB  # address space of each process
    total_memory_bytes: int = 2048 * MIB  # all its processes together (their PSS and memfds)
    processes: int = 64  # tasks (threads too) at once; run as root, for the user in all
    open_files: int = 1024  # per process
    file_bytes: int = 256 * MIB  # the largest file a process may write
    tmp_bytes: int = 256 * MIB  # /tmp, a tmpfs (so it is memory, and bounded)
    shm_bytes: int = 64 * MIB  # /dev/shm, likewise
    output_bytes: int = 64 * 1024  # of stdout and of stderr each; the rest is cut, with a marker


@dataclass(frozen=True)
class ContainerLimits:
    """What a container (a persistent workspace) may use."""

    disk_bytes: int = 1024 * MIB
    idle_seconds: float = 3600.0  # expires after this long unused, as Anthropic's containers
    max_containers: int = 32
    max_per_owner: int = 8  # live containers one API key may hold
