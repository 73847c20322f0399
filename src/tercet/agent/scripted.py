"""`ScriptedModel`: replies from a script, for testing code built on the agent.

    model = ScriptedModel([
        turn(tool_use("bash", {"command": "pytest -q"})),
        turn("All tests pass."),
    ])
    result = await Agent(model, AgentConfig(tools=[BashTool()])).run_until_done("Run the tests")
    assert model.requests[1].messages[-1]["content"][0]["type"] == "tool_result"

Each request takes the next reply; a reply may be a function of the request. Usage is
estimated from the request's size (4 characters a token) unless a turn sets it, and a
`tool_use` without an id gets one derived from the conversation, so the same conversation
always gets the same ids (a resumed run sees the ids the uninterrupted run would have seen).
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import AsyncGenerator, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from tercet.agent.events import TextDelta, ThinkingDelta, Usage
from tercet.agent.model import ModelReply, ModelRequest, ModelStreamItem


@dataclass(frozen=True)
class ScriptedTurn:
    """One scripted reply. `stop_reason` None: "tool_use" when a block calls a tool, else
    "end_turn". `usage` None: estimated from the sizes of the request and the reply."""

    content: list[dict[str, Any]]
    stop_reason: str | None = None
    usage: Usage | None = None


Reply = ScriptedTurn | str | Callable[[ModelRequest], "ScriptedTurn | str"]


def text(value: str) -> dict[str, Any]:
    """A text block."""
    return {"type": "text", "text": value}


def tool_use(name: str, input: dict[str, Any], id: str | None = None) -> dict[str, Any]:
    """A tool call block (an id is made up when the reply is sent, if not given)."""
    block: dict[str, Any] = {"type": "tool_use", "name": name, "input": input}
    return block if id is None else _with_id(block, id)


def thinking(value: str, signature: str = "scripted-signature") -> dict[str, Any]:
    """A thinking block with a (fake) signature."""
    return {"type": "thinking", "thinking": value, "signature": signature}


def turn(
    *blocks: dict[str, Any] | str,
    stop_reason: str | None = None,
    usage: Usage | None = None,
) -> ScriptedTurn:
    """A reply of `blocks`, strings being text blocks."""
    content = [text(b) if isinstance(b, str) else b for b in blocks]
    return ScriptedTurn(content, stop_reason, usage)


class ScriptExhausted(AssertionError):
    """The model was asked for more replies than its script holds."""


class ScriptedModel:
    """A `Model` that answers each request with the next reply of `replies` and records the
    requests it received (`requests`, deep copies). Replies name `model`, else the model the
    request asked for (as tercet's server does); `context_window` is what it says it takes."""

    def __init__(
        self,
        replies: Iterable[Reply],
        *,
        context_window: int | None = None,
        model: str | None = None,
    ) -> None:
        self.replies = list(replies)
        self.requests: list[ModelRequest] = []
        self.window = context_window
        self.model = model
        self.closed = False

    @property
    def remaining(self) -> int:
        """Replies not used yet."""
        return len(self.replies) - len(self.requests)

    async def stream(self, request: ModelRequest) -> AsyncGenerator[ModelStreamItem, None]:
        request = copy.deepcopy(request)
        index = len(self.requests)
        self.requests.append(request)
        if index >= len(self.replies):
            raise ScriptExhausted(f"the script has {len(self.replies)} replies; asked for more")
        reply = self.replies[index]
        if callable(reply):
            reply = reply(request)
        scripted = turn(reply) if isinstance(reply, str) else reply
        content = _with_ids(copy.deepcopy(scripted.content), request)
        for block in content:
            if block.get("type") == "text":
                for piece in re.findall(r"\s*\S+\s*", block["text"]):
                    yield TextDelta(piece)
            elif block.get("type") == "thinking":
                for piece in re.findall(r"\s*\S+\s*", block["thinking"]):
                    yield ThinkingDelta(piece)
        stop_reason = scripted.stop_reason
        if stop_reason is None:
            calls = any(block.get("type") == "tool_use" for block in content)
            stop_reason = "tool_use" if calls else "end_turn"
        usage = scripted.usage or Usage(
            input_tokens=_tokens(request.body()), output_tokens=max(1, _tokens(content))
        )
        name = self.model or request.model
        yield ModelReply(content, stop_reason, usage, name, f"msg_scripted_{index:04d}")

    async def context_window(self, model: str) -> int | None:
        return self.window

    async def aclose(self) -> None:
        self.closed = True


def _tokens(value: object) -> int:
    return len(json.dumps(value)) // 4


def _with_ids(content: list[dict[str, Any]], request: ModelRequest) -> list[dict[str, Any]]:
    """Give each tool_use without an id one that depends only on the conversation so far."""
    seed = hashlib.sha256(json.dumps(request.messages, sort_keys=True).encode()).hexdigest()
    return [
        _with_id(block, f"toolu_{seed[:16]}_{index}")
        if block.get("type") == "tool_use" and "id" not in block
        else block
        for index, block in enumerate(content)
    ]


def _with_id(block: dict[str, Any], id: str) -> dict[str, Any]:
    """`block` with `id` as its first key, as the API orders a tool_use block's fields."""
    return {"type": block["type"], "id": id, **{k: v for k, v in block.items() if k != "type"}}


__all__ = [
    "Reply",
    "ScriptExhausted",
    "ScriptedModel",
    "ScriptedTurn",
    "text",
    "thinking",
    "tool_use",
    "turn",
]
