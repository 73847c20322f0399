"""The embedded engine on the real model: prefix reuse, limits, and determinism."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import llama_cpp
import pytest

from tercet.cache.config import CacheConfig
from tercet.cache.store import PromptCache
from tercet.engine.base import (
    Breakpoint,
    CacheTTL,
    Conversation,
    Finish,
    PreparedPrompt,
    SamplingParams,
    TextChunk,
    ToolCallDelta,
    ToolCallStart,
    ToolPolicy,
    Turn,
)
from tercet.engine.bundled import BUNDLED_MODEL_ID, bundled_model_path
from tercet.engine.llama import MAX_CALLS_PER_REPLY, LlamaCppEngine, _Layout
from tercet.wire.content import TextBlockParam
from tercet.wire.requests import CustomToolParam
from tests.server.test_tools import SCHEMAS, TOOLS

STORY = "Here is some background about lighthouses. " * 40


def ask(*texts: str) -> Conversation:
    turns = [Turn("user", [TextBlockParam(type="text", text=t)]) for t in texts[:1]]
    for index, text in enumerate(texts[1:]):
        role = "assistant" if index % 2 == 0 else "user"
        turns.append(Turn(role, [TextBlockParam(type="text", text=text)]))
    return Conversation(system=(), turns=turns)


@pytest.fixture
def evaluated(engine: LlamaCppEngine, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """How many tokens each llama.cpp evaluation call was given."""
    sizes: list[int] = []
    original = engine._llama.eval

    def counting_eval(tokens: list[int]) -> None:
        sizes.append(len(tokens))
        original(tokens)

    monkeypatch.setattr(engine._llama, "eval", counting_eval)
    yield sizes


def run(
    engine: LlamaCppEngine,
    conversation: Conversation,
    max_tokens: int = 8,
    tools: ToolPolicy | None = None,
) -> list[object]:
    prompt = engine.prepare_sync(conversation)
    params = SamplingParams(max_tokens=max_tokens, temperature=0, tools=tools)
    return list(engine.generate_sync(prompt, params, threading.Event()))


def test_a_follow_up_prefills_only_what_is_new(
    engine: LlamaCppEngine, evaluated: list[int]
) -> None:
    first = ask(STORY + "Summarise that.")
    run(engine, first)
    whole = len(engine.prepare_sync(first).tokens)
    evaluated.clear()
    follow_up = ask(STORY + "Summarise that.", "Lighthouses guide ships.", "And in one word?")
    run(engine, follow_up)
    added = len(engine.prepare_sync(follow_up).tokens) - whole
    prefilled = sum(evaluated) - 7  # one evaluation per generated token after the first
    assert whole > 300
    assert prefilled <= added + 8, (prefilled, added)  # the shared prefix came from the cache


def test_a_new_conversation_prefills_after_the_template_header(
    engine: LlamaCppEngine, evaluated: list[int]
) -> None:
    """A prompt whose first message is new still reuses the chat template's own header (the
    bundled model's default system prompt), which is a segment of every prompt."""
    run(engine, ask("Name three colours."))
    other = engine.prepare_sync(ask("Write a poem about the sea."))
    assert isinstance(other.payload, _Layout)
    header, user_end = other.payload.segments
    head = engine._llama.detokenize(other.tokens[:header], special=True).decode()
    assert "You are a helpful AI assistant" in head and "poem" not in head
    evaluated.clear()
    list(
        engine.generate_sync(other, SamplingParams(max_tokens=1, temperature=0), threading.Event())
    )
    # The user's text, then the generation prompt after it (a block end is a segment).
    assert evaluated[:2] == [user_end - header, len(other.tokens) - user_end]


def test_greedy_generation_is_repeatable_whatever_the_cache_holds(engine: LlamaCppEngine) -> None:
    question = ask("Name three colours.")
    first = run(engine, question, max_tokens=20)
    run(engine, ask(STORY + "Something else entirely."))  # the cache now holds another prompt
    assert run(engine, question, max_tokens=20) == first


def test_max_tokens_stops_exactly(engine: LlamaCppEngine) -> None:
    events = run(engine, ask("Count from one to one hundred in words."), max_tokens=5)
    finish = events[-1]
    assert (
        isinstance(finish, Finish) and finish.reason == "max_tokens" and finish.output_tokens == 5
    )
    assert all(isinstance(e, TextChunk) for e in events[:-1])


