"""The server's generation loop: one request in, one sequence of stream events out.

`plan` does everything that can fail with a 4xx before a response starts (model, message rules,
limits, prompt length, a place in line). `stream_events` then runs the engine and speaks the
Messages stream protocol; the non-streaming answer is the same events accumulated.
"""

from __future__ import annotations

import secrets
import string
from collections.abc import AsyncGenerator, Mapping
from contextlib import aclosing
from dataclasses import dataclass

from tercet.engine.base import Engine, Finish, FinishReason, PreparedPrompt, SamplingParams
from tercet.server.admission import AdmissionQueue, Ticket
from tercet.server.conversation import build_conversation
from tercet.server.models import ModelRegistry
from tercet.wire.content import TextBlock
from tercet.wire.errors import InvalidRequestError, PromptTooLongError
from tercet.wire.events import (
    ContentBlockDeltaEvent,
    ContentBlockStartEvent,
    ContentBlockStopEvent,
    MessageAccumulator,
    MessageDelta,
    MessageDeltaEvent,
    MessageDeltaUsage,
    MessageStartEvent,
    MessageStopEvent,
    StreamEvent,
    TextDelta,
)
from tercet.wire.requests import MessageCreateRequest
from tercet.wire.responses import Message, StopReason, Usage

STOP_REASONS: dict[FinishReason, StopReason] = {
    "end_turn": "end_turn",
    "max_tokens": "max_tokens",
    "stop_sequence": "stop_sequence",
    "context_window": "model_context_window_exceeded",
}

_ID_ALPHABET = string.ascii_letters + string.digits


def new_id(prefix: str) -> str:
    """An id in Anthropic's style: a prefix and 24 random base-62 characters."""
    return f"{prefix}_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(24))


@dataclass
class GenerationPlan:
    """A request that passed every check and holds a place in the engine's line."""

    request: MessageCreateRequest
    engine: Engine
    prompt: PreparedPrompt
    params: SamplingParams
    ticket: Ticket


async def plan(
    request: MessageCreateRequest,
    registry: ModelRegistry,
    lines: Mapping[str, AdmissionQueue],
) -> GenerationPlan:
    engine = registry.resolve(request.model)
    spec = engine.spec
    if request.max_tokens < 1:
        raise InvalidRequestError("max_tokens: must be greater than or equal to 1")
    if request.max_tokens > spec.max_output_tokens:
        raise InvalidRequestError(
            f"max_tokens: {request.max_tokens} > {spec.max_output_tokens}, which is the maximum "
            f"allowed number of output tokens for {request.model}"
        )
    stops = request.stop_sequences or []
    if any(not s.strip() for s in stops):
        raise InvalidRequestError("stop_sequences: each stop sequence must contain non-whitespace")
    prompt = await engine.prepare(build_conversation(request))
    longest = spec.context_window - 1  # leave room for at least one generated token
    if len(prompt.tokens) > longest:
        raise PromptTooLongError(len(prompt.tokens), longest)
    params = SamplingParams(
        max_tokens=request.max_tokens,
        temperature=spec.default_temperature
        if request.temperature is None
        else request.temperature,
        top_p=spec.default_top_p
        if request.top_p is None and request.temperature is None
        else request.top_p,
        top_k=request.top_k,
        stop_sequences=tuple(stops),
    )
    return GenerationPlan(request, engine, prompt, params, lines[spec.id].join())


async def stream_events(job: GenerationPlan) -> AsyncGenerator[StreamEvent, None]:
    """The Messages stream for a planned request: message_start ... message_stop."""
    input_tokens = len(job.prompt.tokens)
    yield MessageStartEvent(
        message=Message(
            id=new_id("msg"),
            model=job.request.model,
            content=[],
            usage=Usage(input_tokens=input_tokens, output_tokens=0),
        )
    )
    finish: Finish | None = None
    block_open = False
    try:
        async with job.ticket, aclosing(job.engine.generate(job.prompt, job.params)) as events:
            async for event in events:
                if isinstance(event, Finish):
                    finish = event
                    continue
                if not block_open:
                    block_open = True
                    yield ContentBlockStartEvent(index=0, content_block=TextBlock(text=""))
                yield ContentBlockDeltaEvent(index=0, delta=TextDelta(text=event.text))
    finally:
        job.ticket.leave()
    if finish is None:
        raise RuntimeError("the engine ended without saying why")
    if block_open:
        yield ContentBlockStopEvent(index=0)
    yield MessageDeltaEvent(
        delta=MessageDelta(
            stop_reason=STOP_REASONS[finish.reason], stop_sequence=finish.stop_sequence
        ),
        usage=MessageDeltaUsage(output_tokens=finish.output_tokens, input_tokens=input_tokens),
    )
    yield MessageStopEvent()


async def complete(job: GenerationPlan) -> Message:
    """The non-streaming answer: the same events, accumulated."""
    accumulator = MessageAccumulator()
    async with aclosing(stream_events(job)) as events:
        async for event in events:
            accumulator.add(event)
    return accumulator.message
