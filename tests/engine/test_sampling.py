"""The embedded engine's sampler on the real model: grammars checked lazily, and penalties."""

from __future__ import annotations

import ctypes
import json
import math
import threading

import jsonschema
import llama_cpp
import numpy as np
import pytest

from tercet.engine.base import (
    Conversation,
    RepetitionPenalty,
    SamplingParams,
    TextChunk,
    ToolCallDelta,
    ToolPolicy,
    Turn,
)
from tercet.engine.llama import LlamaCppEngine
from tercet.engine.sampling import GrammarError, TokenSampler
from tercet.wire.content import TextBlockParam
from tercet.wire.requests import CustomToolParam
from tests.server.test_tools import SCHEMAS, TOOLS

ANSWERS = 'root ::= "yes" | "no" | "maybe" | "never" | "always"'


def conversation(text: str, tools: bool = False) -> Conversation:
    return Conversation(
        system=(),
        turns=[Turn("user", [TextBlockParam(type="text", text=text)])],
        tools=[CustomToolParam.model_validate(t) for t in TOOLS] if tools else (),
    )


def prefilled(engine: LlamaCppEngine, text: str) -> None:
    """The context holds the prompt for `text`, with the logits of what follows it."""
    prompt = engine.prepare_sync(conversation(text))
    engine._prefill(prompt, threading.Event())


def allowed_by_grammar(engine: LlamaCppEngine, gbnf: str) -> tuple[np.ndarray, np.ndarray]:
    """Every candidate of the next token with its logit after full filtering by the grammar,
    as llama.cpp's grammar sampler does in a chain (the reference the lazy check must match)."""
    llm = engine._llama
    n_vocab = llm.n_vocab()
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    grammar = llama_cpp.llama_sampler_init_grammar(vocab, gbnf.encode(), b"root")
    try:
        data = (llama_cpp.llama_token_data * n_vocab)()
        view = np.ctypeslib.as_array(data)
        view["id"] = np.arange(n_vocab)
        view["logit"] = np.ctypeslib.as_array(
            llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,)
        )
        candidates = llama_cpp.llama_token_data_array(
            data=ctypes.cast(data, llama_cpp.llama_token_data_p),
            size=n_vocab,
            selected=-1,
            sorted=False,
        )
        llama_cpp.llama_sampler_apply(grammar, ctypes.byref(candidates))
    finally:
        llama_cpp.llama_sampler_free(grammar)
    finite = np.isfinite(view["logit"])
    return view["id"][finite].copy(), view["logit"][finite].copy()


def test_a_token_the_grammar_rejects_is_resampled_from_what_it_allows(
    engine: LlamaCppEngine,
) -> None:
    prefilled(engine, "Tell me a story about a dragon.")
    ids, logits = allowed_by_grammar(engine, ANSWERS)
    sampler = TokenSampler(engine._llama, SamplingParams(max_tokens=1, temperature=0), None, 0)
    free = sampler.sample()
    assert free not in ids  # the model would rather start the story: the check must reject it
    sampler.constrain(ANSWERS)
    token = sampler.sample()
    assert sampler.rejections == 1
    assert token == ids[np.argmax(logits)]  # greedy under full filtering picks the same


def test_lazy_checking_draws_from_the_same_distribution_as_full_filtering(
    engine: LlamaCppEngine,
) -> None:
    prefilled(engine, "Will it rain tomorrow? Answer in one word.")
    ids, logits = allowed_by_grammar(engine, ANSWERS)
    exact = np.exp(logits - logits.max())
    exact /= exact.sum()
    draws = 600
    counts = dict.fromkeys(ids.tolist(), 0)
    params = SamplingParams(max_tokens=1, temperature=1.0)
    for seed in range(draws):  # fixed seeds: the same draws every run
        sampler = TokenSampler(engine._llama, params, None, seed)
        sampler.constrain(ANSWERS)
        counts[sampler.sample()] += 1
        sampler.close()
    # Pearson's chi-square over the likely tokens, the unlikely ones pooled.
    likely = exact * draws >= 5
    observed = [counts[t] for t in ids[likely].tolist()]
    expected = (exact[likely] * draws).tolist()
    observed.append(draws - sum(observed))
    expected.append(draws - sum(expected))
    if expected[-1] < 1e-9:
        observed.pop(), expected.pop()
    chi2 = sum((o - e) ** 2 / e for o, e in zip(observed, expected, strict=True))
    dof = len(observed) - 1
    assert dof >= 1, "the grammar must leave the model a real choice"
    # The 0.999 quantile of chi-square, by the Wilson-Hilferty approximation.
    z = 3.09
    limit = dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3
    assert chi2 < limit, (observed, expected)


