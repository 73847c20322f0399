"""Prometheus metrics of one app, served at `/metrics`.

Where vLLM measures the same thing, the metric has vLLM's name, type and `model_name` label, so
dashboards made for vLLM work unchanged; `tercet_` names for the rest. `model_name` is the served
model's id, never the name a client asked for (clients may send any string).

Request metrics are observed once, when a request ends, from its `RequestRecord`: nothing is
counted per token. Queue depth and the prompt cache's counters are read when scraped.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tercet.engine.base import Engine
from tercet.server.admission import AdmissionQueue
from tercet.server.request_log import RequestRecord, ServerToolResult
from tercet.wire.content import MCPToolResultBlock

# vLLM's buckets, with finer ones below where a small model on a CPU answers in milliseconds.
TTFT_BUCKETS = (
    *(0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0),
    *(2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0),
)
REQUEST_BUCKETS = (
    *(0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0),
    *(40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0),
)
TOKEN_TIME_BUCKETS = (
    *(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5),
    *(0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0),
)
TOKEN_COUNT_BUCKETS = tuple(m * 10**e for e in range(7) for m in (1, 2, 5))
# vLLM's finished_reason: "length" when a limit cut the reply, "stop" otherwise.
LENGTH_STOPS = frozenset({"max_tokens", "model_context_window_exceeded"})

MODEL = ("model_name",)


class ServerMetrics:
    """The app's metrics, in a registry of its own (several apps in one process stay apart)."""

    def __init__(self, engines: Mapping[str, Engine], lines: Mapping[str, AdmissionQueue]) -> None:
        self.engines = engines
        self.registry = registry = CollectorRegistry()
        self.http_requests = Counter(
            "tercet_http_requests",
            "HTTP requests by route and the status they ended with (499: the client left; "
            "an error in the middle of a stream counts under its error's status).",
            ("method", "route", "status"),
            registry=registry,
        )
        self.http_seconds = Histogram(
            "tercet_http_request_duration_seconds",
            "HTTP request latency, arrival to the last byte, by route.",
            ("method", "route"),
            buckets=REQUEST_BUCKETS,
            registry=registry,
        )
        self.tokens = Counter(
            "tercet_tokens",
            "Tokens of Messages requests by kind: input (neither read from nor written to the "
            "prompt cache), cache_read, cache_write, output (as the usage reports them).",
            (*MODEL, "kind"),
            registry=registry,
        )
        self.prompt_tokens = Counter(
            "vllm:prompt_tokens",
            "Prompt tokens of requests that reached the engine (cached ones included).",
            MODEL,
            registry=registry,
        )
        self.generation_tokens = Counter(
            "vllm:generation_tokens", "Generated tokens.", MODEL, registry=registry
        )
        self.request_success = Counter(
            "vllm:request_success",
            "Requests that finished, by vLLM's finished_reason (length: max_tokens or the "
            "context window; stop: any other).",
            (*MODEL, "finished_reason"),
            registry=registry,
        )
        self.stop_reasons = Counter(
            "tercet_stop_reasons",
            "Finished requests by their Messages API stop_reason.",
            (*MODEL, "stop_reason"),
            registry=registry,
        )
        self.prefix_cache_queries = Counter(
            "vllm:prefix_cache_queries",
            "Prompt tokens of requests to an engine with a prompt cache.",
            MODEL,
            registry=registry,
        )
        self.prefix_cache_hits = Counter(
            "vllm:prefix_cache_hits",
            "Prompt tokens read from the prompt cache.",
            MODEL,
            registry=registry,
        )
        self.request_prompt_tokens = self._histogram(
            "vllm:request_prompt_tokens", "Prompt tokens per request.", TOKEN_COUNT_BUCKETS
        )
        self.request_generation_tokens = self._histogram(
            "vllm:request_generation_tokens", "Generated tokens per request.", TOKEN_COUNT_BUCKETS
        )
        self.time_to_first_token = self._histogram(
            "vllm:time_to_first_token_seconds",
            "Arrival to the engine's first output token.",
            TTFT_BUCKETS,
        )
        self.e2e_latency = self._histogram(
            "vllm:e2e_request_latency_seconds",
            "Arrival to the end of a finished request.",
            REQUEST_BUCKETS,
        )
        self.queue_time = self._histogram(
            "vllm:request_queue_time_seconds",
            "Time waiting in line for the engine.",
            REQUEST_BUCKETS,
        )
        self.prefill_time = self._histogram(
            "vllm:request_prefill_time_seconds",
            "Getting the engine to the first output token.",
            REQUEST_BUCKETS,
        )
        self.decode_time = self._histogram(
            "vllm:request_decode_time_seconds",
            "First output token to the last (server tool runs and their prefills left out).",
            REQUEST_BUCKETS,
        )
        self.time_per_output_token = self._histogram(
            "vllm:request_time_per_output_token_seconds",
            "Each request's mean time per output token after the first.",
            TOKEN_TIME_BUCKETS,
        )
        self.code_executions = Counter(
            "tercet_code_executions",
            "Code execution tool calls by tool and outcome: ok, nonzero_exit, or the error code "
            "the result carries (execution_time_exceeded, unavailable, ...).",
            ("tool", "outcome"),
            registry=registry,
        )
        self.code_execution_seconds = Histogram(
            "tercet_code_execution_seconds",
            "How long code execution calls ran.",
            ("tool",),
            buckets=REQUEST_BUCKETS,
            registry=registry,
        )
        self.mcp_calls = Counter(
            "tercet_mcp_calls",
            "MCP connector tool calls by outcome (ok, or error: an is_error result).",
            ("outcome",),
            registry=registry,
        )
        self.mcp_call_seconds = Histogram(
            "tercet_mcp_call_seconds",
            "How long MCP connector tool calls took.",
            buckets=REQUEST_BUCKETS,
            registry=registry,
        )
        self.guard_decisions = Counter(
            "tercet_guard_decisions",
            "The guard's verdicts on server-run tool calls (code execution, MCP) by action "
            "(allow; deny, or ask, which a server refuses too) and the policy's rule that decided.",
            ("action", "rule"),
            registry=registry,
        )
        self.classifier_checks = Counter(
            "tercet_classifier_checks",
            "Safety classifier checks by stage (input, output), decision (allow, flag, or error: "
            "no decision) and mode (monitor, enforce).",
            ("stage", "decision", "mode"),
            registry=registry,
        )
        self.classifier_tokens = Counter(
            "tercet_classifier_tokens",
            "Tokens the safety classifiers' judge read (input) and wrote (output), apart from "
            "the model's own.",
            ("stage", "kind"),
            registry=registry,
        )
        self.classifier_seconds = Histogram(
            "tercet_classifier_seconds",
            "How long safety classifier checks took (a cached decision: 0).",
            ("stage",),
            buckets=REQUEST_BUCKETS,
            registry=registry,
        )
        registry.register(_EngineState(engines, lines))

    def _histogram(self, name: str, documentation: str, buckets: Iterable[float]) -> Histogram:
        return Histogram(name, documentation, MODEL, buckets=tuple(buckets), registry=self.registry)

    def exposition(self) -> bytes:
        """The registry in Prometheus' text format."""
        return generate_latest(self.registry)

    def observe(self, record: RequestRecord) -> None:
        """Count a request that has ended."""
        route = record.route or "unmatched"  # never the raw path: a client could make up many
        self.http_requests.labels(record.method, route, str(record.status)).inc()
        self.http_seconds.labels(record.method, route).observe(record.seconds)
        generation, model = record.generation, record.served_model
        for check in generation.classifier_checks if generation is not None else ():
            # Before the engine: an input check may refuse a request that never reaches it.
            self.classifier_checks.labels(check.stage, check.outcome, check.mode).inc()
            self.classifier_tokens.labels(check.stage, "input").inc(check.input_tokens)
            self.classifier_tokens.labels(check.stage, "output").inc(check.output_tokens)
            self.classifier_seconds.labels(check.stage).observe(check.seconds)
        if generation is None or model is None or generation.admitted is None:
            return  # it never reached the engine
        usage = generation.usage
        if usage is not None:
            counts = (
                usage.input_tokens or 0,
                usage.cache_read_input_tokens or 0,
                usage.cache_creation_input_tokens or 0,
            )
        elif record.prompt is not None:  # cut off before its end: the prompt was read
            cache = record.prompt.cache
            counts = (record.prompt.input_tokens, cache.read, cache.written)
        else:
            counts = (0, 0, 0)
        for kind, count in zip(("input", "cache_read", "cache_write"), counts, strict=True):
            self.tokens.labels(model, kind).inc(count)
        prompt = sum(counts)
        self.prompt_tokens.labels(model).inc(prompt)
        if self.engines[model].cache_stats() is not None:
            self.prefix_cache_queries.labels(model).inc(prompt)
            self.prefix_cache_hits.labels(model).inc(counts[1])
        if record.planned is not None:
            self.queue_time.labels(model).observe(generation.admitted - record.planned)
        if generation.first_token is not None:
            self.time_to_first_token.labels(model).observe(generation.first_token - record.arrived)
            self.prefill_time.labels(model).observe(generation.first_token - generation.admitted)
        for result, seconds in generation.server_tools:
            self._observe_tool(result, seconds)
        for action, rule in generation.guard_decisions:
            self.guard_decisions.labels(action, rule).inc()
        if usage is None:
            return
        output = usage.output_tokens
        self.tokens.labels(model, "output").inc(output)
        self.generation_tokens.labels(model).inc(output)
        self.request_prompt_tokens.labels(model).observe(prompt)
        self.request_generation_tokens.labels(model).observe(output)
        stop = generation.stop_reason or "end_turn"
        finished = "length" if stop in LENGTH_STOPS else "stop"
        self.request_success.labels(model, finished).inc()
        self.stop_reasons.labels(model, stop).inc()
        self.e2e_latency.labels(model).observe(record.seconds)
        decode = record.decode_seconds()
        if decode is not None and output > 0:
            self.decode_time.labels(model).observe(decode)
            if output > 1:
                self.time_per_output_token.labels(model).observe(decode / (output - 1))

    def _observe_tool(self, result: ServerToolResult, seconds: float) -> None:
        if isinstance(result, MCPToolResultBlock):
            self.mcp_calls.labels("error" if result.is_error else "ok").inc()
            self.mcp_call_seconds.observe(seconds)
            return
        tool = result.type.removesuffix("_tool_result")
        self.code_executions.labels(tool, code_execution_outcome(result.content)).inc()
        self.code_execution_seconds.labels(tool).observe(seconds)


