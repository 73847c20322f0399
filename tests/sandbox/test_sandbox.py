"""The sandbox on its own: limits, containers, and an escape suite. Each attempt must be
contained and give a clear result; nothing here sends traffic off the machine."""

from __future__ import annotations

import os
import socket
import sqlite3
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from tercet.sandbox import containers, runner
from tercet.sandbox.config import ContainerLimits, ExecutionLimits
from tercet.sandbox.containers import ContainerError, ContainerManager
from tercet.sandbox.runner import disk_usage, unavailable_reason
from tercet.sandbox.runtime import default_runtime

pytestmark = pytest.mark.skipif(
    unavailable_reason() is not None, reason=f"no sandbox here: {unavailable_reason()}"
)
LIMITS = ExecutionLimits(
    wall_seconds=10, cpu_seconds=5, memory_bytes=512 * 2**20, processes=32, output_bytes=4096
)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def manager(tmp_path: Path, clock: Clock) -> ContainerManager:
    return ContainerManager(
        tmp_path / "sandbox",
        ContainerLimits(disk_bytes=8 * 2**20, idle_seconds=600, max_containers=3),
        LIMITS,
        runtime=default_runtime(),
        clock=clock,
    )


def sh(manager: ContainerManager, script: str, container_id: str | None = None):  # type: ignore[no-untyped-def]
    container = manager.get(container_id) if container_id else manager.create()
    return manager.run(container, ["/bin/sh", "-c", script])


def test_runs_python_with_the_data_science_set(manager: ContainerManager) -> None:
    code = (
        "import numpy, pandas, matplotlib.pyplot as plt\n"
        "frame = pandas.DataFrame({'x': numpy.arange(4)})\n"
        "plt.plot(frame.x); plt.savefig('outputs/plot.png')\n"
        "print(frame.x.sum())\n"
    )
    container = manager.create()
    result = manager.run(container, ["python", "-c", code])
    assert (result.stdout, result.return_code) == ("6\n", 0), result.stderr
    assert (container.workspace / "outputs" / "plot.png").read_bytes()[:4] == b"\x89PNG"


def test_a_container_keeps_its_files_until_it_expires(
    manager: ContainerManager, clock: Clock
) -> None:
    container = manager.create()
    sh(manager, "echo kept > note.txt", container.id)
    assert sh(manager, "cat note.txt", container.id).stdout == "kept\n"
    clock.now += 601
    with pytest.raises(ContainerError) as caught:
        manager.get(container.id)
    assert caught.value.code == "container_expired"
    assert not container.directory.exists()


