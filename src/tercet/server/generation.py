"""The server's generation loop: one request in, one sequence of stream events out.

`plan` does everything that can fail with a 4xx before a response starts (model, message rules,
limits, prompt length, a place in line). `stream_events` then runs the engine and speaks the
Messages stream protocol; the non-streaming answer is the same events accumulated.
"""

from __future__ import annotations

import secrets
import string
from collections.abc import AsyncGenerator, Mapping, Set
from contextlib import aclosing
from dataclasses import dataclass, field, replace
from time import perf_counter

import anyio

from tercet.engine.base import (
    Conversation,
    Engine,
    Finish,
    FinishReason,
    PreparedPrompt,
    SamplingParams,
    Turn,
)
from tercet.mcp import McpPool
from tercet.sandbox.containers import Container, ContainerError
from tercet.server.admission import AdmissionQueue, Ticket
from tercet.server.blocks import BlockWriter
from tercet.server.classifiers import Halt, RequestClassifiers, ServerClassifiers
from tercet.server.code_execution import SERVER_TOOL_NAMES, CodeExecutor, code_execution_tools
from tercet.server.conversation import build_conversation
from tercet.server.conversation_end import (
    END_CONVERSATION,
    EndConversationOffer,
    EndedConversations,
)
from tercet.server.guard import RequestGuard, ServerGuard
from tercet.server.mcp_connector import McpToolbox, discover
from tercet.server.models import ModelRegistry
from tercet.server.request_log import GenerationStats, ToolCallRecord
from tercet.server.signatures import ThinkingSigner
from tercet.server.thinking import check_thinking_blocks, interleaves, thinking_budget
from tercet.server.tools import tool_policy
from tercet.wire.content import (
    ContainerUploadBlockParam,
    ContentBlockParam,
    MCPToolResultBlock,
    MCPToolUseBlockParam,
    ServerToolResultBlock,
    TextBlockParam,
)
from tercet.wire.errors import InvalidRequestError, PromptTooLongError
from tercet.wire.events import (
    MessageAccumulator,
    MessageDelta,
    MessageDeltaEvent,
    MessageDeltaUsage,
    MessageStartEvent,
    MessageStopEvent,
    StreamEvent,
)
from tercet.wire.requests import MessageCreateRequest, ThinkingAdaptive, ThinkingEnabled
from tercet.wire.responses import (
    CacheCreation,
    Message,
    OutputTokensDetails,
    RefusalStopDetails,
    StopReason,
    Usage,
)

STOP_REASONS: dict[FinishReason, StopReason] = {
    "end_turn": "end_turn",
    "max_tokens": "max_tokens",
    "stop_sequence": "stop_sequence",
    "context_window": "model_context_window_exceeded",
    "tool_use": "tool_use",
}

_ID_ALPHABET = string.ascii_letters + string.digits


def new_id(prefix: str) -> str:
    """An id in Anthropic's style: a prefix and 24 random base-62 characters."""
    return f"{prefix}_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(24))


@dataclass
class ServerToolRuns:
    """What the server needs to run the calls it runs itself (code execution, MCP tools)
    within one request."""

    executor: CodeExecutor | None  # when the request offers code execution
    mcp: McpToolbox | None  # when it names MCP servers
    owner: str
    max_iterations: int
    guard: RequestGuard | None = None  # when the server runs with a guard policy


@dataclass(frozen=True)
class Ending:
    """The `end_conversation` tool offered to one request's model (`end_conversation` on),
    and where an ended conversation is recorded."""

    offer: EndConversationOffer
    store: EndedConversations
    owner: str
    request_id: str | None = None


@dataclass
class GenerationPlan:
    """A request that passed every check and holds a place in the engine's line."""

    request: MessageCreateRequest
    engine: Engine
    prompt: PreparedPrompt
    params: SamplingParams
    ticket: Ticket
    signer: ThinkingSigner
    conversation: Conversation
    tool_runs: ServerToolRuns | None = None  # when the request offers server-run tools
    # Timings and usage for the log line and the metrics, taken at a few points, not per token.
    stats: GenerationStats = field(default_factory=GenerationStats)
    checks: RequestClassifiers | None = None  # the safety classifiers, where they are on
    refusal: RefusalStopDetails | None = None  # the input classifier refused: no generation
    ending: Ending | None = None  # the model may end the conversation

    @property
    def omit_thinking(self) -> bool:
        thinking = self.request.thinking
        return isinstance(thinking, ThinkingEnabled | ThinkingAdaptive) and (
            thinking.display == "omitted"
        )


