"""The SSE stream's batching and pings (`with_pings`), driven by events the test controls."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

from tercet.server.sse import encode, encode_all, with_pings
from tercet.wire.events import (
    ContentBlockDeltaEvent,
    MessageStopEvent,
    PingEvent,
    StreamEvent,
    TextDelta,
)


def delta(text: str) -> ContentBlockDeltaEvent:
    return ContentBlockDeltaEvent(index=0, delta=TextDelta(text=text))


def texts(batch: list[StreamEvent]) -> list[str]:
    return [e.delta.text if isinstance(e, ContentBlockDeltaEvent) else e.type for e in batch]  # type: ignore[union-attr]


def test_events_ready_together_go_out_as_one_batch_and_a_lone_one_at_once() -> None:
    async def scenario() -> list[list[str]]:
        first_sent, second_sent = asyncio.Event(), asyncio.Event()

        async def events() -> AsyncGenerator[StreamEvent, None]:
            yield delta("a")  # three at once, as tokens decoded while the loop was busy
            yield delta("b")
            yield delta("c")
            await first_sent.wait()
            yield delta("d")  # alone: it must go out without waiting for company
            await second_sent.wait()
            yield MessageStopEvent()

        batches: list[list[str]] = []
        async for batch in with_pings(events(), interval=3600):
            batches.append(texts(batch))
            (first_sent if len(batches) == 1 else second_sent).set()
        return batches

    batches = asyncio.run(scenario())
    # The first event is followed by a ping (the stream is alive), then whatever else was ready.
    assert batches == [["a", "ping", "b", "c"], ["d"], ["message_stop"]]


def test_an_idle_stream_gets_pings_until_the_next_event() -> None:
    async def scenario() -> list[list[str]]:
        pinged = asyncio.Event()

        async def events() -> AsyncGenerator[StreamEvent, None]:
            yield delta("a")
            await pinged.wait()  # a long prefill, say: nothing until a ping has gone out
            yield MessageStopEvent()

        batches: list[list[str]] = []
        async for batch in with_pings(events(), interval=0.01):
            batches.append(texts(batch))
            if len(batches) >= 3:  # after the first batch, two idle pings
                pinged.set()
        return batches

    batches = asyncio.run(scenario())
    assert batches[0] == ["a", "ping"]
    assert batches[1] == batches[2] == ["ping"]
    assert batches[-1][-1] == "message_stop"
    assert {name for batch in batches[1:] for name in batch} == {"ping", "message_stop"}


def test_an_error_after_events_sends_those_events_first() -> None:
    async def scenario() -> tuple[list[list[str]], str]:
        async def events() -> AsyncGenerator[StreamEvent, None]:
            yield delta("a")
            raise RuntimeError("engine failed")

        batches: list[list[str]] = []
        try:
            async for batch in with_pings(events(), interval=3600):
                batches.append(texts(batch))
        except RuntimeError as exc:
            return batches, str(exc)
        return batches, ""

    assert asyncio.run(scenario()) == ([["a", "ping"]], "engine failed")


def test_a_batch_is_encoded_as_its_frames_in_order() -> None:
    batch: list[StreamEvent] = [delta("x"), PingEvent(), delta("y\n")]
    assert encode_all(batch) == b"".join(encode(e) for e in batch)
    assert encode_all(batch).count(b"\n\n") == 3
