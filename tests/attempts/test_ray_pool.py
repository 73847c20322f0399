"""RayPool on a real Ray instance started here (two CPUs, loopback only): a value comes back, an
exception comes back as itself, a worker that dies is reported and tried again, and a pool
that runs out of tries says so; bad input and a missing Ray are said clearly."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tercet.attempts.ray_pool import INSTALL_HINT, RayPool, RayUnavailable, WorkerLost

# Ray's settings for a test instance, read when Ray is first imported and when it starts:
# its servers on 127.0.0.1 (ray.init otherwise advertises, and listens on, the machine's
# outward address), no usage statistics sent, the auth token kept in the environment (not
# written to ~/.ray).
LOOPBACK_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "token",
    # One for the whole test process: Ray's client reads it once, for every instance after.
    "RAY_AUTH_TOKEN": secrets.token_hex(16),
}


@contextlib.contextmanager
def local_pool(*, cwd: Path | None = None, **options: Any) -> Iterator[RayPool]:
    """A private Ray instance (2 CPUs, loopback, no dashboard, logs in a temporary directory)
    behind a `RayPool`, shut down at the end. This module's functions go to the workers by
    value. `cwd`: the directory Ray puts on the workers' sys.path (the driver's, by default)."""
    if importlib.util.find_spec("ray") is None:
        pytest.skip(f"ray is not installed ({INSTALL_HINT}; scripts/setup dev installs it)")
    # A short directory: Ray's socket paths under it must fit in 107 bytes.
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    with pytest.MonkeyPatch.context() as env:
        for name, value in LOOPBACK_ENV.items():
            env.setenv(name, value)
        if cwd is not None:
            env.chdir(cwd)
        pool = RayPool(
            "local",
            init_options={"num_cpus": 2, "include_dashboard": False, "_temp_dir": temp},
            **options,
        )
        try:
            ray = pool.connect()
            env.undo()  # the instance has what it needs; the tests see the usual environment
            from ray import cloudpickle

            cloudpickle.register_pickle_by_value(sys.modules[__name__])
            addresses = {node["NodeManagerAddress"] for node in ray.nodes()}
            assert addresses == {"127.0.0.1"}, f"Ray is not on loopback: {addresses}"
            yield pool
        finally:
            pool.close()
            shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def pool() -> Iterator[RayPool]:
    with local_pool() as started:
        yield started


# ---------------------------------------------------------------- what runs on the workers


def add(a: int, b: int) -> int:
    return a + b


def pid() -> int:
    return os.getpid()


def resources() -> dict[str, float]:
    import ray

    return dict(ray.get_runtime_context().get_assigned_resources())


def wait_to_be_cancelled(started: str, stopped: str) -> None:
    """Run until cancelled (Ray raises KeyboardInterrupt in the task), saying so in a file.
    The start is said inside the `try`: the driver cancels as soon as the file exists, and an
    interrupt that lands while it is being written must still be seen."""
    try:
        Path(started).write_text(str(os.getpid()))
        while True:
            time.sleep(0.05)
    except KeyboardInterrupt:
        Path(stopped).write_text("cancelled")
        raise


def fail(message: str) -> None:
    raise ValueError(message)


def die_once(marker: str) -> int:
    """Kill this worker the first time (the marker does not exist yet); the pid after."""
    path = Path(marker)
    if not path.exists():
        path.write_text(str(os.getpid()))
        os._exit(1)
    return os.getpid()


def die(marker: str) -> None:
    Path(marker).write_text(str(os.getpid()))
    os._exit(1)


# ---------------------------------------------------------------------------------- tests


def test_a_call_runs_on_a_worker_and_returns_its_value(pool: RayPool) -> None:
    async def main() -> tuple[int, int, int]:
        return await asyncio.gather(pool.call(add, 2, 3), pool.call(add, 4, 5), pool.call(pid))

    five, nine, worker = asyncio.run(main())
    assert (five, nine) == (5, 9)
    assert worker != os.getpid()
    # Each call asks Ray for the pool's CPUs (and holds them while it runs).
    assert asyncio.run(pool.call(resources)) == {"CPU": 1.0}
    assert asyncio.run(RayPool(num_cpus=2).call(resources)) == {"CPU": 2.0}


def _wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"still waiting for {what} after {timeout_s:g}s"
        time.sleep(0.02)


def test_a_cancelled_call_is_cancelled_on_the_cluster(pool: RayPool, tmp_path: Path) -> None:
    started, stopped = tmp_path / "started", tmp_path / "stopped"

    async def main() -> None:
        call = asyncio.create_task(pool.call(wait_to_be_cancelled, str(started), str(stopped)))
        while not started.exists():  # the task runs on a worker now
            assert not call.done(), call
            await asyncio.sleep(0.02)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call

    asyncio.run(main())
    _wait_for(stopped.exists, "the task to see its cancellation")
    assert stopped.read_text() == "cancelled"
    assert asyncio.run(pool.call(add, 1, 2)) == 3  # its CPU is free again


def test_an_exception_raised_by_the_function_comes_back_as_itself(pool: RayPool) -> None:
    with pytest.raises(ValueError) as raised:
        asyncio.run(pool.call(fail, "no such thing: 7"))
    assert type(raised.value) is ValueError and str(raised.value) == "no such thing: 7"
    # The remote traceback is chained, for whoever reads it.
    assert "in fail" in str(raised.value.__cause__), raised.value.__cause__


def test_a_worker_that_dies_is_reported_then_the_retry_succeeds(
    pool: RayPool, tmp_path: Path
) -> None:
    marker = tmp_path / "died"
    lost: list[tuple[int, str]] = []
    # A second pool finds Ray connected: it uses that connection and leaves it open.
    retrying = RayPool(max_retries=2)
    worker = asyncio.run(
        retrying.call_with_retries(
            die_once, str(marker), on_lost=lambda n, reason: lost.append((n, reason))
        )
    )
    assert len(lost) == 1 and lost[0][0] == 1, lost
    assert "WorkerCrashedError" in lost[0][1] and "died unexpectedly" in lost[0][1], lost
    assert worker != int(marker.read_text())  # the second try ran in a new process
    retrying.close()
    assert asyncio.run(pool.call(add, 1, 1)) == 2


def test_a_worker_lost_on_every_try_ends_in_worker_lost(pool: RayPool, tmp_path: Path) -> None:
    lost: list[int] = []

    async def record(number: int, reason: str) -> None:  # an awaitable callback is awaited
        lost.append(number)

    retrying = RayPool(max_retries=1)
    with pytest.raises(WorkerLost) as raised:
        asyncio.run(retrying.call_with_retries(die, str(tmp_path / "pid"), on_lost=record))
    assert lost == [1, 2]
    assert "WorkerCrashedError" in raised.value.reason
    with pytest.raises(WorkerLost):  # `call` tries once
        asyncio.run(pool.call(die, str(tmp_path / "pid")))


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="num_cpus must be at least 0"):
        RayPool(num_cpus=-1)
    with pytest.raises(ValueError, match="max_retries must be at least 0"):
        RayPool(max_retries=-1)
    with pytest.raises(ValueError, match="address is empty"):
        RayPool(" ")
    with pytest.raises(ValueError, match="resource amounts"):
        RayPool(resources={"GPU": -1})


def test_without_ray_the_error_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as when not installed
    with pytest.raises(RayUnavailable, match=r"not installed: pip install 'tercet\[ray\]'"):
        RayPool().connect()


def test_an_address_nothing_answers_at_is_refused_at_once() -> None:
    if importlib.util.find_spec("ray") is None:
        pytest.skip(f"ray is not installed ({INSTALL_HINT})")
    with socket.socket() as bound:  # bound, never listening: a connection is refused
        bound.bind(("127.0.0.1", 0))
        port = bound.getsockname()[1]
        with pytest.raises(
            RayUnavailable, match=f"cannot reach the Ray cluster at '127.0.0.1:{port}'"
        ):
            RayPool(f"127.0.0.1:{port}").connect()


def test_a_private_instance_s_processes_can_be_interrupted_even_if_we_cannot() -> None:
    """Started in the background, a process ignores SIGINT and so would the Ray processes it
    starts: Ray's cancellation (a SIGINT in the worker) would never land. While a private
    instance starts, SIGINT is at its default; afterwards as it was."""
    from tercet.attempts.ray_pool import _interruptible_children

    probe = [sys.executable, "-c", "import signal; print(signal.getsignal(signal.SIGINT))"]
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with _interruptible_children(True):
            started = subprocess.run(probe, capture_output=True, text=True, check=True).stdout
        assert "default_int_handler" in started
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        with _interruptible_children(False):  # joining a cluster: not ours to change
            joined = subprocess.run(probe, capture_output=True, text=True, check=True).stdout
        assert joined.strip() in ("1", "Handlers.SIG_IGN")  # SIG_IGN, as Python prints it
    finally:
        signal.signal(signal.SIGINT, previous)
