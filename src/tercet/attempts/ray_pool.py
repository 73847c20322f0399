"""Attempts on a Ray cluster: `RayPool` runs a function as a Ray task and tells a dead worker
apart from an exception the function raised.

    pool = RayPool("auto")                  # the cluster `ray start` made (or RAY_ADDRESS)
    value = await pool.call(fn, arg)        # fn(arg) on some node, one CPU asked
    value = await pool.call_with_retries(fn, arg, on_lost=record)
    pool.close()

`fn` must be a module-level function: Ray pickles it by reference, so its module must be
importable on every node (tercet's own are; a module that is not installed can be sent by
value with `ray.cloudpickle.register_pickle_by_value(module)`). Arguments and the value
travel pickled.

Ray is an optional dependency (`pip install 'tercet[ray]'`), imported on first use.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import os
import signal
import socket
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping
from types import TracebackType
from typing import Any, TypeVar, cast

T = TypeVar("T")

INSTALL_HINT = "pip install 'tercet[ray]'"
# Addresses ray.init understands besides HOST:PORT and ray://...: "auto" finds the running
# cluster (RAY_ADDRESS, or the one `ray start` made here); "local" starts a private one.
AUTO = "auto"
LOCAL = "local"
PROBE_TIMEOUT_S = 10.0

OnLost = Callable[[int, str], Awaitable[None] | None]


class RayUnavailable(RuntimeError):
    """Ray is not installed, or its cluster cannot be reached; the message says what to do."""


class WorkerLost(RuntimeError):
    """The worker process or node running a call died (crashed, killed, out of memory), so
    the call has no result; `reason` is Ray's account of it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _lost_errors(exceptions: Any) -> tuple[type[BaseException], ...]:
    """Ray's errors that mean the call's process or node is gone, not that the call failed."""
    return (
        exceptions.WorkerCrashedError,
        exceptions.NodeDiedError,
        exceptions.RayActorError,  # ActorDiedError, ActorUnavailableError
        exceptions.OutOfMemoryError,  # the node's memory monitor killed the worker
        exceptions.LocalRayletDiedError,
        exceptions.ObjectLostError,  # the result was on a node that died
    )


@contextlib.contextmanager
def _interruptible_children(starting: bool) -> Iterator[None]:
    """While a private instance starts: SIGINT at its default, if it was ignored. Ray cancels a
    running task with SIGINT (a KeyboardInterrupt in the worker), and its workers inherit the
    disposition of whoever started the instance; a process started in the background (`cmd &`,
    nohup) ignores SIGINT, so its workers would ignore every cancellation."""
    ignored = (
        starting
        and threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    )
    if not ignored:
        yield
        return
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


