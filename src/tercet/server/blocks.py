"""From engine events to content-block events: one block open at a time, indexes in order."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from tercet.engine.base import TextChunk, ThinkingChunk, ToolCallDelta, ToolCallStart
from tercet.server.signatures import ThinkingSigner
from tercet.wire.content import TextBlock, ThinkingBlock, ToolUseBlock
from tercet.wire.events import (
    ContentBlockDeltaEvent,
    ContentBlockStartEvent,
    ContentBlockStopEvent,
    InputJSONDelta,
    SignatureDelta,
    StreamEvent,
    TextDelta,
    ThinkingDelta,
)


class BlockWriter:
    """Turns thinking, answer text and tool calls into content-block events, indexes in order.

    With thinking on, the reply always starts with a thinking block (empty if the model wrote
    none), closed by a `signature_delta`. With `display: "omitted"` its text is not sent, and the
    signature covers the empty text that was.
    """

    def __init__(
        self,
        signer: ThinkingSigner,
        thinking: bool,
        omit_thinking: bool,
        tool_use_ids: Callable[[], str],
    ) -> None:
        self._signer = signer
        self._tool_use_ids = tool_use_ids
        self._thinking_due = thinking
        self._omit = omit_thinking
        self._index = -1
        self._open: str | None = None
        self._thought: list[str] = []

    def add(
        self, event: ThinkingChunk | TextChunk | ToolCallStart | ToolCallDelta
    ) -> Iterator[StreamEvent]:
        """The stream events for one piece of the engine's reply."""
        if isinstance(event, ThinkingChunk):
            return self._thinking(event.text)
        if isinstance(event, TextChunk):
            return self._text(event.text)
        if isinstance(event, ToolCallStart):
            return self._tool_use(self._tool_use_ids(), event.name)
        return self._tool_input(event.partial_json)

    def _thinking(self, text: str) -> Iterator[StreamEvent]:
        if self._open != "thinking":
            yield from self._close_open()
            yield from self._start_thinking()
        self._thought.append(text)
        if not self._omit:
            yield ContentBlockDeltaEvent(index=self._index, delta=ThinkingDelta(thinking=text))

    def _text(self, text: str) -> Iterator[StreamEvent]:
        if self._open != "text":
            yield from self._start_after_thinking("text", TextBlock(text=""))
        yield ContentBlockDeltaEvent(index=self._index, delta=TextDelta(text=text))

    def _tool_use(self, tool_use_id: str, name: str) -> Iterator[StreamEvent]:
        block = ToolUseBlock(id=tool_use_id, name=name, input={})
        yield from self._start_after_thinking("tool_use", block)

    def _tool_input(self, partial_json: str) -> Iterator[StreamEvent]:
        delta = InputJSONDelta(partial_json=partial_json)
        yield ContentBlockDeltaEvent(index=self._index, delta=delta)

    def finish(self) -> Iterator[StreamEvent]:
        """At the end of the reply: emit a thinking block still due, and close the open block."""
        if self._open is None and self._thinking_due:
            yield from self._start_thinking()
        yield from self._close_open()

    def _close_open(self) -> Iterator[StreamEvent]:
        if self._open == "thinking":
            shown = "" if self._omit else "".join(self._thought)
            signature = self._signer.sign(shown)
            yield ContentBlockDeltaEvent(
                index=self._index, delta=SignatureDelta(signature=signature)
            )
        if self._open is not None:
            yield ContentBlockStopEvent(index=self._index)
        self._open = None

    def _start_after_thinking(
        self, kind: str, block: TextBlock | ToolUseBlock
    ) -> Iterator[StreamEvent]:
        """Open an answer block, first emitting the thinking block if one is still due."""
        yield from self._close_open()
        if self._thinking_due:
            yield from self._start_thinking()
            yield from self._close_open()
        self._index += 1
        self._open = kind
        yield ContentBlockStartEvent(index=self._index, content_block=block)

    def _start_thinking(self) -> Iterator[StreamEvent]:
        self._thinking_due = False
        self._index += 1
        self._open = "thinking"
        self._thought = []
        yield ContentBlockStartEvent(
            index=self._index, content_block=ThinkingBlock(thinking="", signature="")
        )
