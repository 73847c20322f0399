"""The agent's seam to a model: the `Model` protocol, and `AnthropicModel` over the Messages API.

A model takes a `ModelRequest` (a Messages API body) and streams `TextDelta`s and
`ThinkingDelta`s, then one `ModelReply`; one that streams over the wire yields a
`ReplyProgress` first, as the reply starts, so that a reply cut short still says what it used.
`AnthropicModel` speaks the API through the official SDK, so it works against tercet's server
and Anthropic's alike; `InProcessModel` (inprocess.py) serves the same API inside the process;
`ScriptedModel` (scripted.py) replies from a script, for tests.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import anthropic
import httpx2

from tercet.agent.events import TextDelta, ThinkingDelta, Usage


@dataclass(frozen=True)
class ModelRequest:
    """One Messages API request. Blocks are wire dicts; `thinking` and `tool_choice` are
    omitted when None."""

    model: str
    max_tokens: int
    messages: list[dict[str, Any]]
    system: list[dict[str, Any]] = field(default_factory=list)
    tools: list[dict[str, Any]] = field(default_factory=list)
    thinking: dict[str, Any] | None = None
    tool_choice: dict[str, Any] | None = None

    def body(self) -> dict[str, Any]:
        """The request body, as the API reads it (without `stream`)."""
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": self.max_tokens,
            "messages": self.messages,
        }
        if self.system:
            body["system"] = self.system
        if self.tools:
            body["tools"] = self.tools
        if self.thinking is not None:
            body["thinking"] = self.thinking
        if self.tool_choice is not None:
            body["tool_choice"] = self.tool_choice
        return body


@dataclass(frozen=True)
class ModelReply:
    """The model's whole reply: content blocks as wire dicts (thinking signatures kept)."""

    content: list[dict[str, Any]]
    stop_reason: str | None
    usage: Usage
    model: str = ""
    id: str = ""


@dataclass
class ReplyProgress:
    """How far a reply has streamed, for a consumer that stops reading before its
    `ModelReply` arrives (an interrupt, a budget, a cancelled task): the model yields it once,
    as the reply starts, and keeps it up to date until the reply ends.

    `prompt` is the server's own count of the prompt (the stream's message_start: exact).
    The output is counted from the stream, since the server says how much it wrote only at the
    end (message_delta): one token a delta received. That is an estimate: tercet's server sends
    a delta a generated token (but a few tokens in one while they might begin a stop sequence,
    and none for a token that is not yet whole text), Anthropic's API several tokens a delta,
    so against it the count is a lower bound. Tokens generated but still on their way are not
    counted: nobody saw them."""

    prompt: Usage
    deltas: int = 0  # content block deltas received: text, thinking and tool input
    model: str = ""
    id: str = ""

    @property
    def usage(self) -> Usage:
        """The reply's usage so far: the prompt's, and the output counted from the stream."""
        return replace(self.prompt, output_tokens=max(self.prompt.output_tokens, self.deltas))


ModelStreamItem = TextDelta | ThinkingDelta | ReplyProgress | ModelReply
EPHEMERAL = {"type": "ephemeral"}


