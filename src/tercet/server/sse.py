"""Server-sent events: encoding the stream, with pings while the engine is busy or queued."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator

from tercet.server.json_body import model_json
from tercet.wire.events import PingEvent, StreamEvent


def encode(event: StreamEvent) -> bytes:
    """One SSE frame; the SDK dispatches on the `event:` line, which equals the JSON `type`."""
    return f"event: {event.type}\ndata: {model_json(event)}\n\n".encode()


async def with_pings(
    events: AsyncGenerator[StreamEvent, None], interval: float
) -> AsyncIterator[StreamEvent]:
    """Pass events through, adding a ping after the first one and whenever `interval` passes idle.

    Pings keep proxies and clients from timing out while a request waits in line or a long
    prompt is prefilled. A producer task reads the events, and a timer re-armed on each event
    drops a ping in between, so no task or timed wait is made per event.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[StreamEvent | BaseException | None] = asyncio.Queue()

    async def produce() -> None:
        try:
            async for event in events:
                queue.put_nowait(event)
            queue.put_nowait(None)
        except Exception as exc:  # handed to the consumer, which re-raises it
            queue.put_nowait(exc)

    producer = asyncio.ensure_future(produce())
    timer = loop.call_later(interval, queue.put_nowait, _PING)
    first = True
    try:
        while True:
            item = await queue.get()
            if item is not _PING:
                timer.cancel()  # the stream is not idle: the next ping is `interval` from now
            timer = loop.call_later(interval, queue.put_nowait, _PING)
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
            if first:
                first = False
                yield _PING
    finally:
        timer.cancel()
        if not producer.done():
            producer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await producer
        await events.aclose()


_PING = PingEvent()
