"""Hybrid reasoning on the server side: which budget a request gets, and its thinking blocks.

Budgets are enforced by the engine; here they are resolved from the request (`enabled` with
`budget_tokens`, or `adaptive` with `output_config.effort`) and checked by Anthropic's rules.
Thinking blocks sent back by clients must carry a signature this server made.
"""

from __future__ import annotations

from collections.abc import Set

from tercet.server.signatures import ThinkingSigner
from tercet.wire.content import (
    ThinkingBlockParam,
    ToolResultBlockParam,
)
from tercet.wire.errors import InvalidRequestError
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


def thinks(request: PromptParams, betas: Set[str], *, adaptive_model: bool) -> bool:
    """Whether the reply to this request starts with thinking (so the prompt asks for it).

    Adaptive thinking lets the model judge whether to think. A model with no thinking of its
    own (`adaptive_model` false) cannot judge that, so it is not asked to think at all.

    A request that returns tool results continues the assistant's turn: the model thinks again
    there only with interleaved thinking (the beta, or adaptive thinking, where it is built in).
    """
    config = request.thinking
    if isinstance(config, ThinkingAdaptive):
        return adaptive_model
    if isinstance(config, ThinkingEnabled):
        return interleaves(request, betas) or not _continues_turn(request)
    return False


def interleaves(request: PromptParams, betas: Set[str]) -> bool:
    """Whether the model may think again between tool calls: with the beta, or with adaptive
    thinking, which interleaves by design."""
    return INTERLEAVED_THINKING_BETA in betas or isinstance(request.thinking, ThinkingAdaptive)


def thinking_budget(
    request: MessageCreateRequest, betas: Set[str], *, adaptive_model: bool
) -> int | None:
    """Tokens of thinking this request may use, or None when it does not think (`thinks`)."""
    config = request.thinking
    if not thinks(request, betas, adaptive_model=adaptive_model):
        return None
    if isinstance(config, ThinkingEnabled):
        if config.budget_tokens < MINIMUM_BUDGET:
            raise InvalidRequestError(
                f"thinking.enabled.budget_tokens: Input should be greater than or equal to {MINIMUM_BUDGET}"
            )
        interleaved = INTERLEAVED_THINKING_BETA in betas
        if config.budget_tokens >= request.max_tokens and not interleaved:
            raise InvalidRequestError(
                "`max_tokens` must be greater than `thinking.budget_tokens`. Please consult our "
                "documentation on extended thinking."
            )
        # Interleaved, the budget may pass max_tokens; one reply still cannot (nor go below 0:
        # `max_tokens: 0` fills the prompt cache and generates nothing).
        return max(0, min(config.budget_tokens, request.max_tokens - 1))
    if isinstance(config, ThinkingAdaptive):
        effort = (request.output_config.effort if request.output_config else None) or "high"
        # Leave half of max_tokens for the answer.
        return max(1, min(EFFORT_BUDGETS[effort], request.max_tokens // 2))
    return None


def _continues_turn(request: PromptParams) -> bool:
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
