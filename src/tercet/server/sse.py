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


def encode_all(events: list[StreamEvent]) -> bytes:
    """Frames for several events, to go out in one write."""
    return b"".join(encode(event) for event in events)


async def with_pings(
    events: AsyncGenerator[StreamEvent, None], interval: float
) -> AsyncIterator[list[StreamEvent]]:
    """Pass events through, adding a ping after the first one and whenever `interval` passes idle.

    Pings keep proxies and clients from timing out while a request waits in line or a long
    prompt is prefilled. A producer task reads the events; the consumer hands on, as one list,
    every event that is ready when it gets to them (one write for several, not one each, when
    the engine is ahead of the socket; a lone token still goes out at once). One timer, re-armed
    when it fires rather than on every event, drops a ping into an idle stream.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[StreamEvent | BaseException | None] = asyncio.Queue()
    last_sent = loop.time()
    timer: asyncio.TimerHandle

    async def produce() -> None:
        try:
            async for event in events:
                queue.put_nowait(event)
            queue.put_nowait(None)
        except Exception as exc:  # handed to the consumer, which re-raises it
            queue.put_nowait(exc)

    def tick() -> None:
        nonlocal timer
        idle = loop.time() - last_sent
        if idle >= interval:
            queue.put_nowait(_PING)
            idle = 0.0
        timer = loop.call_later(interval - idle, tick)

    producer = asyncio.ensure_future(produce())
    timer = loop.call_later(interval, tick)
    first = True
    try:
        while True:
            item = await queue.get()
            batch: list[StreamEvent] = []
            while True:
                if item is None or isinstance(item, BaseException):
                    if batch:
                        yield batch
                    if item is None:
                        return
                    raise item
                batch.append(item)
                if first:
                    first = False
                    batch.append(_PING)
                if queue.empty():
                    break
                item = queue.get_nowait()
            last_sent = loop.time()
            yield batch
    finally:
        timer.cancel()
        if not producer.done():
            producer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await producer
        await events.aclose()


_PING = PingEvent()
