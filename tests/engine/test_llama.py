"""The embedded engine on the real model: prefix reuse, limits, and determinism."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import jsonschema
import pytest

from tercet.engine.base import (
    Conversation,
    Finish,
    SamplingParams,
    TextChunk,
    ToolCallDelta,
    ToolCallStart,
    ToolPolicy,
    Turn,
)
from tercet.engine.llama import MAX_CALLS_PER_REPLY, LlamaCppEngine
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