def test_dry_alone_turns_the_model_away_from_continuing_a_repeat(engine: LlamaCppEngine) -> None:
    prefilled(engine, "Tell me a story about a dragon.")
    greedy = SamplingParams(max_tokens=1, temperature=0)
    chosen = TokenSampler(engine._llama, greedy, None, 0).sample()
    dry = TokenSampler(engine._llama, greedy, RepetitionPenalty(dry_multiplier=50.0), 0)
    a, b, c = engine.tokenize_fragment(" the old lighthouse")[:3]
    dry.write([a, b, c, chosen, a, b, c])  # `chosen` would make "a b c chosen" a repeat
    assert dry.sample() != chosen
    undisturbed = TokenSampler(engine._llama, greedy, RepetitionPenalty(dry_multiplier=50.0), 0)
    undisturbed.write([a, b, c])  # nothing repeated yet
    assert undisturbed.sample() == chosen


def test_a_grammar_llama_cpp_cannot_parse_is_an_error(engine: LlamaCppEngine) -> None:
    sampler = TokenSampler(engine._llama, SamplingParams(max_tokens=1), None, 0)
    with pytest.raises(GrammarError):
        sampler.constrain("root ::= (")


def generate(
    engine: LlamaCppEngine, text: str, params: SamplingParams, tools: bool
) -> list[object]:
    prompt = engine.prepare_sync(conversation(text, tools=tools))
    return list(engine.generate_sync(prompt, params, threading.Event()))


def tool_input(events: list[object]) -> str:
    return "".join(e.partial_json for e in events if isinstance(e, ToolCallDelta))


STRONG = RepetitionPenalty(dry_multiplier=2.0, repeat=1.5)


def test_penalties_change_free_text_but_never_a_tool_input(engine: LlamaCppEngine) -> None:
    echo = "Repeat after me five times: hello world hello world hello world"
    plain = SamplingParams(max_tokens=40, temperature=0, repetition=RepetitionPenalty())
    penalised = SamplingParams(max_tokens=40, temperature=0, repetition=STRONG)
    assert generate(engine, echo, plain, tools=False) != generate(
        engine, echo, penalised, tools=False
    )
    policy = ToolPolicy(schemas=SCHEMAS, choice="tool", name="search_files")
    ask = "Search for 'aaa aaa aaa aaa' in the files aaa aaa aaa."
    plain_call = generate(engine, ask, SamplingParams(200, 0, tools=policy), tools=True)
    call = generate(engine, ask, SamplingParams(200, 0, tools=policy, repetition=STRONG), True)
    assert tool_input(call) == tool_input(plain_call)
    jsonschema.validate(json.loads(tool_input(call)), SCHEMAS["search_files"])


def test_the_model_default_applies_when_a_request_sets_no_penalty(
    engine: LlamaCppEngine,
) -> None:
    model = engine.model_path
    with_default = LlamaCppEngine(model, context_window=1024, default_repetition=STRONG)
    try:
        ask = "List the numbers from one to twenty, one per line."
        text = SamplingParams(max_tokens=40, temperature=0)
        by_default = generate(with_default, ask, text, tools=False)
        explicit = generate(with_default, ask, SamplingParams(40, 0, repetition=STRONG), False)
        none = generate(
            with_default, ask, SamplingParams(40, 0, repetition=RepetitionPenalty()), False
        )
        assert by_default == explicit != none
        assert all(isinstance(e, TextChunk) for e in by_default[:-1])
    finally:
        with_default._executor.shutdown()
        with_default._llama.close()