async def plan(
    request: MessageCreateRequest,
    registry: ModelRegistry,
    lines: Mapping[str, AdmissionQueue],
    signer: ThinkingSigner,
    betas: Set[str] = frozenset(),
    *,
    code_execution: CodeExecutor | None = None,
    mcp_pool: McpPool | None = None,
    owner: str = "anonymous",
    max_tool_iterations: int = 10,
    guard: ServerGuard | None = None,
    classifiers: ServerClassifiers | None = None,
    ending: Ending | None = None,
    request_id: str | None = None,
) -> GenerationPlan:
    engine = registry.resolve(request.model)
    spec = engine.spec
    if request.max_tokens < 0:  # 0 fills the prompt cache and generates nothing
        raise InvalidRequestError("max_tokens: must be greater than or equal to 0")
    if request.max_tokens > spec.max_output_tokens:
        raise InvalidRequestError(
            f"max_tokens: {request.max_tokens} > {spec.max_output_tokens}, which is the maximum "
            f"allowed number of output tokens for {request.model}"
        )
    stops = request.stop_sequences or []
    if any(not s.strip() for s in stops):
        raise InvalidRequestError("stop_sequences: each stop sequence must contain non-whitespace")
    budget = thinking_budget(request, betas, adaptive_model=spec.adaptive_thinking)
    check_thinking_blocks(request, signer)
    if guard is not None:  # the spotlighting instruction, where the server's tools are marked
        request = guard.instructed(request, owner)
    if ending is not None and not ending.offer.offered(request):
        ending = None  # too early in the conversation, or the client forces its own tools
    if ending is not None:
        request = ending.offer.instructed(request)
    conversation = build_conversation(request, cache_scope=owner)  # the message rules first
    # Then the MCP servers: listing their tools is the slow part, and may fail with a 400.
    toolbox = await discover(request, betas, mcp_pool)
    request_guard = None
    if guard is not None:  # what the history holds, recorded off the event loop (CPU-bound)
        request_guard = await anyio.to_thread.run_sync(guard.start, request, owner, toolbox)
    extra_tools = [*(toolbox.tools if toolbox else ()), *([ending.offer.tool] if ending else [])]
    tools = tool_policy(request, thinking=budget is not None, extra_tools=extra_tools)
    if extra_tools:
        conversation = build_conversation(request, cache_scope=owner, extra_tools=extra_tools)
    if toolbox is not None:
        conversation = toolbox.renamed_history(conversation)
    if budget is not None:
        prefill = conversation.prefill
        if prefill is not None and any(b.type == "text" for b in prefill.blocks):
            raise InvalidRequestError(
                "messages: when `thinking` is enabled, a final `assistant` message cannot be a "
                "text prefill; send it without the prefill or disable thinking"
            )
        conversation = replace(conversation, thinking=True)
    prompt = await engine.prepare(conversation)
    longest = spec.context_window - 1  # leave room for at least one generated token
    if prompt.total_tokens > longest:
        raise PromptTooLongError(prompt.total_tokens, longest)
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
        thinking_budget=budget,
        interleaved_thinking=budget is not None and interleaves(request, betas),
        tools=tools,
    )
    stats = GenerationStats()
    # The input classifier, after every 4xx check: a refusal is an answer, not an error.
    checks = (
        classifiers.start(request, owner, stats, request_id) if classifiers is not None else None
    )
    refusal = await checks.check_input() if checks is not None else None
    ticket = lines[spec.id].join()
    executor = code_execution if code_execution_tools(request.tools) else None
    runs = None
    if executor is not None or toolbox is not None:
        runs = ServerToolRuns(
            executor, toolbox, owner, max_iterations=max_tool_iterations, guard=request_guard
        )
        if params.tools is not None:
            # The loop runs the one call a reply ends with; a reply holding several (server
            # and client calls mixed) cannot be answered call by call, so one call a reply.
            params = replace(params, tools=replace(params.tools, parallel=False))
    return GenerationPlan(
        request,
        engine,
        prompt,
        params,
        ticket,
        signer,
        conversation,
        runs,
        stats,
        checks,
        refusal,
        ending,
    )


