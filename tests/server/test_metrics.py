"""`/metrics`: a real server on the bundled model (with a prompt cache), driven by the official
SDK and scraped with Prometheus' own text parser. Each test reads the counters before and after
what it sends, and checks they moved by exactly that."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tercet.cache.config import CacheConfig
from tercet.cache.store import PromptCache
from tercet.engine.bundled import BUNDLED_MODEL_ID, bundled_model_path
from tercet.engine.llama import LlamaCppEngine
from tercet.engine.scripted import ScriptedEngine
from tercet.sandbox.runner import unavailable_reason
from tercet.server.admission import AdmissionQueue
from tercet.server.app import create_app
from tercet.server.config import ServerConfig
from tercet.server.metrics import ServerMetrics
from tercet.server.runner import BackgroundServer
from tests.conftest import CLAUDE_MODEL
from tests.mcp.servers import SECRET_WORD, McpServerInfo, running_mcp_server

pytestmark = pytest.mark.timeout(300)

MODEL = {"model_name": BUNDLED_MODEL_ID}
MESSAGES = {"method": "POST", "route": "/v1/messages"}
GREEDY = {"temperature": 0}
_serial = itertools.count()

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition, by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(base_url: str) -> Samples:
    response = httpx.get(f"{base_url}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server of its own (its own registry, counts no other test touches), with a cache."""
    cache = PromptCache(CacheConfig(min_tokens=128), tmp_path_factory.mktemp("prompt-cache"))
    engine = LlamaCppEngine(bundled_model_path(), model_id=BUNDLED_MODEL_ID, cache=cache)
    config = ServerConfig(data_dir=tmp_path_factory.mktemp("data"), api_keys=[])
    with BackgroundServer(create_app(config, [engine])) as running:
        yield running.base_url


@pytest.fixture
def client(server: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server, api_key="k", max_retries=0)


def ask(client: anthropic.Anthropic, text: str, **params: Any) -> anthropic.types.Message:
    body: dict[str, Any] = {
        "model": CLAUDE_MODEL,
        "max_tokens": 12,
        "messages": [{"role": "user", "content": text}],
        "extra_body": GREEDY,
    }
    return client.messages.create(**(body | params))


def test_tokens_and_requests_move_by_exactly_the_usage_sent_back(
    server: str, client: anthropic.Anthropic
) -> None:
    before = scrape(server)
    created = ask(client, f"Name a colour. ({next(_serial)})")
    with client.messages.stream(
        model=CLAUDE_MODEL,
        max_tokens=8,
        messages=[{"role": "user", "content": f"Name a fruit. ({next(_serial)})"}],
        extra_body=GREEDY,
    ) as stream:
        streamed = stream.get_final_message()
    after = scrape(server)
    replies = [created, streamed]
    inputs = sum(m.usage.input_tokens for m in replies)
    outputs = sum(m.usage.output_tokens for m in replies)
    assert inputs > 0 and outputs > 0
    assert moved(before, after, "tercet_tokens_total", **MODEL, kind="input") == inputs
    assert moved(before, after, "tercet_tokens_total", **MODEL, kind="output") == outputs
    assert moved(before, after, "vllm:prompt_tokens_total", **MODEL) == inputs
    assert moved(before, after, "vllm:generation_tokens_total", **MODEL) == outputs
    assert moved(before, after, "tercet_http_requests_total", **MESSAGES, status="200") == 2
    for histogram in (
        "vllm:e2e_request_latency_seconds",
        "vllm:request_queue_time_seconds",
        "vllm:request_prompt_tokens",
        "vllm:request_generation_tokens",
    ):
        assert moved(before, after, f"{histogram}_count", **MODEL) == 2, histogram
    assert moved(before, after, "vllm:request_generation_tokens_sum", **MODEL) == outputs
    assert moved(before, after, "vllm:request_prompt_tokens_sum", **MODEL) == inputs
    answered = [m for m in replies if m.content]  # an empty reply has no first token
    assert moved(before, after, "vllm:time_to_first_token_seconds_count", **MODEL) == len(answered)
    assert moved(before, after, "vllm:request_prefill_time_seconds_count", **MODEL) == len(answered)
    several = [m for m in replies if m.usage.output_tokens > 1]
    assert moved(before, after, "vllm:request_time_per_output_token_seconds_count", **MODEL) == len(
        several
    )
    by_reason = {
        reason: moved(before, after, "tercet_stop_reasons_total", **MODEL, stop_reason=reason)
        for reason in ("end_turn", "max_tokens")
    }
    assert by_reason == {
        reason: sum(1 for m in replies if m.stop_reason == reason) for reason in by_reason
    }
    length = by_reason["max_tokens"]
    assert moved(
        before, after, "vllm:request_success_total", **MODEL, finished_reason="length"
    ) == (length)
    assert moved(before, after, "vllm:request_success_total", **MODEL, finished_reason="stop") == (
        2 - length
    )
    # Idle again: nothing running, nothing waiting.
    assert value(after, "vllm:num_requests_running", **MODEL) == 0
    assert value(after, "vllm:num_requests_waiting", **MODEL) == 0