def test_expiry_is_told_only_to_the_owner_and_remembered_within_bounds(
    manager: ContainerManager, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(containers, "REMEMBERED_EXPIRED", 2)
    ids = [manager.create(owner="alice").id for _ in range(3)]
    clock.now += 601
    manager.live()  # expires them, the first forgotten beyond the bound
    codes = {}
    for owner in ("alice", "mallory"):
        for container_id in ids:
            with pytest.raises(ContainerError) as caught:
                manager.get(container_id, owner)
            codes[owner, container_id] = caught.value.code
    assert [codes["alice", i] for i in ids] == [
        "unavailable",
        "container_expired",
        "container_expired",
    ]
    assert {codes["mallory", i] for i in ids} == {"unavailable"}  # another key learns nothing
    again = manager.create(ids[2], owner="bob")  # an expired id can be taken again
    assert manager.get(again.id, "bob") is again
    with pytest.raises(ContainerError) as caught:
        manager.create(ids[2], owner="bob")
    assert caught.value.code == "invalid_tool_input"  # a live one cannot


def test_limits_on_containers(manager: ContainerManager) -> None:
    for _ in range(3):
        manager.create()
    with pytest.raises(ContainerError) as caught:
        manager.create()
    assert caught.value.code == "too_many_requests"
    with pytest.raises(ContainerError) as caught:
        manager.create("../escape")
    assert caught.value.code == "invalid_tool_input"


def test_output_is_truncated_with_a_marker(manager: ContainerManager) -> None:
    result = sh(manager, "head -c 100000 /dev/zero | tr '\\0' x")
    assert result.stdout.startswith("x" * 4096)
    assert "[output truncated: 95904 more bytes]" in result.stdout


# --- escapes ------------------------------------------------------------------------------


def test_host_files_are_out_of_reach(manager: ContainerManager, tmp_path: Path) -> None:
    database = tmp_path / "server.sqlite3"
    sqlite3.connect(database).close()
    box = manager.create().id
    for attempt in ("cat /etc/shadow", f"ls {database}", f"ls {tmp_path}", "cat /etc/hostname"):
        result = sh(manager, attempt, box)
        assert result.return_code != 0 and "No such file or directory" in result.stderr, attempt
    # Only what the runtime needs of the host is there, read-only.
    listing = sh(manager, "ls -a /root /etc", box).stdout.split()
    assert "shadow" not in listing and "passwd" not in listing


def test_another_containers_workspace_is_out_of_reach(manager: ContainerManager) -> None:
    other = manager.create()
    sh(manager, "echo secret > mine.txt", other.id)
    result = sh(manager, f"cat {other.workspace}/mine.txt; ls {manager.root}")
    assert "secret" not in result.stdout and result.return_code != 0


def test_writes_outside_the_workspace_stay_inside(manager: ContainerManager) -> None:
    result = sh(manager, "touch /usr/evil; echo $?; echo x > /etc/evil && echo wrote")
    assert "Read-only file system" in result.stderr or "Permission denied" in result.stderr
    assert not Path("/usr/evil").exists() and not Path("/etc/evil").exists()


def test_no_network_but_its_own_loopback(manager: ContainerManager) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    accepted: list[object] = []
    threading.Thread(target=lambda: accepted.append(listener.accept()), daemon=True).start()
    code = (
        "import socket\n"
        "try:\n"
        f"    socket.create_connection(('127.0.0.1', {port}), timeout=2); print('connected')\n"
        "except OSError as e: print('refused', e)\n"
        "print(sorted(n for _, n in socket.if_nameindex()))\n"
    )
    result = manager.run(manager.create(), ["python", "-c", code])
    listener.close()
    assert result.stdout.startswith("refused") and "['lo']" in result.stdout
    assert not accepted


def test_a_fork_bomb_is_contained(manager: ContainerManager) -> None:
    result = sh(manager, "bomb() { bomb | bomb & }; bomb; sleep 2; echo survived")
    assert result.timed_out or "survived" in result.stdout or result.return_code != 0
    # The host still forks, and the next execution runs normally.
    assert sh(manager, "echo fine").stdout == "fine\n"


def test_a_memory_bomb_is_contained(manager: ContainerManager) -> None:
    result = manager.run(manager.create(), ["python", "-c", "x = bytearray(2 * 1024**3)"])
    assert result.return_code != 0 and "MemoryError" in result.stderr


HOARDER = (  # `count` processes that each fill and hold `mib` MiB, say so, and wait `seconds`
    "import os, sys, time\n"
    "count, mib, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])\n"
    "for _ in range(count - 1):\n"
    "    if os.fork() == 0:\n"
    "        break\n"
    "held = bytearray(mib * 2**20)\n"
    "held[::4096] = b'x' * len(range(0, len(held), 4096))  # every page touched: resident\n"
    "print('holding', flush=True)\n"
    "time.sleep(seconds)\n"
)


def test_processes_that_together_hold_too_much_memory_are_stopped(
    tmp_path: Path, manager: ContainerManager
) -> None:
    # Each stays under its own 512 MiB limit; together they pass the execution's 600 MiB.
    # They would hold it for 40 s (under a 60 s wall clock): stopped within 30 s is stopped
    # as it grew, with room for a loaded machine to be slow at filling the memory.
    limits = replace(LIMITS, total_memory_bytes=600 * 2**20, wall_seconds=60)
    started = time.monotonic()
    result = runner.run(
        ["python", "-c", HOARDER, "4", "200", "40"], tmp_path, limits, runtime=default_runtime()
    )
    assert result.over_memory and result.return_code < 0
    assert "held more than 600 MiB of memory together" in result.stderr
    assert time.monotonic() - started < 30  # stopped as it grew, not when it ended
    # Within the limit the same program runs to its end.
    fits = runner.run(
        ["python", "-c", HOARDER, "2", "200", "0.3"], tmp_path, limits, runtime=default_runtime()
    )
    assert (fits.stdout, fits.return_code, fits.over_memory) == ("holding\n" * 2, 0, False)


SHARER = (  # a parent fills 300 MiB, then 4 forked children read it all, sharing its pages
    "import os, time\n"
    "held = bytearray(300 * 2**20)\n"
    "held[::4096] = b'x' * len(range(0, len(held), 4096))\n"
    "for _ in range(4):\n"
    "    if os.fork() == 0:\n"
    "        sum(held[::4096]); time.sleep(1); os._exit(0)\n"
    "for _ in range(4):\n"
    "    os.wait()\n"
    "print('shared')\n"
)
MEMFD_HOARDER = (  # 4 memfds of 200 MiB each, written, never mapped: no process's RSS
    "import os, time\n"
    "fds = []\n"
    "for n in range(4):\n"
    "    fd = os.memfd_create(f'hoard{n}')\n"
    "    for _ in range(200):\n"
    "        os.write(fd, b'x' * 2**20)\n"
    "    fds.append(fd)\n"
    "time.sleep(40)\n"
    "print('still holding')\n"
)


def test_pages_shared_by_forked_workers_count_once(tmp_path: Path) -> None:
    limits = replace(LIMITS, total_memory_bytes=600 * 2**20)  # RSS summed would be 1.5 GiB
    result = runner.run(["python", "-c", SHARER], tmp_path, limits, runtime=default_runtime())
    assert (result.stdout, result.over_memory) == ("shared\n", False), result.stderr


def test_memory_held_in_memfds_counts(tmp_path: Path) -> None:
    # Held for 40 s under a 60 s wall clock: stopped within 30 s is stopped while holding it.
    limits = replace(LIMITS, total_memory_bytes=600 * 2**20, wall_seconds=60)
    started = time.monotonic()
    result = runner.run(
        ["python", "-c", MEMFD_HOARDER], tmp_path, limits, runtime=default_runtime()
    )
    assert result.over_memory and "still holding" not in result.stdout
    assert time.monotonic() - started < 30


def test_dev_is_read_only_and_dev_shm_small(tmp_path: Path) -> None:
    limits = replace(LIMITS, shm_bytes=8 * 2**20)
    script = (
        "touch /dev/planted 2>/dev/null || echo dev-refused; "
        "head -c 20000000 /dev/zero > /dev/shm/big 2>/dev/null || echo shm-full; "
        "rm /dev/shm/big; echo ok > /dev/shm/small && cat /dev/shm/small"
    )
    result = runner.run(["/bin/sh", "-c", script], tmp_path, limits)
    assert result.stdout == "dev-refused\nshm-full\nok\n", result.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="a server run as root sets the cap")