def code_execution_outcome(content: object) -> str:
    """ok, nonzero_exit, or the result's error code (a short fixed set, tercet's own)."""
    if not isinstance(content, dict):
        return "ok"
    if str(content.get("type", "")).endswith("_tool_result_error"):
        return str(content.get("error_code", "error"))
    code = content.get("return_code")
    return "nonzero_exit" if isinstance(code, int) and code != 0 else "ok"


class _EngineState(Collector):
    """Read when scraped: each engine's line (running, waiting) and its prompt cache."""

    def __init__(self, engines: Mapping[str, Engine], lines: Mapping[str, AdmissionQueue]) -> None:
        self._engines = engines
        self._lines = lines

    def collect(self) -> Iterable[Metric]:
        running = GaugeMetricFamily(
            "vllm:num_requests_running", "Requests using the engine.", labels=MODEL
        )
        waiting = GaugeMetricFamily(
            "vllm:num_requests_waiting", "Requests waiting in line for the engine.", labels=MODEL
        )
        for model, line in self._lines.items():
            running.add_metric([model], line.active)
            waiting.add_metric([model], line.waiting)
        hits = CounterMetricFamily(
            "tercet_prompt_cache_hits", "Prompt cache lookups that found a prefix.", labels=MODEL
        )
        misses = CounterMetricFamily(
            "tercet_prompt_cache_misses", "Prompt cache lookups that found none.", labels=MODEL
        )
        writes = CounterMetricFamily(
            "tercet_prompt_cache_writes", "Prefix snapshots stored.", labels=MODEL
        )
        stored = GaugeMetricFamily(
            "tercet_prompt_cache_bytes",
            "Bytes of snapshots held, by tier.",
            labels=(*MODEL, "tier"),
        )
        budget = GaugeMetricFamily(
            "tercet_prompt_cache_budget_bytes",
            "The most bytes each tier holds.",
            labels=(*MODEL, "tier"),
        )
        entries = GaugeMetricFamily(
            "tercet_prompt_cache_entries",
            "Snapshots held, by tier (live: still in the engine's context).",
            labels=(*MODEL, "tier"),
        )
        for model, engine in self._engines.items():
            stats = engine.cache_stats()
            if stats is None:
                continue
            hits.add_metric([model], stats.hits)
            misses.add_metric([model], stats.misses)
            writes.add_metric([model], stats.writes)
            for tier, held, most, count in (
                ("ram", stats.ram_bytes, stats.ram_budget, stats.ram_entries),
                ("disk", stats.disk_bytes, stats.disk_budget, stats.disk_entries),
            ):
                stored.add_metric([model, tier], held)
                budget.add_metric([model, tier], most)
                entries.add_metric([model, tier], count)
            entries.add_metric([model, "live"], stats.live_entries)
        yield from (running, waiting, hits, misses, writes, stored, budget, entries)