def tool_calls(
    engine: LlamaCppEngine, prompt: str, parallel: bool
) -> tuple[list[dict[str, str]], Finish]:
    """The calls of one greedy reply that must call one of TOOLS, and how it finished."""
    tools = [CustomToolParam.model_validate(t) for t in TOOLS]
    conversation = Conversation(system=(), turns=ask(prompt).turns, tools=tools)
    policy = ToolPolicy(schemas=SCHEMAS, choice="any", parallel=parallel)
    events = run(engine, conversation, max_tokens=400, tools=policy)
    calls: list[dict[str, str]] = []
    for event in events:
        if isinstance(event, ToolCallStart):
            calls.append({"name": event.name, "input": ""})
        elif isinstance(event, ToolCallDelta):
            calls[-1]["input"] += event.partial_json
    finish = events[-1]
    assert isinstance(finish, Finish)
    return calls, finish


# Greedy, the bundled model follows its first call on this prompt with more and more calls.
REPEATING = "Search for the word 'deprecated' in src and tests."


def test_one_tool_call_per_reply_by_default(engine: LlamaCppEngine) -> None:
    calls, finish = tool_calls(engine, REPEATING, parallel=True)
    assert len(calls) == 1 and finish.reason == "tool_use"
    jsonschema.validate(json.loads(calls[0]["input"]), SCHEMAS[calls[0]["name"]])


def test_parallel_calls_when_the_engine_and_request_allow_them(
    engine: LlamaCppEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine, "_parallel_tool_calls", True)
    calls, finish = tool_calls(engine, REPEATING, parallel=True)
    assert 2 <= len(calls) <= MAX_CALLS_PER_REPLY, calls
    complete = calls if finish.reason == "tool_use" else calls[:-1]
    for call in complete:  # each call is opened and filled under its grammar
        jsonschema.validate(json.loads(call["input"]), SCHEMAS[call["name"]])
    # disable_parallel_tool_use (parallel=False in the policy) still means one call.
    calls, finish = tool_calls(engine, REPEATING, parallel=False)
    assert len(calls) == 1 and finish.reason == "tool_use"


def test_tool_inputs_never_hold_raw_control_characters(engine: LlamaCppEngine) -> None:
    # Greedy, the model writes a newline inside this string: the grammar makes it escape it.
    schema = {"type": "object", "properties": {"code": {"type": "string"}}, "required": ["code"]}
    tool = CustomToolParam(name="code_execution", description="Run Python", input_schema=schema)
    conversation = Conversation(
        system=(), turns=ask("Compute 2+2 in Python and print it.").turns, tools=[tool]
    )
    policy = ToolPolicy(schemas={"code_execution": schema}, choice="tool", name="code_execution")
    events = run(engine, conversation, max_tokens=60, tools=policy)
    written = "".join(e.partial_json for e in events if isinstance(e, ToolCallDelta))
    assert written.startswith('{"code": "')
    assert not any(ord(c) < 0x20 for c in written), written


@pytest.fixture(scope="module")
def cached_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaCppEngine]:
    """The bundled model with a prompt cache of its own (small prefixes count)."""
    cache = PromptCache(CacheConfig(min_tokens=64), tmp_path_factory.mktemp("prompt-cache"))
    engine = LlamaCppEngine(
        bundled_model_path(), model_id=BUNDLED_MODEL_ID, context_window=2048, cache=cache
    )
    yield engine
    asyncio.run(engine.aclose())


def manual(topic: str, scope: str = "", ttl: CacheTTL = "5m", marks: int = 1) -> Conversation:
    """A long system prompt and a question, with breakpoints on the first `marks` blocks."""
    system = [TextBlockParam(type="text", text=f"A manual about {topic}. " + STORY)]
    return Conversation(
        system=system,
        turns=ask("Summarise that.").turns,
        breakpoints=tuple(Breakpoint(i, ttl) for i in range(marks)),
        cache_scope=scope,
    )


def generate(engine: LlamaCppEngine, prompt: PreparedPrompt) -> list[object]:
    params = SamplingParams(max_tokens=6, temperature=0)
    return list(engine.generate_sync(prompt, params, threading.Event()))


