"""Server-sent stream events, and the accumulator that folds them back into a `Message`.

The server produces every response as a sequence of these events; the non-streaming answer is
the same events accumulated, so both paths always agree.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import Field

from tercet.wire.base import ResponseModel
from tercet.wire.content import (
    ContentBlock,
    MCPToolUseBlock,
    ServerToolUseBlock,
    TextBlock,
    ThinkingBlock,
    ToolUseBlock,
)
from tercet.wire.errors import ErrorDetail
from tercet.wire.responses import (
    Container,
    Message,
    OutputTokensDetails,
    RefusalStopDetails,
    StopReason,
)


class TextDelta(ResponseModel):
    type: Literal["text_delta"] = "text_delta"
    text: str


class InputJSONDelta(ResponseModel):
    type: Literal["input_json_delta"] = "input_json_delta"
    partial_json: str


class ThinkingDelta(ResponseModel):
    type: Literal["thinking_delta"] = "thinking_delta"
    thinking: str


class SignatureDelta(ResponseModel):
    type: Literal["signature_delta"] = "signature_delta"
    signature: str


BlockDelta = Annotated[
    TextDelta | InputJSONDelta | ThinkingDelta | SignatureDelta, Field(discriminator="type")
]


class MessageStartEvent(ResponseModel):
    type: Literal["message_start"] = "message_start"
    message: Message


class ContentBlockStartEvent(ResponseModel):
    type: Literal["content_block_start"] = "content_block_start"
    index: int
    content_block: ContentBlock


class ContentBlockDeltaEvent(ResponseModel):
    type: Literal["content_block_delta"] = "content_block_delta"
    index: int
    delta: BlockDelta


class ContentBlockStopEvent(ResponseModel):
    type: Literal["content_block_stop"] = "content_block_stop"
    index: int


class MessageDelta(ResponseModel):
    stop_reason: StopReason | None = None
    stop_sequence: str | None = None
    stop_details: RefusalStopDetails | None = None
    container: Container | None = None


class MessageDeltaUsage(ResponseModel):
    """Cumulative usage at the end of the stream."""

    output_tokens: int
    input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    output_tokens_details: OutputTokensDetails | None = None


class MessageDeltaEvent(ResponseModel):
    type: Literal["message_delta"] = "message_delta"
    delta: MessageDelta
    usage: MessageDeltaUsage


class MessageStopEvent(ResponseModel):
    type: Literal["message_stop"] = "message_stop"


class PingEvent(ResponseModel):
    type: Literal["ping"] = "ping"


class ErrorEvent(ResponseModel):
    type: Literal["error"] = "error"
    error: ErrorDetail


StreamEvent = Annotated[
    MessageStartEvent
    | ContentBlockStartEvent
    | ContentBlockDeltaEvent
    | ContentBlockStopEvent
    | MessageDeltaEvent
    | MessageStopEvent
    | PingEvent
    | ErrorEvent,
    Field(discriminator="type"),
]


class MessageAccumulator:
    """Folds stream events into the final `Message`, enforcing the stream's ordering rules."""

    def __init__(self) -> None:
        self._message: Message | None = None
        self._partial_json: dict[int, str] = {}
        self._open: int | None = None

    @property
    def message(self) -> Message:
        if self._message is None:
            raise RuntimeError("no message_start event was seen")
        return self._message

    def add(self, event: StreamEvent) -> None:
        if isinstance(event, MessageStartEvent):
            if self._message is not None:
                raise RuntimeError("message_start seen twice")
            self._message = event.message.model_copy(deep=True)
            return
        if isinstance(event, PingEvent | MessageStopEvent | ErrorEvent):
            return
        message = self.message
        if isinstance(event, ContentBlockStartEvent):
            if self._open is not None or event.index != len(message.content):
                raise RuntimeError(f"content block {event.index} started out of order")
            message.content.append(event.content_block.model_copy(deep=True))
            self._open = event.index
        elif isinstance(event, ContentBlockDeltaEvent):
            self._apply_delta(message.content[self._check_open(event.index)], event)
        elif isinstance(event, ContentBlockStopEvent):
            block = message.content[self._check_open(event.index)]
            if isinstance(block, ToolUseBlock | ServerToolUseBlock | MCPToolUseBlock):
                raw = self._partial_json.pop(event.index, "")
                block.input = _parse_input(raw) if raw else block.input
            self._open = None
        elif isinstance(event, MessageDeltaEvent):
            message.stop_reason = event.delta.stop_reason
            message.stop_sequence = event.delta.stop_sequence
            message.stop_details = event.delta.stop_details
            if event.delta.container is not None:
                message.container = event.delta.container
            usage = message.usage
            usage.output_tokens = event.usage.output_tokens
            if event.usage.input_tokens is not None:
                usage.input_tokens = event.usage.input_tokens
            if event.usage.cache_creation_input_tokens is not None:
                usage.cache_creation_input_tokens = event.usage.cache_creation_input_tokens
            if event.usage.cache_read_input_tokens is not None:
                usage.cache_read_input_tokens = event.usage.cache_read_input_tokens
            if event.usage.output_tokens_details is not None:
                usage.output_tokens_details = event.usage.output_tokens_details

    def _check_open(self, index: int) -> int:
        if self._open != index:
            raise RuntimeError(f"content block {index} is not the open block")
        return index

    def _apply_delta(self, block: ContentBlock, event: ContentBlockDeltaEvent) -> None:
        delta = event.delta
        if isinstance(delta, TextDelta) and isinstance(block, TextBlock):
            block.text += delta.text
        elif isinstance(delta, ThinkingDelta) and isinstance(block, ThinkingBlock):
            block.thinking += delta.thinking
        elif isinstance(delta, SignatureDelta) and isinstance(block, ThinkingBlock):
            block.signature = delta.signature
        elif isinstance(delta, InputJSONDelta) and isinstance(
            block, ToolUseBlock | ServerToolUseBlock | MCPToolUseBlock
        ):
            self._partial_json[event.index] = (
                self._partial_json.get(event.index, "") + delta.partial_json
            )
        else:
            raise RuntimeError(f"{delta.type} does not apply to a {block.type} block")


def _parse_input(raw: str) -> dict[str, Any]:
    """A tool input from its streamed JSON; a call cut short by max_tokens leaves it empty."""
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