def test_sysv_shared_memory_is_capped_at_the_dev_shm_size(manager: ContainerManager) -> None:
    script = (
        "import ctypes, os\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "for mib in (200, 8):\n"
        "    shmid = libc.shmget(0, ctypes.c_size_t(mib * 2**20), 0o1600)\n"  # IPC_CREAT
        "    print(mib, 'refused' if shmid < 0 else 'granted')\n"
    )
    result = manager.run(manager.create(), ["python", "-c", script])
    assert result.stdout == "200 refused\n8 granted\n", result.stderr
    with open("/proc/sys/kernel/shmall") as host:  # the host's own limit is untouched
        assert int(host.read()) > 64 * 2**20 // 4096


def test_threads_count_as_processes(tmp_path: Path) -> None:
    limits = replace(LIMITS, processes=8, memory_bytes=8 * 2**30)  # room for thread arenas
    spawn = (
        "import threading, time\n"
        "for _ in range(20):\n"
        "    threading.Thread(target=time.sleep, args=(5,), daemon=True).start()\n"
        "time.sleep(5)\n"
        "print('all ran')\n"
    )
    result = runner.run(["python", "-c", spawn], tmp_path, limits, runtime=default_runtime())
    assert result.too_many_processes and "all ran" not in result.stdout


def test_more_processes_at_once_than_allowed_are_stopped(tmp_path: Path) -> None:
    # Run without a user of its own (as an unprivileged server does), no rlimit counts the
    # processes: the watch over the tree does.
    limits = replace(LIMITS, processes=8)
    spawn = "for i in $(seq 20); do sleep 5 & done; wait; echo all ended"
    result = runner.run(["/bin/sh", "-c", spawn], tmp_path, limits)
    assert result.too_many_processes and "all ended" not in result.stdout
    assert "ran more than 8 processes and threads at once" in result.stderr
    few = runner.run(
        ["/bin/sh", "-c", "for i in 1 2 3; do sleep 0.2 & done; wait; echo ok"], tmp_path, limits
    )
    assert (few.stdout, few.too_many_processes) == ("ok\n", False)