def test_errors_count_under_their_status_and_use_no_tokens(
    server: str, client: anthropic.Anthropic
) -> None:
    before = scrape(server)
    with pytest.raises(anthropic.BadRequestError):
        ask(client, "Hello.", max_tokens=-1)
    with pytest.raises(anthropic.BadRequestError):
        ask(client, "Hello.", stop_sequences=["  "])
    with pytest.raises(anthropic.NotFoundError):
        ask(client, "Hello.", model="no-such-model")
    unknown = httpx.get(f"{server}/v1/no/such/path/{next(_serial)}")
    assert unknown.status_code == 404
    after = scrape(server)
    assert moved(before, after, "tercet_http_requests_total", **MESSAGES, status="400") == 2
    assert moved(before, after, "tercet_http_requests_total", **MESSAGES, status="404") == 1
    # A path no route matches is counted under one label, whatever it was.
    assert (
        moved(
            before,
            after,
            "tercet_http_requests_total",
            method="GET",
            route="unmatched",
            status="404",
        )
        == 1
    )
    for kind in ("input", "cache_read", "cache_write", "output"):
        assert moved(before, after, "tercet_tokens_total", **MODEL, kind=kind) == 0
    assert moved(before, after, "vllm:e2e_request_latency_seconds_count", **MODEL) == 0


def test_prompt_cache_reads_and_writes(server: str, client: anthropic.Anthropic) -> None:
    rules = "\n".join(
        f"Rule {i} of manual {next(_serial)}: check item {i * 7} before step {i + 1}."
        for i in range(20)
    )
    system: Any = [{"type": "text", "text": rules, "cache_control": {"type": "ephemeral"}}]
    before = scrape(server)
    first = ask(client, "What is rule 3?", system=system)
    second = ask(client, "What is rule 4?", system=system)
    after = scrape(server)
    written = first.usage.cache_creation_input_tokens or 0
    read = second.usage.cache_read_input_tokens or 0
    assert written > 0 and read == written  # the second reads what the first wrote
    replies = [first, second]
    prompt = sum(
        m.usage.input_tokens
        + (m.usage.cache_read_input_tokens or 0)
        + (m.usage.cache_creation_input_tokens or 0)
        for m in replies
    )
    assert moved(before, after, "tercet_tokens_total", **MODEL, kind="cache_write") == written
    assert moved(before, after, "tercet_tokens_total", **MODEL, kind="cache_read") == read
    assert moved(before, after, "vllm:prompt_tokens_total", **MODEL) == prompt
    assert moved(before, after, "vllm:prefix_cache_queries_total", **MODEL) == prompt
    assert moved(before, after, "vllm:prefix_cache_hits_total", **MODEL) == read
    assert moved(before, after, "tercet_prompt_cache_hits_total", **MODEL) >= 1
    assert moved(before, after, "tercet_prompt_cache_writes_total", **MODEL) >= 1
    # The entry is held somewhere (a five-minute write stays live in the engine's context
    # until the context moves on; only then is it a snapshot that takes bytes).
    tiers = ("ram", "disk", "live")
    assert sum(value(after, "tercet_prompt_cache_entries", **MODEL, tier=t) for t in tiers) >= 1
    assert ("tercet_prompt_cache_bytes", frozenset({**MODEL, "tier": "ram"}.items())) in after
    assert value(after, "tercet_prompt_cache_budget_bytes", **MODEL, tier="ram") > 0


def expected_outcome(content: Any) -> str:
    if content.type.endswith("_tool_result_error"):
        return str(content.error_code)
    return "ok" if content.return_code == 0 else "nonzero_exit"


