"""The embedded engine on the real model: prefix reuse, limits, and determinism."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from tercet.engine.base import Conversation, Finish, SamplingParams, TextChunk, Turn
from tercet.engine.llama import LlamaCppEngine
from tercet.wire.content import TextBlockParam

STORY = "Here is some background about lighthouses. " * 40


def ask(*texts: str) -> Conversation:
    turns = [Turn("user", [TextBlockParam(type="text", text=t)]) for t in texts[:1]]
    for index, text in enumerate(texts[1:]):
        role = "assistant" if index % 2 == 0 else "user"
        turns.append(Turn(role, [TextBlockParam(type="text", text=text)]))
    return Conversation(system=None, turns=turns)


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


def run(engine: LlamaCppEngine, conversation: Conversation, max_tokens: int = 8) -> list[object]:
    prompt = engine.prepare_sync(conversation)
    params = SamplingParams(max_tokens=max_tokens, temperature=0)
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
