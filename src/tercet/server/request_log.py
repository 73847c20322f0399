"""What one request cost and how long each phase took: the operator's log line, and what the
metrics count.

The generation loop fills a `GenerationStats` at a few points (never per token); the engine's
prefill reports its progress through `PrefillLog`, on the engine's own thread; the request
middleware keeps a `RequestRecord` and, when the request ends, writes one line about it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any

from tercet.engine.base import PreparedPrompt
from tercet.wire.content import (
    MCPToolResultBlock,
    MCPToolUseBlockParam,
    ServerToolResultBlock,
    ServerToolUseBlockParam,
)
from tercet.wire.events import MessageDeltaUsage

log = logging.getLogger("tercet.server")

ServerToolResult = ServerToolResultBlock | MCPToolResultBlock


@dataclass(frozen=True)
class ClassifierCheck:
    """One safety classifier check: its stage (input, output), outcome (allow, flag, error),
    the mode it ran in, and what it cost (a cached decision costs nothing)."""

    stage: str
    outcome: str
    mode: str
    input_tokens: int = 0
    output_tokens: int = 0
    seconds: float = 0.0
    cached: bool = False
    category: str | None = None  # the constitution's category, when flagged


@dataclass(frozen=True)
class ToolCallRecord:
    """A server-run call (code execution, MCP) as the audit log keeps it: the call, its
    result (a refused call's is the refusal), the seconds it ran."""

    call: ServerToolUseBlockParam | MCPToolUseBlockParam
    result: ServerToolResult
    seconds: float
    refused: bool = False


@dataclass
class GenerationStats:
    """A planned request's timings (`time.perf_counter` seconds) and usage, as it generates."""

    admitted: float | None = None  # it got the engine
    first_token: float | None = None  # the engine produced its first output
    ended: float | None = None  # the last generation ended (or was cut off)
    usage: MessageDeltaUsage | None = None  # the final usage, as sent; None if cut off
    stop_reason: str | None = None
    # Each server-run call (code execution, MCP) with the seconds it ran.
    server_tools: list[tuple[ServerToolResult, float]] = field(default_factory=list)
    # The guard's verdict on each server-run call it checked: (action, rule).
    guard_decisions: list[tuple[str, str]] = field(default_factory=list)
    # The safety classifiers' checks on the request and its answer, in order.
    classifier_checks: list[ClassifierCheck] = field(default_factory=list)
    # Every server-run call, refused ones too (for the audit log).
    tool_calls: list[ToolCallRecord] = field(default_factory=list)
    answer: str | None = None  # the reply's text, at its end (for the audit log)
    ended_conversation: str | None = None  # the history hash, when the model ended it


class PrefillLog:
    """The engine's prefill hook for one request: `(done, total)` tokens, called once before a
    prefill evaluates anything and after each batch. It logs a progress line every
    `interval_s` seconds of a prefill and adds up what every prefill of the request took
    (a reply that runs server tools prefills again after each result).

    Called on the engine's thread; read by the request once its generation has ended.
    """

    def __init__(self, request_id: str, interval_s: float) -> None:
        self.request_id = request_id
        self.interval_s = interval_s
        self.seconds: list[float] = []  # each finished prefill's time
        self.tokens: list[int] = []  # ... and the tokens it evaluated (reused ones not counted)
        self._began = self._last_line = 0.0
        self._from = 0
        self._running = False

    def __call__(self, done: int, total: int) -> None:
        now = perf_counter()
        if not self._running:  # a new prefill begins (before its first batch)
            self._running = True
            self._began = self._last_line = now
            self._from = done
            return
        if done >= total:
            self._running = False
            self.seconds.append(now - self._began)
            self.tokens.append(total - self._from)
        elif now - self._last_line >= self.interval_s:
            self._last_line = now
            evaluated, elapsed = done - self._from, now - self._began
            log.info(
                "%s prefill %d/%d tokens (%d%%), %.0f tokens/s",
                self.request_id,
                done,
                total,
                100 * done // total,
                evaluated / elapsed if elapsed > 0 else 0.0,
            )


@dataclass
class RequestRecord:
    """One HTTP request, from arrival to its end, as the middleware and the route saw it."""

    request_id: str
    method: str
    arrived: float = field(default_factory=perf_counter)
    route: str | None = None  # the matched route's path template; None when none matched
    status: int | None = None  # as sent; 499 when the client left
    error_type: str | None = None  # the Anthropic error type of a failed request
    ended: float | None = None
    # A Messages request, once its body is read and planned:
    owner: str | None = None  # the API key's hash (see app.owner_of), never the key
    operator: str | None = None  # the operator's name, for a request to the admin API
    model: str | None = None  # as requested
    served_model: str | None = None  # the engine that served it
    planned: float | None = None  # it passed every check and joined the engine's line
    prompt: PreparedPrompt | None = None
    generation: GenerationStats | None = None
    prefill: PrefillLog | None = None
    # For the audit log: the body's size, what was sent, and (with the log on) the latest
    # user turn's text and the conversation's history hash.
    bytes_in: int | None = None
    bytes_out: int = 0
    prompt_text: str | None = None
    conversation: str | None = None

    @property
    def seconds(self) -> float:
        return (self.ended or perf_counter()) - self.arrived

    @property
    def key_id(self) -> str:
        """A short stable id of the API key (a prefix of its hash); `anonymous` without one."""
        return "-" if self.owner is None else self.owner[:12]

    @property
    def disconnected(self) -> bool:
        return self.status == 499

    def prefill_seconds(self) -> float | None:
        """The engine's own time for the first prefill, else the time to the first output."""
        if self.prefill is not None and self.prefill.seconds:
            return self.prefill.seconds[0]
        generation = self.generation
        if generation and generation.admitted is not None and generation.first_token is not None:
            return generation.first_token - generation.admitted
        return None

    def decode_seconds(self) -> float | None:
        """First output to the end, less the time server tools ran and later prefills took."""
        generation = self.generation
        if generation is None or generation.first_token is None or generation.ended is None:
            return None
        away = sum(seconds for _, seconds in generation.server_tools)
        if self.prefill is not None:
            away += sum(self.prefill.seconds[1:])
        return max(generation.ended - generation.first_token - away, 0.0)

    def fields(self) -> dict[str, Any]:
        """What the log line says, by name (also attached to the log record as `request`)."""
        out: dict[str, Any] = {"status": self.status}
        if self.error_type is not None:
            out["error"] = self.error_type
        elif self.disconnected:
            out["error"] = "client_disconnected"
        out["key"] = self.key_id
        out["model"] = self.model or "-"
        generation = self.generation
        usage = generation.usage if generation else None
        if usage is not None:
            out["input_tokens"] = usage.input_tokens
            out["cache_read_tokens"] = usage.cache_read_input_tokens
            out["cache_write_tokens"] = usage.cache_creation_input_tokens
            out["output_tokens"] = usage.output_tokens
        elif self.prompt is not None:  # cut off: the prompt is known, the output is not
            out["input_tokens"] = self.prompt.input_tokens
            out["cache_read_tokens"] = self.prompt.cache.read
            out["cache_write_tokens"] = self.prompt.cache.written
        prefill = self.prefill_seconds()
        if prefill is not None:
            out["prefill_s"] = round(prefill, 4)
            if self.prefill is not None and self.prefill.seconds:
                out["prefill_tokens"] = self.prefill.tokens[0]
                out["prefill_tok_s"] = _rate(self.prefill.tokens[0], prefill)
        decode = self.decode_seconds()
        if usage is not None and decode is not None and usage.output_tokens > 1:
            # The first token came with the prefill; the rest took the decode time.
            out["decode_tok_s"] = _rate(usage.output_tokens - 1, decode)
        if generation is not None and generation.first_token is not None:
            out["ttft_s"] = round(generation.first_token - self.arrived, 4)
        out["total_s"] = round(self.seconds, 4)
        if generation is not None and generation.stop_reason is not None:
            out["stop"] = generation.stop_reason
        if generation is not None and generation.guard_decisions:
            out["guard_checked"] = len(generation.guard_decisions)
            out["guard_refused"] = sum(a != "allow" for a, _ in generation.guard_decisions)
        if generation is not None and generation.classifier_checks:
            checks = generation.classifier_checks
            out["classifier_checks"] = len(checks)
            out["classifier_flagged"] = sum(c.outcome == "flag" for c in checks)
            out["classifier_errors"] = sum(c.outcome == "error" for c in checks)
            out["classifier_tokens"] = sum(c.input_tokens + c.output_tokens for c in checks)
            out["classifier_s"] = round(sum(c.seconds for c in checks), 4)
        return out


def log_request(record: RequestRecord) -> None:
    """The request's one line, `key=value` pairs after its id (easy to grep and to parse)."""
    fields = record.fields()
    line = " ".join(f"{name}={value}" for name, value in fields.items())
    log.info("%s %s", record.request_id, line, extra={"request": fields})


def _rate(tokens: int, seconds: float) -> float:
    return round(tokens / seconds, 1) if seconds > 0 else 0.0
