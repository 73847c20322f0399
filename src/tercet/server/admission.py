"""Admission to an engine: a few requests run, a bounded number wait, the rest get 529."""

from __future__ import annotations

import asyncio
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
    """A place in line: `async with ticket:` waits for a slot and holds it; `leave()` gives up."""

    def __init__(self, queue: AdmissionQueue) -> None:
        self._queue = queue
        self._in_line = True

    def leave(self) -> None:
        if self._in_line:
            self._in_line = False
            self._queue.waiting -= 1

    async def __aenter__(self) -> None:
        try:
            await self._queue._slots.acquire()
        finally:
            self.leave()
        self._queue.active += 1

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._queue.active -= 1
        self._queue._slots.release()