def count_evaluations(engine: LlamaCppEngine, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    sizes: list[int] = []
    original = engine._llama.eval

    def counting_eval(tokens: list[int]) -> None:
        sizes.append(len(tokens))
        original(tokens)

    monkeypatch.setattr(engine._llama, "eval", counting_eval)
    return sizes


def test_cached_prefixes_are_kept_apart_by_scope(
    cached_engine: LlamaCppEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = cached_engine.prepare_sync(manual("scopes", scope="owner-a"))
    assert first.cache.written > 64 and first.cache.read == 0
    answer = generate(cached_engine, first)
    evaluated = count_evaluations(cached_engine, monkeypatch)
    other = cached_engine.prepare_sync(manual("scopes", scope="owner-b"))
    assert other.cache == first.cache  # written again, nothing read
    # Nor is the prompt reused from the context, which would show as speed what it held.
    assert generate(cached_engine, other) == answer
    assert sum(evaluated) >= len(other.tokens)
    again = cached_engine.prepare_sync(manual("scopes", scope="owner-a"))
    assert again.cache.read == first.cache.written and again.cache.written == 0


def test_a_state_that_fails_to_load_is_dropped_and_a_shorter_one_used(
    cached_engine: LlamaCppEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = cached_engine.cache
    assert cache is not None
    conversation = manual("loading", ttl="1h", marks=2)  # two snapshots, taken at once
    first = cached_engine.prepare_sync(conversation)
    answer = generate(cached_engine, first)
    assert isinstance(first.payload, _Layout) and first.payload.plan is not None
    shorter, longer = (write.point for write in first.payload.plan.writes)
    generate(cached_engine, cached_engine.prepare_sync(manual("something else")))
    loads: list[int] = []
    original = llama_cpp.llama_state_seq_set_data

    def fail_first_load(*args: object) -> int:
        loads.append(1)
        return 0 if len(loads) == 1 else int(original(*args))  # type: ignore[arg-type]

    monkeypatch.setattr(llama_cpp, "llama_state_seq_set_data", fail_first_load)
    evaluated = count_evaluations(cached_engine, monkeypatch)
    again = cached_engine.prepare_sync(conversation)
    assert again.cache.read == longer.tokens
    assert generate(cached_engine, again) == answer
    assert len(loads) == 2  # the longer state failed, the shorter one loaded
    assert sum(evaluated) < len(again.tokens) - shorter.tokens + 8
    assert cache.tokens(longer.key) is None  # never tried (or billed as read) again
    assert cache.tokens(shorter.key) == shorter.tokens


def test_a_live_entry_that_cannot_be_captured_is_forgotten(
    cached_engine: LlamaCppEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = cached_engine.cache
    assert cache is not None
    conversation = manual("capturing")
    first = cached_engine.prepare_sync(conversation)
    generate(cached_engine, first)
    assert isinstance(first.payload, _Layout) and first.payload.plan is not None
    key = first.payload.plan.writes[0].point.key
    assert (key, first.cache.written) in cache.live()
    monkeypatch.setattr(llama_cpp, "llama_state_seq_get_data", lambda *args: 0)
    generate(cached_engine, cached_engine.prepare_sync(manual("another prompt")))
    assert cache.tokens(key) is None  # not a hit that no state can serve
    assert cached_engine.prepare_sync(conversation).cache.read == 0


def test_a_memory_that_cannot_drop_a_suffix_is_cleared_and_filled_again(
    engine: LlamaCppEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    question = ask(STORY + "Summarise that.")
    follow_up = ask(STORY + "Summarise that.", "Lighthouses guide ships.", "And in one word?")
    run(engine, question)
    expected = run(engine, follow_up)
    run(engine, question)
    original = llama_cpp.llama_memory_seq_rm

    def recurrent_seq_rm(memory: object, seq: int, p0: int, p1: int) -> bool:
        # As a recurrent memory: a whole sequence may go, never part of what it holds.
        if 0 < p0 <= llama_cpp.llama_memory_seq_pos_max(memory, seq):  # type: ignore[arg-type]
            return False
        return bool(original(memory, seq, p0, p1))  # type: ignore[arg-type]

    monkeypatch.setattr(llama_cpp, "llama_memory_seq_rm", recurrent_seq_rm)
    evaluated = count_evaluations(engine, monkeypatch)
    assert run(engine, follow_up) == expected
    assert sum(evaluated) >= len(engine.prepare_sync(follow_up).tokens)


def test_prompt_caching_is_off_for_recurrent_models(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(llama_cpp, "llama_model_is_hybrid", lambda model: True)
    cache = PromptCache(CacheConfig(min_tokens=64), tmp_path)
    with caplog.at_level(logging.WARNING, logger="tercet.engine.llama"):
        hybrid = LlamaCppEngine(bundled_model_path(), context_window=512, cache=cache)
    try:
        assert hybrid.cache is None and hybrid.cache_stats() is None
        assert "prompt caching is off" in caplog.text and "recurrent or hybrid" in caplog.text
    finally:
        asyncio.run(hybrid.aclose())
