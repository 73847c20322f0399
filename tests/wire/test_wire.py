import pytest
from pydantic import ValidationError

from tercet.wire.content import TextBlock, ToolUseBlock
from tercet.wire.events import (
    ContentBlockDeltaEvent,
    ContentBlockStartEvent,
    ContentBlockStopEvent,
    InputJSONDelta,
    MessageAccumulator,
    MessageDelta,
    MessageDeltaEvent,
    MessageDeltaUsage,
    MessageStartEvent,
    TextDelta,
)
from tercet.wire.requests import BuiltinToolParam, CustomToolParam, MessageCreateRequest
from tercet.wire.responses import Message, Usage


def start() -> MessageStartEvent:
    return MessageStartEvent(
        message=Message(
            id="msg_1", model="m", content=[], usage=Usage(input_tokens=3, output_tokens=0)
        )
    )


def test_unknown_fields_and_mid_conversation_system_turns_are_accepted() -> None:
    request = MessageCreateRequest.model_validate(
        {
            "model": "claude-x",
            "max_tokens": 5,
            "context_management": {"edits": []},
            "brand_new_field": 1,
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "system", "content": [{"type": "text", "text": "be brief"}]},
            ],
        }
    )
    assert request.messages[1].role == "system"


def test_unknown_block_type_is_rejected() -> None:
    with pytest.raises(ValidationError):
        MessageCreateRequest.model_validate(
            {
                "model": "m",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": [{"type": "hologram"}]}],
            }
        )


def test_tools_are_told_apart_by_type() -> None:
    request = MessageCreateRequest.model_validate(
        {
            "model": "m",
            "max_tokens": 5,
            "messages": [{"role": "user", "content": "x"}],
            "tools": [
                {"name": "get", "input_schema": {"type": "object"}},
                {"type": "bash_20250124", "name": "bash"},
            ],
        }
    )
    assert isinstance(request.tools[0], CustomToolParam)
    assert isinstance(request.tools[1], BuiltinToolParam)


def test_accumulator_builds_text_and_tool_blocks() -> None:
    acc = MessageAccumulator()
    acc.add(start())
    acc.add(ContentBlockStartEvent(index=0, content_block=TextBlock(text="")))
    acc.add(ContentBlockDeltaEvent(index=0, delta=TextDelta(text="Hel")))
    acc.add(ContentBlockDeltaEvent(index=0, delta=TextDelta(text="lo")))
    acc.add(ContentBlockStopEvent(index=0))
    acc.add(
        ContentBlockStartEvent(
            index=1, content_block=ToolUseBlock(id="toolu_1", name="f", input={})
        )
    )
    acc.add(ContentBlockDeltaEvent(index=1, delta=InputJSONDelta(partial_json='{"a": ')))
    acc.add(ContentBlockDeltaEvent(index=1, delta=InputJSONDelta(partial_json="1}")))
    acc.add(ContentBlockStopEvent(index=1))
    acc.add(
        MessageDeltaEvent(
            delta=MessageDelta(stop_reason="tool_use"), usage=MessageDeltaUsage(output_tokens=7)
        )
    )
    message = acc.message
    assert message.content[0] == TextBlock(text="Hello")
    assert message.content[1] == ToolUseBlock(id="toolu_1", name="f", input={"a": 1})
    assert (message.stop_reason, message.usage.output_tokens, message.usage.input_tokens) == (
        "tool_use",
        7,
        3,
    )


def test_accumulator_rejects_out_of_order_blocks() -> None:
    acc = MessageAccumulator()
    acc.add(start())
    with pytest.raises(RuntimeError):
        acc.add(ContentBlockStartEvent(index=1, content_block=TextBlock(text="")))
    acc.add(ContentBlockStartEvent(index=0, content_block=TextBlock(text="")))
    with pytest.raises(RuntimeError):
        acc.add(ContentBlockStartEvent(index=1, content_block=TextBlock(text="")))


def test_accumulator_needs_message_start_first() -> None:
    with pytest.raises(RuntimeError):
        MessageAccumulator().add(ContentBlockStopEvent(index=0))


def test_every_documented_input_block_parses() -> None:
    blocks = [
        {"type": "text", "text": "t", "cache_control": {"type": "ephemeral", "ttl": "1h"}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
        {"type": "image", "source": {"type": "file", "file_id": "file_1"}},
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "d"}},
        {
            "type": "document",
            "source": {"type": "content", "content": [{"type": "text", "text": "c"}]},
        },
        {"type": "document", "source": {"type": "file", "file_id": "file_2"}, "title": "T"},
        {
            "type": "search_result",
            "source": "s",
            "title": "t",
            "content": [{"type": "text", "text": "x"}],
        },
        {
            "type": "tool_result",
            "tool_use_id": "toolu_1",
            "content": [{"type": "text", "text": "r"}],
            "is_error": True,
        },
        {"type": "container_upload", "file_id": "file_3"},
    ]
    request = MessageCreateRequest.model_validate(
        {"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": blocks}]}
    )
    assert [b.type for b in request.messages[0].content] == [b["type"] for b in blocks]  # type: ignore[union-attr]


def test_every_output_block_serialises_with_its_type() -> None:
    from tercet.wire.content import MCPToolResultBlock, MCPToolUseBlock, ServerToolResultBlock

    message = Message(
        id="msg_1",
        model="m",
        usage=Usage(input_tokens=1, output_tokens=1),
        content=[
            TextBlock(text="a"),
            MCPToolUseBlock(id="mcptoolu_1", name="echo", server_name="s", input={}),
            MCPToolResultBlock(tool_use_id="mcptoolu_1", content="ok"),
            ServerToolResultBlock(
                type="code_execution_tool_result", tool_use_id="srvtoolu_1", content={"stdout": ""}
            ),
        ],
    )
    again = Message.model_validate_json(message.model_dump_json())
    assert again == message
