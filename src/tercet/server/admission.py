"""Admission to an engine: a few requests run, a bounded number wait, the rest get 529."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import TracebackType

from tercet.wire.errors import OverloadedError


class AdmissionQueue:
    """Lets `max_active` requests use the engine at once and `max_waiting` wait in line (FIFO).

    Joining the line (`join`) is separate from waiting in it, so a full line can be refused
    with a 529 before a streaming response has started.
    """

    def __init__(self, max_active: int = 1, max_waiting: int = 16) -> None:
        self._slots = asyncio.Semaphore(max_active)
        self._max_waiting = max_waiting
        self.waiting = 0
        self.active = 0

    def join(self) -> Ticket:
        if self._slots.locked() and self.waiting >= self._max_waiting:
            raise OverloadedError("Overloaded")
        self.waiting += 1
        return Ticket(self)


class Ticket:
    """A place in line: `async with ticket:` waits for a slot and holds it; `leave()` gives up;
    `stepped_aside()` lends the slot out while the request waits on something else."""

    def __init__(self, queue: AdmissionQueue) -> None:
        self._queue = queue
        self._in_line = True
        self._held = False

    def leave(self) -> None:
        if self._in_line:
            self._in_line = False
            self._queue.waiting -= 1

    async def __aenter__(self) -> None:
        try:
            await self._acquire()
        finally:
            self.leave()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._held:
            self._release()

    @asynccontextmanager
    async def stepped_aside(self) -> AsyncIterator[None]:
        """Give the slot up while the request does not need the engine (a server tool runs),
        then wait for one again. A sandboxed command or an MCP call may take a minute; the
        engine serves the requests in line meanwhile. On an error inside, the slot is not
        taken again: the request is ending."""
        self._release()
        yield
        await self._acquire()

    async def _acquire(self) -> None:
        await self._queue._slots.acquire()
        self._held = True
        self._queue.active += 1

    def _release(self) -> None:
        self._held = False
        self._queue.active -= 1
        self._queue._slots.release()