def test_a_busy_loop_is_stopped(manager: ContainerManager) -> None:
    result = manager.run(manager.create(), ["python", "-c", "while True: pass"])
    assert result.return_code != 0 or result.timed_out  # CPU limit (SIGXCPU) or wall clock


def test_a_sleeper_is_killed_at_the_wall_clock(tmp_path: Path) -> None:
    quick = ContainerManager(
        tmp_path / "sandbox", execution=ExecutionLimits(wall_seconds=1), runtime=default_runtime()
    )
    result = quick.run(quick.create(), ["/bin/sh", "-c", "sleep 30 & sleep 30"])
    assert result.timed_out


def test_filling_the_disk_is_refused(manager: ContainerManager) -> None:
    container = manager.create()
    with pytest.raises(ContainerError) as caught:
        sh(manager, "head -c 9000000 /dev/zero > big.bin", container.id)
    assert caught.value.code == "output_file_too_large"
    assert sh(manager, "rm big.bin && echo freed", container.id).stdout == "freed\n"


def test_a_command_filling_the_disk_is_stopped_while_it_runs(manager: ContainerManager) -> None:
    # Files each under the per-file limit, written until something stops it: the quota (8 MiB)
    # must, long before the wall clock (LIMITS) and before the host's disk is at risk.
    container = manager.create()
    script = "i=0; while true; do head -c 1048576 /dev/zero > f$i; i=$((i+1)); done"
    started = time.monotonic()
    with pytest.raises(ContainerError) as caught:
        sh(manager, script, container.id)
    assert time.monotonic() - started < LIMITS.wall_seconds / 2
    assert caught.value.code == "output_file_too_large"
    assert "the command was stopped" in str(caught.value)
    assert disk_usage(container.workspace) < 256 * 2**20  # what ~0.1 s of writing adds
    assert sh(manager, "rm f* && echo freed", container.id).stdout == "freed\n"


def test_empty_files_count_against_the_quota(manager: ContainerManager) -> None:
    # Inodes and directory space are disk too: 4,000 empty files are 16 MB by the quota's count.
    container = manager.create()
    with pytest.raises(ContainerError) as caught:
        sh(manager, "for i in $(seq 4000); do : > empty-$i; done", container.id)
    assert caught.value.code == "output_file_too_large"


def test_tmp_is_bounded(tmp_path: Path) -> None:
    small = ExecutionLimits(wall_seconds=20, tmp_bytes=4 * 2**20)
    manager = ContainerManager(tmp_path / "sandbox", execution=small, runtime=default_runtime())
    script = "echo fine > /tmp/small && cat /tmp/small; head -c 8000000 /dev/zero > /tmp/big"
    result = manager.run(manager.create(), ["/bin/sh", "-c", script])
    assert result.stdout == "fine\n"  # writable by the container's user
    assert "No space left on device" in result.stderr and result.return_code != 0


def test_the_servers_process_cannot_be_signalled(manager: ContainerManager) -> None:
    result = sh(manager, f"kill -9 {os.getpid()}; echo $?; ps -e 2>/dev/null | wc -l")
    assert "No such process" in result.stderr
    assert os.getpid()  # still here