@pytest.mark.skipif(unavailable_reason() is not None, reason=f"no sandbox: {unavailable_reason()}")
def test_a_code_execution_is_counted_with_its_outcome(
    server: str, client: anthropic.Anthropic
) -> None:
    before = scrape(server)
    message = ask(
        client,
        "List the files here.",
        max_tokens=60,
        tools=[{"type": "code_execution_20250825", "name": "code_execution"}],
        tool_choice={"type": "tool", "name": "bash_code_execution"},
    )
    after = scrape(server)
    results = [b for b in message.content if b.type == "bash_code_execution_tool_result"]
    assert len(results) == 1, [b.type for b in message.content]
    outcome = expected_outcome(results[0].content)
    assert (
        moved(
            before,
            after,
            "tercet_code_executions_total",
            tool="bash_code_execution",
            outcome=outcome,
        )
        == 1
    )
    every = sum(
        v - value(before, name, **dict(labels))
        for (name, labels), v in after.items()
        if name == "tercet_code_executions_total"
    )
    assert every == 1
    assert (
        moved(before, after, "tercet_code_execution_seconds_count", tool="bash_code_execution") == 1
    )
    # The tokens of all the reply's generations are the usage sent back.
    assert moved(before, after, "tercet_tokens_total", **MODEL, kind="output") == (
        message.usage.output_tokens
    )


@pytest.fixture(scope="module")
def mcp_server() -> Iterator[McpServerInfo]:
    with running_mcp_server("streamable-http") as info:
        yield info


def test_an_mcp_call_is_counted_with_its_outcome(
    server: str, client: anthropic.Anthropic, mcp_server: McpServerInfo
) -> None:
    before = scrape(server)
    message = client.beta.messages.create(
        model=CLAUDE_MODEL,
        max_tokens=40,
        messages=[{"role": "user", "content": "What is the secret word?"}],
        mcp_servers=[{"type": "url", "url": mcp_server.url, "name": "tools"}],
        tools=[
            {
                "type": "mcp_toolset",
                "mcp_server_name": "tools",
                "default_config": {"enabled": False},
                "configs": {"secret_word": {"enabled": True}},
            }
        ],
        tool_choice={"type": "any"},
        betas=["mcp-client-2025-11-20"],
        extra_body=GREEDY,
    )
    after = scrape(server)
    results = [b for b in message.content if b.type == "mcp_tool_result"]
    assert len(results) >= 1 and results[0].is_error is False
    assert SECRET_WORD in "".join(b.text for b in results[0].content)
    errors = sum(1 for r in results if r.is_error)
    assert moved(before, after, "tercet_mcp_calls_total", outcome="ok") == len(results) - errors
    assert moved(before, after, "tercet_mcp_calls_total", outcome="error") == errors
    assert moved(before, after, "tercet_mcp_call_seconds_count") == len(results)


def test_queue_depth_is_read_from_the_line_when_scraped() -> None:
    line = AdmissionQueue(max_active=1, max_waiting=4)
    engine = ScriptedEngine(["x"])
    metrics = ServerMetrics({engine.spec.id: engine}, {engine.spec.id: line})
    labels = {"model_name": engine.spec.id}

    def depth() -> tuple[float, float]:
        samples = parse(metrics.exposition().decode())
        return (
            value(samples, "vllm:num_requests_running", **labels),
            value(samples, "vllm:num_requests_waiting", **labels),
        )

    async def scenario() -> list[tuple[float, float]]:
        seen = [depth()]
        first = line.join()
        second = line.join()
        seen.append(depth())
        await first.__aenter__()  # gets the slot
        seen.append(depth())
        second.leave()
        seen.append(depth())
        await first.__aexit__(None, None, None)
        seen.append(depth())
        return seen

    assert asyncio.run(scenario()) == [(0, 0), (0, 2), (1, 1), (1, 0), (0, 0)]


@pytest.mark.parametrize(
    ("mode", "keyless", "with_key"), [("open", 200, 200), ("key", 401, 200), ("off", 404, 404)]
)
def test_who_may_scrape(tmp_path: Path, mode: str, keyless: int, with_key: int) -> None:
    config = ServerConfig(data_dir=tmp_path, api_keys=["scrape-key"], metrics=mode)  # type: ignore[arg-type]
    with BackgroundServer(create_app(config, [ScriptedEngine(["x"])])) as running:
        url = f"{running.base_url}/metrics"
        assert httpx.get(url).status_code == keyless
        bearer = {"authorization": "Bearer scrape-key"}  # how Prometheus sends credentials
        response = httpx.get(url, headers=bearer)
        assert response.status_code == with_key
        if with_key == 200:
            names = {family.name for family in text_string_to_metric_families(response.text)}
            assert {"vllm:num_requests_running", "tercet_http_requests"} <= names
