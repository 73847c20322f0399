"""Hybrid reasoning on the server side: which budget a request gets, and its thinking blocks.

Budgets are enforced by the engine; here they are resolved from the request (`enabled` with
`budget_tokens`, or `adaptive` with `output_config.effort`) and checked by Anthropic's rules.
Thinking blocks sent back by clients must carry a signature this server made.
"""

from __future__ import annotations

from collections.abc import Iterator, Set

from tercet.server.signatures import ThinkingSigner
from tercet.wire.content import (
    TextBlock,
    ThinkingBlock,
    ThinkingBlockParam,
    ToolResultBlockParam,
    ToolUseBlock,
)
from tercet.wire.errors import InvalidRequestError
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
from tercet.wire.requests import (
    MessageCreateRequest,
    PromptParams,
    ThinkingAdaptive,
    ThinkingEnabled,
)

INTERLEAVED_THINKING_BETA = "interleaved-thinking-2025-05-14"
MINIMUM_BUDGET = 1024

# Adaptive thinking on models that cannot judge for themselves how long to think: a fixed
# budget per effort level (the default effort is "high", as on Anthropic's API).
EFFORT_BUDGETS = {"low": 1024, "medium": 2048, "high": 4096, "xhigh": 8192, "max": 16384}


def thinking_requested(request: PromptParams) -> bool:
    return isinstance(request.thinking, ThinkingEnabled | ThinkingAdaptive)


def thinking_budget(
    request: MessageCreateRequest, betas: Set[str], *, adaptive_model: bool
) -> int | None:
    """Tokens of thinking this request may use, or None when thinking is off.

    Adaptive thinking lets the model judge whether to think. A model with no thinking of its
    own (`adaptive_model` false) cannot judge that, so it is not asked to think at all.

    A request that returns tool results continues the assistant's turn: the model thinks again
    there only with interleaved thinking (the beta, or adaptive thinking, where it is built in).
    """
    config = request.thinking
    interleaved = INTERLEAVED_THINKING_BETA in betas or isinstance(config, ThinkingAdaptive)
    if config is not None and _continues_turn(request) and not interleaved:
        return None
    if isinstance(config, ThinkingEnabled):
        if config.budget_tokens < MINIMUM_BUDGET:
            raise InvalidRequestError(
                f"thinking.enabled.budget_tokens: Input should be greater than or equal to {MINIMUM_BUDGET}"
            )
        if config.budget_tokens >= request.max_tokens and not interleaved:
            raise InvalidRequestError(
                "`max_tokens` must be greater than `thinking.budget_tokens`. Please consult our "
                "documentation on extended thinking."
            )
        return min(config.budget_tokens, request.max_tokens - 1)
    if isinstance(config, ThinkingAdaptive):
        if not adaptive_model:
            return None
        effort = (request.output_config.effort if request.output_config else None) or "high"
        # Leave half of max_tokens for the answer.
        return max(1, min(EFFORT_BUDGETS[effort], request.max_tokens // 2))
    return None


def _continues_turn(request: MessageCreateRequest) -> bool:
    last = request.messages[-1] if request.messages else None
    return (
        last is not None
        and last.role == "user"
        and not isinstance(last.content, str)
        and any(isinstance(b, ToolResultBlockParam) for b in last.content)
    )


def check_thinking_blocks(request: PromptParams, signer: ThinkingSigner) -> None:
    """Every thinking block sent back must be one this server signed, unmodified."""
    for index, message in enumerate(request.messages):
        if isinstance(message.content, str):
            continue
        for position, block in enumerate(message.content):
            if isinstance(block, ThinkingBlockParam) and not signer.verify(
                block.thinking, block.signature
            ):
                raise InvalidRequestError(
                    f"messages.{index}.content.{position}: Invalid `signature` in `thinking` block"
                )


class BlockWriter:
    """Turns thinking, answer text and tool calls into content-block events, indexes in order.

    With thinking on, the reply always starts with a thinking block (empty if the model wrote
    none), closed by a `signature_delta`. With `display: "omitted"` its text is not sent, and the
    signature covers the empty text that was.
    """

    def __init__(self, signer: ThinkingSigner, thinking: bool, omit_thinking: bool) -> None:
        self._signer = signer
        self._thinking_due = thinking
        self._omit = omit_thinking
        self._index = -1
        self._open: str | None = None
        self._thought: list[str] = []

    def thinking(self, text: str) -> Iterator[StreamEvent]:
        if self._open != "thinking":
            yield from self._close_open()
            yield from self._start_thinking()
        self._thought.append(text)
        if not self._omit:
            yield ContentBlockDeltaEvent(index=self._index, delta=ThinkingDelta(thinking=text))

    def text(self, text: str) -> Iterator[StreamEvent]:
        if self._open != "text":
            yield from self._close_open()
            if self._thinking_due:
                yield from self._start_thinking()
                yield from self._close_open()
            self._index += 1
            self._open = "text"
            yield ContentBlockStartEvent(index=self._index, content_block=TextBlock(text=""))
        yield ContentBlockDeltaEvent(index=self._index, delta=TextDelta(text=text))

    def tool_use(self, tool_use_id: str, name: str) -> Iterator[StreamEvent]:
        yield from self._close_open()
        if self._thinking_due:
            yield from self._start_thinking()
            yield from self._close_open()
        self._index += 1
        self._open = "tool_use"
        block = ToolUseBlock(id=tool_use_id, name=name, input={})
        yield ContentBlockStartEvent(index=self._index, content_block=block)

    def tool_input(self, partial_json: str) -> Iterator[StreamEvent]:
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

    def _start_thinking(self) -> Iterator[StreamEvent]:
        self._thinking_due = False
        self._index += 1
        self._open = "thinking"
        self._thought = []
        yield ContentBlockStartEvent(
            index=self._index, content_block=ThinkingBlock(thinking="", signature="")
        )