async def stream_events(job: GenerationPlan) -> AsyncGenerator[StreamEvent, None]:
    """The Messages stream for a planned request: message_start ... message_stop."""
    input_tokens = job.prompt.input_tokens
    cache = job.prompt.cache
    yield MessageStartEvent(
        message=Message(
            id=new_id("msg"),
            model=job.request.model,
            content=[],
            usage=Usage(
                input_tokens=input_tokens,
                output_tokens=0,
                cache_read_input_tokens=cache.read,
                cache_creation_input_tokens=cache.written,
                cache_creation=CacheCreation(
                    ephemeral_5m_input_tokens=cache.written_5m,
                    ephemeral_1h_input_tokens=cache.written_1h,
                ),
            ),
        )
    )
    if job.refusal is not None:
        async for refused in _refused(job):
            yield refused
        return
    finish: Finish | None = None
    thinking = job.params.thinking_budget is not None
    runs = job.tool_runs
    blocks = BlockWriter(
        job.signer,
        thinking=thinking and job.params.max_tokens > 0,  # 0: fill the cache, write nothing
        omit_thinking=job.omit_thinking,
        tool_use_ids=lambda: new_id("toolu"),
        server_tools=SERVER_TOOL_NAMES if runs and runs.executor else frozenset(),
        server_tool_use_ids=lambda: new_id("srvtoolu"),
        mcp_tools=runs.mcp.names() if runs and runs.mcp else None,
        mcp_tool_use_ids=lambda: new_id("mcptoolu"),
        hidden_tools=frozenset({END_CONVERSATION}) if job.ending else frozenset(),
    )
    prompt, params = job.prompt, job.params
    container: Container | ContainerError | None = None
    stop_reason: StopReason | None = None
    # Why the reply ends in a refusal: an output check flagged it, or the model ended the
    # conversation.
    halted: RefusalStopDetails | None = None
    output_tokens = thinking_tokens = iterations = 0
    stats = job.stats
    first_token: float | None = None
    watch = job.checks.watch(job.engine.spec) if job.checks is not None else None
    try:
        async with job.ticket:
            stats.admitted = perf_counter()
            while True:
                ended: Finish | None = None
                chunks = 0
                generated = job.engine.generate(prompt, params)
                # With classifiers, the due output checks come between events: nothing after
                # a check is sent unless it passes. Closing the generator stops the engine.
                async with aclosing(watch.watched(generated) if watch else generated) as events:
                    async for event in events:
                        if isinstance(event, Halt):
                            halted = event.details
                            break
                        if isinstance(event, Finish):
                            ended = event
                            continue
                        if first_token is None:
                            first_token = stats.first_token = perf_counter()
                        chunks += 1
                        for block_event in blocks.add(event):
                            yield block_event
                if halted is None and watch is not None and ended is not None:
                    halted = await watch.check_rest()  # before any tool call runs
                if halted is not None:
                    output_tokens += ended.output_tokens if ended else chunks
                    stop_reason = "refusal"
                    break
                if ended is None:
                    raise RuntimeError("the engine ended without saying why")
                finish = ended
                output_tokens += finish.output_tokens
                thinking_tokens += finish.thinking_tokens
                hidden = (
                    blocks.hidden_call() if job.ending and finish.reason == "tool_use" else None
                )
                if job.ending is not None and hidden is not None:  # the model ended it
                    reason = hidden[1].get("reason")
                    ending = job.ending
                    stats.ended_conversation = (
                        await anyio.to_thread.run_sync(  # fsynced: off the loop
                            ending.store.end,
                            job.request,
                            ending.owner,
                            reason if isinstance(reason, str) else None,
                            ending.request_id,
                        )
                    )
                    halted = RefusalStopDetails(explanation=ending.offer.explanation)
                    stop_reason = "refusal"
                    break
                call = blocks.server_call() if runs and finish.reason == "tool_use" else None
                if runs is None or call is None:
                    break
                # The model called a server tool: run it, show the result, let the model go on.
                for block_event in blocks.close():
                    yield block_event
                result: ServerToolResultBlock | MCPToolResultBlock
                refusal = None
                if runs.guard is not None:  # checked before it runs; a refused call never does
                    # Off the event loop: the check reads everything the request recorded.
                    verdict = await anyio.to_thread.run_sync(runs.guard.check, call)
                    stats.guard_decisions.append((verdict.action, verdict.rule))
                    if verdict.action != "allow":
                        refusal = runs.guard.refused(call, verdict)
                if refusal is not None:
                    result = refusal
                    stats.tool_calls.append(ToolCallRecord(call, refusal, 0.0, refused=True))
                else:
                    async with job.ticket.stepped_aside():  # others may use the engine meanwhile
                        began = perf_counter()
                        if isinstance(call, MCPToolUseBlockParam):
                            assert runs.mcp is not None
                            result = await runs.mcp.call(call)
                        else:
                            executor = runs.executor
                            assert executor is not None
                            if container is None:
                                container = await _open_container(executor, runs.owner, job.request)
                            result = await anyio.to_thread.run_sync(
                                executor.execute,
                                container,
                                call.name,
                                call.id,
                                call.input,
                                runs.owner,
                            )
                        ran = perf_counter() - began
                        stats.server_tools.append((result, ran))
                        stats.tool_calls.append(ToolCallRecord(call, result, ran))
                        if runs.guard is not None:  # what the model reads, the client receives
                            result = await runs.guard.shown(call, result)
                for block_event in blocks.result(result):
                    yield block_event
                iterations += 1
                if iterations >= runs.max_iterations:
                    stop_reason = "pause_turn"  # the client sends the turn back to go on
                    break
                if output_tokens >= job.params.max_tokens:
                    stop_reason = "max_tokens"
                    break
                prompt, params = await _continuation(job, blocks.written, output_tokens)
    finally:
        job.ticket.leave()
        stats.ended = perf_counter()
    for block_event in blocks.finish():
        yield block_event
    stats.answer = "".join(b.text for b in blocks.written if isinstance(b, TextBlockParam))
    details = OutputTokensDetails(thinking_tokens=thinking_tokens) if thinking else None
    if stop_reason is None:
        assert finish is not None
        stop_reason = STOP_REASONS[finish.reason]
    delta = MessageDeltaEvent(
        delta=MessageDelta(
            stop_reason=stop_reason,
            stop_sequence=finish.stop_sequence if finish and not halted else None,
            stop_details=halted,
            container=runs.executor.info(container)
            if runs is not None and runs.executor and isinstance(container, Container)
            else None,
        ),
        usage=MessageDeltaUsage(
            output_tokens=output_tokens,
            input_tokens=input_tokens
            if finish is None or finish.input_tokens is None
            else finish.input_tokens - cache.read - cache.written,
            cache_read_input_tokens=cache.read,
            cache_creation_input_tokens=cache.written,
            output_tokens_details=details,
        ),
    )
    stats.usage, stats.stop_reason = delta.usage, delta.delta.stop_reason
    yield delta
    yield MessageStopEvent()


