"""Prompt caching on the real model through the SDK: billing, reuse, expiry, restarts."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest

from tercet.cache.config import CacheConfig
from tercet.cache.store import PromptCache
from tercet.engine.bundled import BUNDLED_MODEL_ID, bundled_model_path
from tercet.engine.llama import LlamaCppEngine
from tercet.server.app import create_app
from tercet.server.config import ServerConfig
from tercet.server.runner import BackgroundServer
from tests.conftest import CLAUDE_MODEL, cli_server

MIN_TOKENS = 128  # small prefixes keep the tests fast; the default (1024) is Anthropic's
_serial = itertools.count()


class Clock:
    def __init__(self) -> None:
        self.now = 2_000_000_000.0

    def __call__(self) -> float:
        return self.now


def manual(topic: str) -> str:
    """A system prompt of a few hundred tokens, different for every topic."""
    lines = [
        f"Rule {i} of the {topic} manual: check item {i * 7} before step {i + 1}."
        for i in range(20)
    ]
    return "\n".join(lines)


def fresh_manual() -> str:
    return manual(f"topic {next(_serial)}")


@pytest.fixture(scope="module")
def clock() -> Clock:
    return Clock()


@pytest.fixture(scope="module")
def cached_engine(clock: Clock, tmp_path_factory: pytest.TempPathFactory) -> LlamaCppEngine:
    directory = tmp_path_factory.mktemp("prompt-cache")
    cache = PromptCache(CacheConfig(min_tokens=MIN_TOKENS), directory, clock)
    return LlamaCppEngine(bundled_model_path(), model_id=BUNDLED_MODEL_ID, cache=cache)


@pytest.fixture(scope="module")
def cached_server(
    cached_engine: LlamaCppEngine, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    config = ServerConfig(data_dir=tmp_path_factory.mktemp("data"), api_keys=[])
    with BackgroundServer(create_app(config, [cached_engine])) as running:
        yield running.base_url


@pytest.fixture
def cached(cached_server: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=cached_server, api_key="k", max_retries=0)


def ask(
    client: anthropic.Anthropic,
    system: str | list[dict[str, Any]],
    question: str = "What is rule 3?",
    ttl: str = "5m",
    **params: Any,
) -> anthropic.types.Message:
    if isinstance(system, str):
        system = [
            {"type": "text", "text": system, "cache_control": {"type": "ephemeral", "ttl": ttl}}
        ]
    body: dict[str, Any] = {"max_tokens": 12, "extra_body": {"temperature": 0}}
    return client.messages.create(
        model=CLAUDE_MODEL,
        system=system,  # type: ignore[arg-type]
        messages=[{"role": "user", "content": question}],
        **(body | params),
    )


def billed(message: anthropic.types.Message) -> tuple[int, int, int]:
    usage = message.usage
    return (
        usage.input_tokens,
        usage.cache_creation_input_tokens or 0,
        usage.cache_read_input_tokens or 0,
    )


def test_a_write_then_a_read_of_the_same_prefix(cached: anthropic.Anthropic) -> None:
    system = fresh_manual()
    first = ask(cached, system)
    plain, written, read = billed(first)
    assert written > MIN_TOKENS and read == 0
    assert first.usage.cache_creation is not None
    assert first.usage.cache_creation.ephemeral_5m_input_tokens == written
    second = ask(cached, system, question="And what is rule 4?")
    assert billed(second)[1:] == (0, written)
    assert second.usage.input_tokens < plain + 5  # only the question and the turn markers
    # The total is the whole prompt, as count_tokens says.
    counted = cached.messages.count_tokens(
        model=CLAUDE_MODEL,
        system=system,
        messages=[{"role": "user", "content": "And what is rule 4?"}],
    )
    assert sum(billed(second)) == counted.input_tokens


def test_a_read_restores_the_prefix_instead_of_computing_it(
    cached: anthropic.Anthropic, cached_engine: LlamaCppEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    system = fresh_manual()
    written = billed(ask(cached, system))[1]
    ask(cached, fresh_manual())  # the context now holds another prompt
    evaluated: list[int] = []
    original = cached_engine._llama.eval

    def counting_eval(tokens: list[int]) -> None:
        evaluated.append(len(tokens))
        original(tokens)

    monkeypatch.setattr(cached_engine._llama, "eval", counting_eval)
    message = ask(cached, system, question="Which rule mentions item 21?")
    assert billed(message)[2] == written
    prefilled = evaluated[0] if evaluated else 0  # then one evaluation per generated token
    assert 0 < sum(evaluated) - (len(evaluated) - 1) < message.usage.input_tokens + 2
    assert prefilled <= message.usage.input_tokens


def test_a_changed_byte_before_the_breakpoint_misses(cached: anthropic.Anthropic) -> None:
    system = fresh_manual()
    ask(cached, system)
    changed = system.replace("Rule 0", "Rule O", 1)
    _, written, read = billed(ask(cached, changed))
    assert read == 0 and written > MIN_TOKENS


def test_cached_and_uncached_greedy_outputs_are_equal(
    cached: anthropic.Anthropic, client: anthropic.Anthropic
) -> None:
    system = fresh_manual()
    question = "Summarise the manual in one sentence."
    cold = ask(cached, system, question=question)
    warm = ask(cached, system, question=question)
    uncached = ask(client, system, question=question)  # the session's engine has no cache
    assert billed(cold)[1] > 0 and billed(warm)[2] > 0 and billed(uncached)[1:] == (0, 0)
    assert cold.content[0].type == "text"
    assert cold.content == warm.content == uncached.content


def test_entries_expire_after_their_ttl(cached: anthropic.Anthropic, clock: Clock) -> None:
    minutes, hour = fresh_manual(), fresh_manual()
    ask(cached, minutes)
    ask(cached, hour, ttl="1h")
    hour_written = ask(cached, hour, ttl="1h")
    assert billed(hour_written)[2] > 0
    clock.now += 301
    assert billed(ask(cached, minutes))[2] == 0  # expired: written again
    assert billed(ask(cached, hour, ttl="1h"))[2] > 0
    clock.now += 3601
    assert billed(ask(cached, hour, ttl="1h"))[2] == 0


def test_one_hour_writes_are_billed_as_such(cached: anthropic.Anthropic) -> None:
    message = ask(cached, fresh_manual(), ttl="1h")
    creation = message.usage.cache_creation
    assert creation is not None and creation.ephemeral_5m_input_tokens == 0
    assert creation.ephemeral_1h_input_tokens == message.usage.cache_creation_input_tokens > 0


def test_automatic_caching_and_the_attribution_block(cached: anthropic.Anthropic) -> None:
    # The automatic breakpoint sits on the last block and moves forward as the conversation
    # grows; Claude Code's first system block changes on every request and is left out.
    system = fresh_manual()

    def claude_code(fingerprint: str, messages: list[dict[str, Any]]) -> anthropic.types.Message:
        return cached.messages.create(
            model=CLAUDE_MODEL,
            max_tokens=12,
            system=[
                {"type": "text", "text": f"x-anthropic-billing-header: cch={fingerprint};"},
                {"type": "text", "text": system},
            ],
            messages=messages,  # type: ignore[arg-type]
            extra_body={"temperature": 0, "cache_control": {"type": "ephemeral"}},
        )

    conversation: list[dict[str, Any]] = [{"role": "user", "content": "What is rule 1?"}]
    first = claude_code("aaaa", conversation)
    _, written, read = billed(first)
    assert written > MIN_TOKENS and read == 0
    conversation += [
        {"role": "assistant", "content": first.content},
        {"role": "user", "content": "And rule 2?"},
    ]
    second = claude_code("bbbb", conversation)
    assert billed(second)[2] == written  # found by looking back from the new last block
    assert billed(second)[1] > 0  # and the turn that was added is written


def test_a_growing_conversation_costs_one_snapshot(
    cached: anthropic.Anthropic, cached_engine: LlamaCppEngine
) -> None:
    assert cached_engine.cache is not None
    system = fresh_manual()
    conversation: list[dict[str, Any]] = []
    replies = []
    for question in ("What is rule 1?", "And rule 2?", "And rule 3?"):
        conversation.append({"role": "user", "content": question})
        reply = cached.messages.create(
            model=CLAUDE_MODEL,
            max_tokens=8,
            system=system,
            messages=conversation,  # type: ignore[arg-type]
            extra_body={"temperature": 0, "cache_control": {"type": "ephemeral"}},
        )
        replies.append(reply)
        conversation.append({"role": "assistant", "content": reply.content})
    assert all(billed(r)[1] > 0 for r in replies)  # each turn writes its new part
    # Each turn extended the last: their entries are still in the engine's context.
    before = cached_engine.cache.stats()
    assert before.live_entries >= 3
    ask(cached, fresh_manual())  # another prompt takes the context: one snapshot is taken
    after = cached_engine.cache.stats()
    assert after.ram_entries == before.ram_entries + 1
    assert after.alias_entries == before.alias_entries + 2
    # The first turn is served from the third turn's snapshot, cut short, with the same answer.
    again = cached.messages.create(
        model=CLAUDE_MODEL,
        max_tokens=8,
        system=system,
        messages=conversation[:1],  # type: ignore[arg-type]
        extra_body={"temperature": 0, "cache_control": {"type": "ephemeral"}},
    )
    assert billed(again)[1:] == (0, billed(replies[0])[1])
    assert again.content == replies[0].content


def test_short_prefixes_and_streams(cached: anthropic.Anthropic) -> None:
    assert billed(ask(cached, "Be brief."))[1:] == (0, 0)  # under the minimum: no error, no cache
    system = fresh_manual()
    written = billed(ask(cached, system))[1]
    with cached.messages.stream(
        model=CLAUDE_MODEL,
        max_tokens=8,
        system=[{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}],
        messages=[{"role": "user", "content": "Rule 5?"}],
    ) as stream:
        start = next(e for e in stream if e.type == "message_start")
        final = stream.get_final_message()
    assert start.message.usage.cache_read_input_tokens == written
    assert final.usage.cache_read_input_tokens == written


def test_max_tokens_zero_fills_the_cache_without_generating(cached: anthropic.Anthropic) -> None:
    system = fresh_manual()
    warmed = ask(cached, system, max_tokens=0)
    assert (warmed.content, warmed.stop_reason, warmed.usage.output_tokens) == (
        [],
        "max_tokens",
        0,
    )
    written = billed(warmed)[1]
    assert written > MIN_TOKENS
    assert billed(ask(cached, system))[2] == written


def test_five_breakpoints_are_a_400(cached: anthropic.Anthropic) -> None:
    marked = [
        {"type": "text", "text": f"part {i}", "cache_control": {"type": "ephemeral"}}
        for i in range(5)
    ]
    with pytest.raises(anthropic.BadRequestError, match="A maximum of 4 blocks"):
        cached.messages.create(
            model=CLAUDE_MODEL,
            max_tokens=5,
            messages=[{"role": "user", "content": marked}],  # type: ignore[list-item]
        )
    mixed = [
        {"type": "text", "text": "a", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "b", "cache_control": {"type": "ephemeral", "ttl": "1h"}},
    ]
    with pytest.raises(anthropic.BadRequestError, match="ttl='1h'"):
        cached.messages.create(
            model=CLAUDE_MODEL,
            max_tokens=5,
            messages=[{"role": "user", "content": mixed}],  # type: ignore[list-item]
        )


def test_stats_report_sizes(cached: anthropic.Anthropic, cached_server: str) -> None:
    ask(cached, fresh_manual())
    stats = httpx.get(f"{cached_server}/stats").json()
    cache = stats[BUNDLED_MODEL_ID]["prompt_cache"]
    assert cache["entries"] >= 1 and cache["ram_bytes"] > 0 and cache["writes"] >= 1
    assert cache["ram_bytes"] <= cache["ram_budget"]


def test_one_hour_entries_survive_a_server_restart(tmp_path: Path) -> None:
    options = ("--data-dir", str(tmp_path), "--cache-min-tokens", str(MIN_TOKENS))
    system = fresh_manual()
    with cli_server(*options) as base_url:
        client = anthropic.Anthropic(base_url=base_url, api_key="k", max_retries=0)
        written = ask(client, system, ttl="1h").usage.cache_creation_input_tokens
        assert written
    assert list((tmp_path / "prompt-cache").glob("*.kv"))
    with cli_server(*options) as base_url:
        client = anthropic.Anthropic(base_url=base_url, api_key="k", max_retries=0)
        assert billed(ask(client, system, ttl="1h"))[2] == written
