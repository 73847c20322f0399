"""Server-sent events: encoding the stream, with pings while the engine is busy or queued."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator

from tercet.wire.events import PingEvent, StreamEvent


def encode(event: StreamEvent) -> bytes:
    """One SSE frame; the SDK dispatches on the `event:` line, which equals the JSON `type`."""
    return f"event: {event.type}\ndata: {event.model_dump_json()}\n\n".encode()


async def with_pings(
    events: AsyncGenerator[StreamEvent, None], interval: float
) -> AsyncIterator[StreamEvent]:
    """Pass events through, adding a ping after the first one and whenever `interval` passes idle.

    Pings keep proxies and clients from timing out while a request waits in line or a long
    prompt is prefilled.
    """
    pending: asyncio.Future[StreamEvent] = asyncio.ensure_future(anext(events))
    first = True
    try:
        while True:
            done, _ = await asyncio.wait({pending}, timeout=interval)
            if not done:
                yield PingEvent()
                continue
            try:
                event = pending.result()
            except StopAsyncIteration:
                return
            yield event
            if first:
                first = False
                yield PingEvent()
            pending = asyncio.ensure_future(anext(events))
    finally:
        if not pending.done():
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await pending
        await events.aclose()