def with_cache_breakpoints(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Copies of `messages` with `cache_control` on the last message, and on the last user
    message before the latest reply: where the previous request ended, so this one reads it
    back from the prompt cache. With the system prompt's and the tools' that makes four, the
    API's maximum. Thinking blocks and empty text cannot be marked; the block before is."""
    marked = list(messages)
    targets = {len(marked) - 1}
    latest_reply = max((i for i, m in enumerate(marked) if m["role"] == "assistant"), default=-1)
    targets.update([i for i in range(latest_reply) if marked[i]["role"] == "user"][-1:])
    for index in targets - {-1}:
        content = marked[index]["content"]
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else list(content)
        for position in reversed(range(len(blocks))):
            block = blocks[position]
            if (
                block.get("type") not in ("thinking", "redacted_thinking")
                and block.get("text") != ""
            ):
                blocks[position] = {**block, "cache_control": EPHEMERAL}
                break
        marked[index] = {**marked[index], "content": blocks}
    return marked


# The deltas that carry generated tokens (a signature or a citation is no token of the model's).
_TOKEN_DELTAS = frozenset({"text_delta", "thinking_delta", "input_json_delta"})


class ModelError(Exception):
    """A model call failed: the API answered with an error, or the connection broke."""


class Model(Protocol):
    """Where replies come from."""

    def stream(self, request: ModelRequest) -> AsyncGenerator[ModelStreamItem, None]:
        """Deltas as they come, then exactly one `ModelReply`; raises `ModelError` on failure.
        Before the first delta, optionally, a `ReplyProgress` the model keeps up to date."""
        ...

    async def context_window(self, model: str) -> int | None:
        """How many prompt tokens `model` takes, if the model says (None: unknown)."""
        ...

    async def aclose(self) -> None:
        """Release connections (and, in-process, the engine)."""
        ...


class AnthropicModel:
    """The Messages API through `anthropic.AsyncAnthropic`, streamed.

    `base_url` is tercet's server (for example "http://127.0.0.1:8080") or None for
    Anthropic's API (then the SDK reads ANTHROPIC_API_KEY / ANTHROPIC_BASE_URL). `betas` go in
    the `anthropic-beta` header (Anthropic's API wants "context-management-2025-06-27" for
    the memory tool); `extra_body` is merged into every request (sampling parameters, which the
    SDK no longer names, e.g. {"temperature": 0}).
    """

    def __init__(
        self,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        betas: Sequence[str] = (),
        extra_body: Mapping[str, Any] | None = None,
        max_retries: int = 2,
        timeout_s: float = 600.0,
        http_client: httpx2.AsyncClient | None = None,
    ) -> None:
        self.client = anthropic.AsyncAnthropic(
            base_url=base_url,
            api_key=api_key,
            max_retries=max_retries,
            timeout=timeout_s,
            http_client=http_client,
        )
        self.betas = tuple(betas)
        self.extra_body = dict(extra_body or {})

    async def stream(self, request: ModelRequest) -> AsyncGenerator[ModelStreamItem, None]:
        options: dict[str, Any] = {}
        if self.betas:
            options["extra_headers"] = {"anthropic-beta": ",".join(self.betas)}
        if self.extra_body:
            options["extra_body"] = self.extra_body
        try:
            async with self.client.messages.stream(**request.body(), **options) as stream:
                progress: ReplyProgress | None = None
                async for event in stream:
                    # The SDK passes each raw event on before the text or thinking it carries.
                    if event.type == "message_start":
                        started = event.message
                        usage = Usage.from_dict(started.usage.model_dump())
                        progress = ReplyProgress(usage, model=started.model, id=started.id)
                        yield progress
                    elif event.type == "content_block_delta" and progress is not None:
                        if event.delta.type in _TOKEN_DELTAS:
                            progress.deltas += 1
                    elif event.type == "text":
                        yield TextDelta(event.text)
                    elif event.type == "thinking":
                        yield ThinkingDelta(event.thinking)
                message = await stream.get_final_message()
        except anthropic.APIStatusError as exc:
            raise ModelError(f"the model answered {exc.status_code}: {_error_text(exc)}") from exc
        except anthropic.APIError as exc:
            raise ModelError(f"the model call failed: {exc}") from exc
        yield ModelReply(
            content=[_block_param(block) for block in message.content],
            stop_reason=message.stop_reason,
            usage=Usage.from_dict(message.usage.model_dump()),
            model=message.model,
            id=message.id,
        )

    async def context_window(self, model: str) -> int | None:
        try:
            info = await self.client.models.retrieve(model)
        except anthropic.APIError:
            return None
        window = getattr(info, "max_input_tokens", None)
        return window if isinstance(window, int) and window > 0 else None

    async def aclose(self) -> None:
        await self.client.close()


def _block_param(block: Any) -> dict[str, Any]:
    """A reply's block as it goes back in the history: the fields the API sent, without nulls
    at the top level (a tool's input is kept exactly, nulls and all)."""
    data: dict[str, Any] = block.model_dump(mode="json", exclude_unset=True)
    return {key: value for key, value in data.items() if value is not None}


def _error_text(exc: anthropic.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and "message" in error:
            return f"{error.get('type', 'error')}: {error['message']}"
    return str(exc.message)
