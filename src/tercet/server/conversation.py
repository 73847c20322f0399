"""From a validated request body to an engine `Conversation`, enforcing the API's message rules.

Error messages keep Anthropic's wording and `messages.N` paths, so clients that match on them
(Claude Code does) behave as they do against the real API.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TypeVar

from tercet.cache.breakpoints import find_breakpoints
from tercet.engine.base import Conversation, Turn
from tercet.server.client_tools import offered_tools
from tercet.wire.content import (
    ASSISTANT_BLOCK_TYPES,
    USER_BLOCK_TYPES,
    ContentBlockParam,
    TextBlockParam,
    ToolResultBlockParam,
    ToolUseBlockParam,
)
from tercet.wire.errors import InvalidRequestError
from tercet.wire.requests import CustomToolParam, MessageParam, PromptParams

# Claude Code's first system block: a per-request attribution line that Anthropic strips by
# position. Keeping it would change the prompt on every request, and so break every cached
# prefix after it, for nothing.
ATTRIBUTION_PREFIX = "x-anthropic-billing-header:"


def build_conversation(
    request: PromptParams,
    *,
    cache_scope: str = "",
    extra_tools: Sequence[CustomToolParam] = (),
) -> Conversation:
    """Check the message rules and merge same-role neighbours; raises `InvalidRequestError`.

    `cache_scope` is who the request is from: cached prefixes are shared only within it.
    `extra_tools` (the MCP connector's) are offered after the request's own."""
    if not request.messages:
        raise InvalidRequestError("messages: at least one message is required")
    turns: list[Turn] = []
    origins: list[int] = []  # the index in `messages` of each merged turn's first message
    for index, message in enumerate(request.messages):
        blocks = _blocks(message, index)
        if turns and turns[-1].role == message.role:
            turns[-1] = Turn(message.role, [*turns[-1].blocks, *blocks])
        else:
            turns.append(Turn(message.role, blocks))
            origins.append(index)
    spoken = [(t, i) for t, i in zip(turns, origins, strict=True) if t.role != "system"]
    if not spoken:
        raise InvalidRequestError("messages: at least one user or assistant message is required")
    if spoken[0][0].role != "user":
        raise InvalidRequestError('messages: first message must use the "user" role')
    _check_tool_pairing(spoken)
    last = turns[-1]
    if last.role == "assistant" and _ends_with_whitespace(last.blocks):
        raise InvalidRequestError(
            "messages: final assistant content cannot end with trailing whitespace"
        )
    conversation = Conversation(
        system=_system_blocks(request),
        turns=turns,
        tools=[*offered_tools(request.tools), *extra_tools],
        cache_scope=cache_scope,
    )
    return replace(conversation, breakpoints=find_breakpoints(conversation, request.cache_control))


def _blocks(message: MessageParam, index: int) -> list[ContentBlockParam]:
    # An empty assistant turn is allowed: it is an empty prefill.
    if not message.content and message.role != "assistant":
        raise InvalidRequestError(
            f"messages.{index}: {message.role} messages must have non-empty content"
        )
    if isinstance(message.content, str):
        return [TextBlockParam(type="text", text=message.content)] if message.content else []
    allowed = {"user": USER_BLOCK_TYPES, "assistant": ASSISTANT_BLOCK_TYPES, "system": {"text"}}
    for position, block in enumerate(message.content):
        if block.type not in allowed[message.role]:
            raise InvalidRequestError(
                f"messages.{index}.content.{position}: a {message.role} message cannot contain "
                f"a `{block.type}` block"
            )
        if isinstance(block, TextBlockParam) and not block.text:
            raise InvalidRequestError(
                f"messages.{index}.content.{position}: text content blocks must be non-empty"
            )
    return list(message.content)


def _check_tool_pairing(spoken: Sequence[tuple[Turn, int]]) -> None:
    """Every `tool_use` is answered in the next user turn, and every `tool_result` answers one."""
    for position, (turn, index) in enumerate(spoken):
        if turn.role != "user":
            continue
        previous = spoken[position - 1][0] if position else None
        asked = [
            b.id for b in (previous.blocks if previous else []) if isinstance(b, ToolUseBlockParam)
        ]
        answered = [b.tool_use_id for b in turn.blocks if isinstance(b, ToolResultBlockParam)]
        unexpected = [a for a in answered if a not in asked]
        if unexpected:
            raise InvalidRequestError(
                f"messages.{index}.content: unexpected `tool_use_id` found in `tool_result` "
                f"blocks: {', '.join(unexpected)}. Each `tool_result` block must have a "
                "corresponding `tool_use` block in the previous message."
            )
        missing = [a for a in asked if a not in answered]
        if missing:
            raise InvalidRequestError(
                f"messages.{spoken[position - 1][1]}: `tool_use` ids were found without "
                f"`tool_result` blocks immediately after: {', '.join(missing)}. Each `tool_use` "
                "block must have a corresponding `tool_result` block in the next message."
            )


def _ends_with_whitespace(blocks: Sequence[ContentBlockParam]) -> bool:
    last = blocks[-1] if blocks else None
    return isinstance(last, TextBlockParam) and last.text != last.text.rstrip()


def _system_blocks(request: PromptParams) -> list[TextBlockParam]:
    if not request.system:
        return []
    if isinstance(request.system, str):
        return [TextBlockParam(type="text", text=request.system)]
    blocks = list(request.system)
    if blocks and blocks[0].text.startswith(ATTRIBUTION_PREFIX):
        blocks = blocks[1:]
    return blocks


def latest_turn(request: PromptParams) -> tuple[str, str]:
    """The conversation before the latest user turn (as a transcript), and that turn's text
    (its text blocks and tool results): what the classifiers judge and the audit log keeps."""
    messages = request.messages
    last_user = _last_user_index(messages)
    if last_user is None:
        return "", ""
    earlier = [f"{m.role.capitalize()}: {_text_of(m.content)}" for m in messages[:last_user]]
    return "\n\n".join(earlier), _text_of(messages[last_user].content)


def latest_user_text(request: PromptParams) -> str:
    """`latest_turn`'s second half alone (the audit log's, on every request: no transcript)."""
    last_user = _last_user_index(request.messages)
    return "" if last_user is None else _text_of(request.messages[last_user].content)


def _last_user_index(messages: Sequence[MessageParam]) -> int | None:
    return next((i for i in range(len(messages) - 1, -1, -1) if messages[i].role == "user"), None)


def _text_of(content: str | Sequence[ContentBlockParam]) -> str:
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for block in content:
        if isinstance(block, TextBlockParam):
            parts.append(block.text)
        elif isinstance(block, ToolResultBlockParam):
            inner = block.content
            if isinstance(inner, str):
                parts.append(inner)
            else:
                parts.extend(b.text for b in inner if isinstance(b, TextBlockParam))
    return "\n".join(parts)


PromptRequest = TypeVar("PromptRequest", bound=PromptParams)


def with_system_text(request: PromptRequest, text: str) -> PromptRequest:
    """`request` with `text` as one more text block at the end of its system prompt (a
    server-side instruction: the spotlight's, end_conversation's)."""
    system = request.system
    if system is None:
        blocks: list[TextBlockParam] = []
    elif isinstance(system, str):
        blocks = [TextBlockParam(type="text", text=system)]
    else:
        blocks = list(system)
    blocks.append(TextBlockParam(type="text", text=text))
    return request.model_copy(update={"system": blocks})
