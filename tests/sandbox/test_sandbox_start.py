"""How the runner starts and ends an execution: the limits set on bubblewrap's held first
process before the command runs, stdin fed and output read on one thread, and a container's
last use kept without rewriting its record."""

from __future__ import annotations

import os
import resource
from pathlib import Path

import pytest

from tercet.sandbox import runner
from tercet.sandbox.config import ContainerLimits, ExecutionLimits
from tercet.sandbox.containers import RECORD, ContainerManager
from tercet.sandbox.runner import SandboxUnavailable, unavailable_reason
from tercet.sandbox.runtime import default_runtime

pytestmark = pytest.mark.skipif(
    unavailable_reason() is not None, reason=f"no sandbox here: {unavailable_reason()}"
)
LIMITS = ExecutionLimits(
    wall_seconds=20,
    cpu_seconds=7,
    memory_bytes=300 * 2**20,
    processes=40,
    open_files=200,
    file_bytes=3 * 2**20,
    output_bytes=4096,
)
# The limits as the command sees them, soft and hard.
SHOW_LIMITS = (
    "import resource\n"
    "for name in ('CPU', 'AS', 'FSIZE', 'NOFILE', 'CORE', 'NPROC'):\n"
    "    print(name, *resource.getrlimit(getattr(resource, 'RLIMIT_' + name)))\n"
)


def limits_seen(result: runner.ExecResult) -> dict[str, tuple[int, int]]:
    assert result.return_code == 0, result.stderr
    seen = {}
    for line in result.stdout.splitlines():
        name, soft, hard = line.split()
        seen[name] = (int(soft), int(hard))
    return seen


@pytest.mark.skipif(os.geteuid() != 0, reason="a server run as root gives each container a user")
def test_a_containers_command_runs_under_its_limits_as_its_user(tmp_path: Path) -> None:
    manager = ContainerManager(tmp_path / "sandbox", execution=LIMITS, runtime=default_runtime())
    container = manager.create()
    result = manager.run(container, ["python", "-c", SHOW_LIMITS])
    assert limits_seen(result) == {
        "CPU": (7, 8),
        "AS": (300 * 2**20, 300 * 2**20),
        "FSIZE": (3 * 2**20, 3 * 2**20),
        "NOFILE": (200, 200),
        "CORE": (0, 0),
        "NPROC": (40, 40),
    }
    ids = manager.run(container, ["/bin/sh", "-c", "id -u; grep CapEff /proc/self/status"])
    assert ids.stdout == f"{container.uid}\nCapEff:\t0000000000000000\n"


def test_a_command_without_a_user_of_its_own_runs_under_its_limits(tmp_path: Path) -> None:
    # Run as the server's own user, the process limit adds the user's processes of now.
    result = runner.run(["python", "-c", SHOW_LIMITS], tmp_path, LIMITS, runtime=default_runtime())
    seen = limits_seen(result)
    assert seen["CPU"] == (7, 8) and seen["AS"] == (300 * 2**20, 300 * 2**20)
    assert seen["NOFILE"] == (200, 200) and seen["CORE"] == (0, 0)
    assert seen["NPROC"][0] > 40


def test_limits_are_never_above_the_servers_own_hard_limits(tmp_path: Path) -> None:
    own_hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]  # never unlimited
    generous = ExecutionLimits(open_files=own_hard + 1000)
    result = runner.run(
        ["python", "-c", SHOW_LIMITS], tmp_path, generous, runtime=default_runtime()
    )
    assert limits_seen(result)["NOFILE"] == (own_hard, own_hard)


def test_no_descriptor_of_the_runner_reaches_the_command(tmp_path: Path) -> None:
    # bubblewrap's report and hold pipes close before the command starts.
    result = runner.run(["/bin/sh", "-c", "ls /proc/self/fd"], tmp_path, LIMITS)
    assert result.stdout.split() == ["0", "1", "2", "3"], result.stderr  # 3: ls's own listing


def test_a_command_is_not_run_when_its_limits_cannot_be_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refused(pid: int, kind: int, limits: tuple[int, int]) -> tuple[int, int]:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(resource, "prlimit", refused)
    with pytest.raises(SandboxUnavailable, match="cannot set the sandbox's limits"):
        runner.run(["/bin/sh", "-c", "echo ran > ran.txt"], tmp_path, LIMITS)
    assert not (tmp_path / "ran.txt").exists()


def test_a_large_stdin_is_fed_while_the_output_is_read(tmp_path: Path) -> None:
    # More than the pipes hold, both ways at once: neither side may wait on the other.
    echo = (
        "import sys\nfor line in sys.stdin:\n    sys.stdout.write(line); sys.stderr.write(line)\n"
    )
    data = b"".join(b"line %d\n" % n for n in range(100_000))
    result = runner.run(
        ["python", "-c", echo], tmp_path, LIMITS, runtime=default_runtime(), stdin=data
    )
    assert result.return_code == 0 and not result.timed_out
    for output in (result.stdout, result.stderr):
        assert output.startswith("line 0\nline 1\n")
        kept, _, marker = output.partition("\n[output truncated: ")
        assert len(kept.encode()) == LIMITS.output_bytes
        assert marker == f"{len(data) - LIMITS.output_bytes} more bytes]\n"


def test_a_command_that_never_reads_its_stdin_still_meets_the_wall_clock(
    tmp_path: Path,
) -> None:
    limits = ExecutionLimits(wall_seconds=1)
    result = runner.run(["sleep", "30"], tmp_path, limits, stdin=b"x" * 8 * 2**20)
    assert result.timed_out


def test_a_command_that_closes_its_stdin_early_runs_on(tmp_path: Path) -> None:
    script = "exec 0<&-; echo closed"
    result = runner.run(["/bin/sh", "-c", script], tmp_path, LIMITS, stdin=b"x" * 4 * 2**20)
    assert (result.stdout, result.return_code) == ("closed\n", 0)


def test_a_containers_last_use_outlives_the_server(tmp_path: Path) -> None:
    now = [1_000_000.0]
    limits = ContainerLimits(idle_seconds=600)

    def make() -> ContainerManager:
        return ContainerManager(tmp_path / "sandbox", limits, LIMITS, clock=lambda: now[0])

    first = make()
    container = first.create()
    record = (container.directory / RECORD).read_text()
    now[0] += 500
    first.run(container, ["/bin/true"])
    assert (container.directory / RECORD).read_text() == record  # not rewritten
    now[0] += 500  # 1000 s after its creation, 500 after its last use
    restarted = make()
    assert restarted.get(container.id).last_used == 1_000_500.0
    now[0] += 101
    assert restarted.live() == []


def test_a_server_holding_many_descriptors_still_runs_commands(tmp_path: Path) -> None:
    # The runner's pipes then have numbers past 1023, which select() cannot wait on.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip("this process may not hold 1,200 descriptors")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    held: list[int] = []
    try:
        while not held or held[-1] < 1100:
            held.append(os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC))
        result = runner.run(["/bin/sh", "-c", "echo ok"], tmp_path, LIMITS)
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert (result.stdout, result.return_code) == ("ok\n", 0), result.stderr
