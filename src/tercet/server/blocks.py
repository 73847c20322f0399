"""From engine events to content-block events: one block open at a time, indexes in order."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from tercet.engine.base import TextChunk, ThinkingChunk, ToolCallDelta, ToolCallStart
from tercet.server.signatures import ThinkingSigner
from tercet.wire.content import (
    ContentBlockParam,
    MCPToolResultBlock,
    MCPToolResultBlockParam,
    MCPToolUseBlock,
    MCPToolUseBlockParam,
    ServerToolResultBlock,
    ServerToolResultBlockParam,
    ServerToolUseBlock,
    ServerToolUseBlockParam,
    TextBlock,
    TextBlockParam,
    ThinkingBlock,
    ToolUseBlock,
)
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

    A call of one of `hidden_tools` (the server's own, such as `end_conversation`) sends no
    event at all: the writer keeps it for `hidden_call` instead.
    """

    def __init__(
        self,
        signer: ThinkingSigner,
        thinking: bool,
        omit_thinking: bool,
        tool_use_ids: Callable[[], str],
        server_tools: frozenset[str] = frozenset(),
        server_tool_use_ids: Callable[[], str] = lambda: "",
        mcp_tools: Mapping[str, tuple[str, str]] | None = None,
        mcp_tool_use_ids: Callable[[], str] = lambda: "",
        hidden_tools: frozenset[str] = frozenset(),
    ) -> None:
        self._signer = signer
        self._tool_use_ids = tool_use_ids
        self._server_tools = server_tools
        self._server_tool_use_ids = server_tool_use_ids
        # Model-facing name -> (MCP server, the tool's own name), which the client sees.
        self._mcp_tools = mcp_tools or {}
        self._mcp_tool_use_ids = mcp_tool_use_ids
        self._hidden_tools = hidden_tools
        # The reply's latest call when it was of a hidden tool: its name and input so far.
        self._hidden: tuple[str, list[str]] | None = None
        self._hiding = False  # the call being written is a hidden one
        # What the reply holds so far, as blocks a client would send back (for continuing it
        # after a server tool ran); thinking is not kept.
        self.written: list[ContentBlockParam] = []
        self._input = ""
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
            return self._tool_use(event.name)
        return self._tool_input(event.partial_json)

    def server_call(self) -> ServerToolUseBlockParam | MCPToolUseBlockParam | None:
        """The server tool or MCP call the reply ended with, its input complete, if it did.

        An MCP call keeps the model-facing name here (the continuation is rendered with it)."""
        last = self.written[-1] if self.written else None
        if not isinstance(last, ServerToolUseBlockParam | MCPToolUseBlockParam):
            return None
        try:
            arguments = json.loads(self._input)
        except ValueError:
            arguments = None
        last.input = arguments if isinstance(arguments, dict) else {}
        return last

    def hidden_call(self) -> tuple[str, dict[str, Any]] | None:
        """The hidden tool's call the reply ended with (its last call), as its name and input
        (`{}` where the input is not a JSON object), if it did."""
        if self._hidden is None:
            return None
        name, pieces = self._hidden
        try:
            arguments = json.loads("".join(pieces))
        except ValueError:
            arguments = None
        return name, arguments if isinstance(arguments, dict) else {}

    def result(self, block: ServerToolResultBlock | MCPToolResultBlock) -> Iterator[StreamEvent]:
        """A server tool's or MCP tool's result, as one whole block."""
        yield from self._close_open()
        self._index += 1
        yield ContentBlockStartEvent(index=self._index, content_block=block)
        yield ContentBlockStopEvent(index=self._index)
        if isinstance(block, MCPToolResultBlock):
            content = block.content
            self.written.append(
                MCPToolResultBlockParam(
                    type="mcp_tool_result",
                    tool_use_id=block.tool_use_id,
                    is_error=block.is_error,
                    content=content
                    if isinstance(content, str)
                    else [TextBlockParam(type="text", text=b.text) for b in content],
                )
            )
            return
        self.written.append(
            ServerToolResultBlockParam(
                type=block.type, tool_use_id=block.tool_use_id, content=block.content
            )
        )

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
            self.written.append(TextBlockParam(type="text", text=""))
        last = self.written[-1]
        assert isinstance(last, TextBlockParam)
        last.text += text
        yield ContentBlockDeltaEvent(index=self._index, delta=TextDelta(text=text))

    def _tool_use(self, name: str) -> Iterator[StreamEvent]:
        self._hiding = name in self._hidden_tools
        # The latest call decides: a hidden call followed by another call is not the end.
        self._hidden = (name, []) if self._hiding else None
        if self._hiding:
            return
        self._input = ""
        block: ToolUseBlock | ServerToolUseBlock | MCPToolUseBlock
        if name in self._mcp_tools:
            server, tool = self._mcp_tools[name]
            block = MCPToolUseBlock(
                id=self._mcp_tool_use_ids(), name=tool, server_name=server, input={}
            )
            self.written.append(
                MCPToolUseBlockParam(
                    type="mcp_tool_use", id=block.id, name=name, server_name=server, input={}
                )
            )
        elif name in self._server_tools:
            block = ServerToolUseBlock(id=self._server_tool_use_ids(), name=name, input={})
            self.written.append(
                ServerToolUseBlockParam(type="server_tool_use", id=block.id, name=name, input={})
            )
        else:
            block = ToolUseBlock(id=self._tool_use_ids(), name=name, input={})
        yield from self._start_after_thinking("tool_use", block)

    def _tool_input(self, partial_json: str) -> Iterator[StreamEvent]:
        if self._hiding:
            assert self._hidden is not None
            self._hidden[1].append(partial_json)
            return
        self._input += partial_json
        delta = InputJSONDelta(partial_json=partial_json)
        yield ContentBlockDeltaEvent(index=self._index, delta=delta)

    def close(self) -> Iterator[StreamEvent]:
        """Close the open block (before the server adds one of its own)."""
        yield from self._close_open()

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
        self, kind: str, block: TextBlock | ToolUseBlock | ServerToolUseBlock | MCPToolUseBlock
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