async def _refused(job: GenerationPlan) -> AsyncGenerator[StreamEvent, None]:
    """The rest of the stream of a request the input classifier refused: no content, no
    generation (the engine is never asked)."""
    job.ticket.leave()
    delta = MessageDeltaEvent(
        delta=MessageDelta(stop_reason="refusal", stop_details=job.refusal),
        # The prompt was read (tokenised, judged) but the cache neither read nor written.
        usage=MessageDeltaUsage(
            output_tokens=0,
            input_tokens=job.prompt.total_tokens,
            cache_read_input_tokens=0,
            cache_creation_input_tokens=0,
        ),
    )
    job.stats.usage, job.stats.stop_reason = delta.usage, "refusal"
    job.stats.ended = perf_counter()
    yield delta
    yield MessageStopEvent()


async def _open_container(
    executor: CodeExecutor, owner: str, request: MessageCreateRequest
) -> Container | ContainerError:
    """The request's container, with its `container_upload` files placed in it."""
    container = await anyio.to_thread.run_sync(executor.container, request.container, owner)
    if isinstance(container, Container):
        for message in request.messages:
            for block in message.content if not isinstance(message.content, str) else ():
                if isinstance(block, ContainerUploadBlockParam):
                    await anyio.to_thread.run_sync(executor.upload, container, block, owner)
    return container


async def _continuation(
    job: GenerationPlan, written: list[ContentBlockParam], output_tokens: int
) -> tuple[PreparedPrompt, SamplingParams]:
    """The prompt that continues the reply after a server tool's result, and its sampling:
    the model now chooses freely (a forced choice applied to the first call), without
    thinking again (it is shown once, first)."""
    conversation = job.conversation
    turns = list(conversation.turns)
    earlier: list[ContentBlockParam] = []
    if conversation.prefill is not None:
        earlier = list(turns.pop().blocks)
    turns.append(Turn("assistant", [*earlier, *written]))
    prompt = await job.engine.prepare(
        replace(conversation, turns=turns, thinking=False, breakpoints=())
    )
    tools = job.params.tools
    params = replace(
        job.params,
        max_tokens=job.params.max_tokens - output_tokens,
        thinking_budget=None,
        tools=replace(tools, choice="auto", name=None) if tools else None,
    )
    return prompt, params


async def complete(job: GenerationPlan) -> Message:
    """The non-streaming answer: the same events, accumulated."""
    accumulator = MessageAccumulator()
    async with aclosing(stream_events(job)) as events:
        async for event in events:
            accumulator.add(event)
    return accumulator.message