class RayPool:
    """Runs calls as Ray tasks on a cluster, each asking for `num_cpus` and `resources`.

    `address`: "auto" (the running cluster), "local" (start a private instance on this
    machine; `init_options` go to `ray.init`, e.g. num_cpus) or "HOST:PORT" / "ray://...".
    The connection is made on first use (or by `connect`); `close` shuts Ray down only when
    this pool started or connected it. A lost worker is retried by `call_with_retries` up to
    `max_retries` more times; Ray itself never retries (each loss is reported first).
    """

    def __init__(
        self,
        address: str = AUTO,
        *,
        num_cpus: float = 1.0,
        resources: Mapping[str, float] | None = None,
        max_retries: int = 2,
        runtime_env: Mapping[str, Any] | None = None,
        init_options: Mapping[str, Any] | None = None,
    ) -> None:
        if not address.strip():
            raise ValueError("the Ray address is empty: give auto, local, HOST:PORT or ray://...")
        if num_cpus < 0:
            raise ValueError(f"num_cpus must be at least 0, not {num_cpus}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be at least 0, not {max_retries}")
        bad = {name: amount for name, amount in (resources or {}).items() if amount < 0}
        if bad:
            raise ValueError(f"resource amounts must be at least 0: {bad}")
        self.address = address.strip()
        self.num_cpus = num_cpus
        self.resources = dict(resources or {})
        self.max_retries = max_retries
        self.runtime_env = dict(runtime_env) if runtime_env else None
        self.init_options = dict(init_options or {})
        self._ray: Any = None
        self._owned = False
        self._remotes: dict[Callable[..., Any], Any] = {}

    def connect(self) -> Any:
        """Connect now (once): the `ray` module. `RayUnavailable` when Ray is not installed
        or the cluster cannot be reached. Already connected in this process (by a caller or
        a test), the pool uses that connection and leaves it open at `close`."""
        if self._ray is not None:
            return self._ray
        if self.address == LOCAL and "ray" not in sys.modules:
            # A private instance serves this machine only: Ray then listens on 127.0.0.1, not
            # on the machine's outward address (read once, when Ray is first imported).
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        try:
            ray = importlib.import_module("ray")
        except ImportError as exc:
            raise RayUnavailable(f"Ray is not installed: {INSTALL_HINT}") from exc
        self._probe()
        if not ray.is_initialized():
            # Workers' output would interleave with the caller's progress display; it stays
            # in the session's log files (ray.init's log_to_driver=True brings it back).
            options: dict[str, Any] = {"log_to_driver": False, **self.init_options}
            try:
                with _interruptible_children(self.address == LOCAL):
                    ray.init(address=self.address, ignore_reinit_error=True, **options)
            except Exception as exc:
                raise RayUnavailable(self._unreachable(exc)) from exc
            self._owned = True
        self._ray = ray
        return ray

    def _probe(self) -> None:
        """Fail fast on a HOST:PORT nothing answers at: ray.init would retry for minutes."""
        host, colon, port = self.address.rpartition(":")
        if not colon or "://" in self.address or not port.isdigit():
            return
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_TIMEOUT_S):
                pass
        except OSError as exc:
            raise RayUnavailable(self._unreachable(exc)) from exc

    def _unreachable(self, exc: Exception) -> str:
        detail = f"{type(exc).__name__}: {exc}".strip()
        if self.address == LOCAL:
            return f"cannot start a local Ray instance: {detail}"
        hint = (
            "start one with `ray start --head` (docs/ray.md) or set RAY_ADDRESS"
            if self.address == AUTO
            else "is `ray start` running there, and is the port open?"
        )
        return f"cannot reach the Ray cluster at {self.address!r} ({hint}): {detail}"

    def _remote(self, ray: Any, fn: Callable[..., Any]) -> Any:
        remote = self._remotes.get(fn)
        if remote is None:
            options: dict[str, Any] = {"num_cpus": self.num_cpus, "max_retries": 0}
            if self.resources:
                options["resources"] = self.resources
            if self.runtime_env:
                options["runtime_env"] = self.runtime_env
            remote = self._remotes[fn] = ray.remote(fn).options(**options)
        return remote

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` once as a Ray task: its value. An exception `fn` raised is raised
        here as itself (the remote traceback chained as its cause); a dead worker or node is
        `WorkerLost`. Cancelled, the task is cancelled on the cluster too."""
        ray = self.connect()
        ref = self._remote(ray, fn).remote(*args)
        try:
            return cast(T, await asyncio.wrap_future(ref.future()))
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                ray.cancel(ref)  # a KeyboardInterrupt in the task: its cleanup still runs
            raise
        except ray.exceptions.RayTaskError as error:
            cause = error.cause
            if isinstance(cause, BaseException):
                raise cause from error
            raise
        except _lost_errors(ray.exceptions) as error:
            raise WorkerLost(f"{type(error).__name__}: {error}") from error

    async def call_with_retries(
        self, fn: Callable[..., T], *args: Any, on_lost: OnLost | None = None
    ) -> T:
        """`call`, tried again when the worker is lost, up to `max_retries` more times.
        Every loss is reported first to `on_lost(try_number, reason)` (tries count from 1;
        the caller records it there); after the last, `WorkerLost` is raised."""
        tries = self.max_retries + 1
        for number in range(1, tries + 1):
            try:
                return await self.call(fn, *args)
            except WorkerLost as lost:
                if on_lost is not None:
                    reported = on_lost(number, lost.reason)
                    if inspect.isawaitable(reported):
                        await reported
                if number == tries:
                    raise
        raise AssertionError("unreachable")  # the loop returns or raises

    def close(self) -> None:
        """Shut Ray down if this pool started or connected it; otherwise leave it be."""
        if self._ray is not None and self._owned:
            self._ray.shutdown()
        self._ray = None
        self._owned = False
        self._remotes.clear()

    def __enter__(self) -> RayPool:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
