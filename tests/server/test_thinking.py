"""Hybrid reasoning on the real model: thinking blocks, budgets, signatures, display."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest

from tercet.engine.base import Conversation, Finish, SamplingParams, TextChunk, ThinkingChunk, Turn
from tercet.engine.llama import LlamaCppEngine
from tercet.server.signatures import ThinkingSigner
from tercet.server.thinking import thinking_budget
from tercet.wire.content import TextBlockParam
from tercet.wire.requests import MessageCreateRequest
from tests.conftest import CLAUDE_MODEL

QUESTION = [{"role": "user", "content": "What is 12 + 7?"}]
THINK = {"type": "enabled", "budget_tokens": 1024}


def think(client: anthropic.Anthropic, **extra: Any) -> anthropic.types.Message:
    # Greedy, so that what the 135M model writes is the same on every run.
    params: dict[str, Any] = {
        "max_tokens": 1200,
        "thinking": THINK,
        "messages": QUESTION,
        "extra_body": {"temperature": 0},
    } | extra
    return client.messages.create(model=CLAUDE_MODEL, **params)


def test_thinking_comes_first_signed_and_counted(client: anthropic.Anthropic) -> None:
    message = think(client)
    first = message.content[0]
    assert first.type == "thinking"
    assert first.thinking.strip() and first.signature
    assert all(b.type == "text" for b in message.content[1:])
    details = message.usage.output_tokens_details
    assert details is not None and 0 < details.thinking_tokens <= 1024
    assert details.thinking_tokens <= message.usage.output_tokens


def test_no_thinking_block_when_disabled_or_absent(client: anthropic.Anthropic) -> None:
    for thinking in ({"type": "disabled"}, None):
        extra = {"thinking": thinking} if thinking else {}
        message = client.messages.create(
            model=CLAUDE_MODEL,
            max_tokens=20,
            messages=QUESTION,
            extra_body={"temperature": 0} | extra,
        )
        assert [b.type for b in message.content] in (["text"], [])


def test_budget_is_enforced_exactly_in_the_engine(engine: LlamaCppEngine) -> None:
    prompts = [
        "Explain in detail how a steam engine works.",
        "List every planet and describe each one.",
        "Why do cats purr? Consider every theory.",
        "Plan a week-long trip through Italy, day by day.",
        "Prove that there are infinitely many primes.",
        "Describe the history of the printing press.",
    ]
    budget = 12
    for text in prompts:
        conversation = Conversation(
            system=(),
            turns=[Turn("user", [TextBlockParam(type="text", text=text)])],
            thinking=True,
        )
        prompt = engine.prepare_sync(conversation)
        params = SamplingParams(max_tokens=60, temperature=0, thinking_budget=budget)
        events = list(engine.generate_sync(prompt, params, threading.Event()))
        thought = "".join(e.text for e in events if isinstance(e, ThinkingChunk))
        answer = "".join(e.text for e in events if isinstance(e, TextChunk))
        finish = events[-1]
        assert isinstance(finish, Finish)
        assert finish.thinking_tokens <= budget
        assert len(engine.tokenize_fragment(thought)) <= budget, thought
        assert "</think>" not in thought
        # Thinking text never follows answer text.
        kinds = [type(e) for e in events[:-1]]
        first_answer = kinds.index(TextChunk) if TextChunk in kinds else len(kinds)
        assert ThinkingChunk not in kinds[first_answer:]
        assert answer or finish.reason == "max_tokens"


def test_signature_round_trip(client: anthropic.Anthropic) -> None:
    first = think(client)
    follow_up = [
        *QUESTION,
        {"role": "assistant", "content": first.content},
        {"role": "user", "content": "And 3 + 3?"},
    ]
    again = client.messages.create(
        model=CLAUDE_MODEL, max_tokens=1200, thinking=THINK, messages=follow_up
    )
    assert again.content[0].type == "thinking"

    tampered = [b.model_dump() for b in first.content]
    tampered[0]["thinking"] += " (edited)"
    forged = [b.model_dump() for b in first.content]
    forged[0]["signature"] = ThinkingSigner(b"k" * 32).sign(forged[0]["thinking"])
    for content in (tampered, forged):
        with pytest.raises(anthropic.BadRequestError) as caught:
            client.messages.create(
                model=CLAUDE_MODEL,
                max_tokens=1200,
                thinking=THINK,
                messages=[
                    *QUESTION,
                    {"role": "assistant", "content": content},
                    {"role": "user", "content": "ok"},
                ],
            )
        assert "Invalid `signature` in `thinking` block" in caught.value.message
        assert "messages.1.content.0" in caught.value.message


def test_redacted_thinking_is_accepted_back(client: anthropic.Anthropic) -> None:
    message = client.messages.create(
        model=CLAUDE_MODEL,
        max_tokens=10,
        messages=[
            *QUESTION,
            {
                "role": "assistant",
                "content": [
                    {"type": "redacted_thinking", "data": "opaque"},
                    {"type": "text", "text": "19"},
                ],
            },
            {"role": "user", "content": "Thanks"},
        ],
    )
    assert message.usage.output_tokens > 0


def test_omitted_display_sends_only_the_signature(client: anthropic.Anthropic) -> None:
    message = think(client, thinking=THINK | {"display": "omitted"})
    block = message.content[0]
    assert block.type == "thinking" and block.thinking == "" and block.signature
    assert (
        message.usage.output_tokens_details
        and message.usage.output_tokens_details.thinking_tokens > 0
    )
    back = [
        *QUESTION,
        {"role": "assistant", "content": message.content},
        {"role": "user", "content": "More?"},
    ]
    assert client.messages.create(
        model=CLAUDE_MODEL, max_tokens=1200, thinking=THINK, messages=back
    ).content


def test_adaptive_thinking_is_not_forced_on_a_model_without_reasoning(
    client: anthropic.Anthropic,
) -> None:
    message = client.messages.create(
        model=CLAUDE_MODEL,
        max_tokens=64,
        thinking={"type": "adaptive", "display": "omitted"},
        output_config={"effort": "medium"},
        messages=QUESTION,
    )
    assert [b.type for b in message.content] == ["text"]


@pytest.mark.parametrize(
    ("effort", "max_tokens", "budget"),
    [(None, 100_000, 4096), ("low", 100_000, 1024), ("max", 100_000, 16384), ("medium", 512, 256)],
)
def test_adaptive_effort_maps_to_budgets(effort: str | None, max_tokens: int, budget: int) -> None:
    body: dict[str, Any] = {
        "model": "m",
        "max_tokens": max_tokens,
        "messages": QUESTION,
        "thinking": {"type": "adaptive"},
    }
    if effort:
        body["output_config"] = {"effort": effort}
    request = MessageCreateRequest.model_validate(body)
    assert thinking_budget(request, frozenset(), adaptive_model=True) == budget
    assert thinking_budget(request, frozenset(), adaptive_model=False) is None


def test_interleaved_budget_is_capped_by_max_tokens_and_never_negative(
    client: anthropic.Anthropic,
) -> None:
    betas = frozenset({"interleaved-thinking-2025-05-14"})
    for max_tokens, budget in ((0, 0), (2000, 1999), (50_000, 16_000)):
        request = MessageCreateRequest.model_validate(
            {
                "model": "m",
                "max_tokens": max_tokens,
                "messages": QUESTION,
                "thinking": {"type": "enabled", "budget_tokens": 16_000},
            }
        )
        assert thinking_budget(request, betas, adaptive_model=False) == budget
    warmed = client.beta.messages.create(
        model=CLAUDE_MODEL,
        max_tokens=0,
        messages=QUESTION,  # type: ignore[arg-type]
        thinking={"type": "enabled", "budget_tokens": 16_000},
        betas=list(betas),
    )
    assert (warmed.content, warmed.usage.output_tokens) == ([], 0)


def test_stream_sends_thinking_then_signature_then_text(server: str) -> None:
    body = {
        "model": CLAUDE_MODEL,
        "max_tokens": 1200,
        "stream": True,
        "thinking": THINK,
        "temperature": 0,
        "messages": QUESTION,
    }
    with httpx.stream("POST", f"{server}/v1/messages", json=body, timeout=120) as response:
        frames = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    events = [httpx.Response(200, content=f).json() for f in frames]
    blocks = [e for e in events if e["type"].startswith("content_block")]
    assert blocks[0]["type"] == "content_block_start"
    assert blocks[0]["content_block"] == {"type": "thinking", "thinking": "", "signature": ""}
    thinking = [e for e in blocks if e["index"] == 0]
    deltas = [e["delta"]["type"] for e in thinking if e["type"] == "content_block_delta"]
    assert deltas[:-1] and set(deltas[:-1]) == {"thinking_delta"}
    assert deltas[-1] == "signature_delta"  # just before the block closes
    assert thinking[-1]["type"] == "content_block_stop"
    assert {e["index"] for e in blocks} <= {0, 1}
    final = next(e for e in events if e["type"] == "message_delta")
    assert final["usage"]["output_tokens_details"]["thinking_tokens"] > 0


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"thinking": {"type": "enabled", "budget_tokens": 500}}, "greater than or equal to 1024"),
        (
            {"thinking": {"type": "enabled", "budget_tokens": 2000}},
            "`max_tokens` must be greater than `thinking.budget_tokens`",
        ),
        (
            {"messages": [*QUESTION, {"role": "assistant", "content": "The answer is"}]},
            "cannot be a text prefill",
        ),
    ],
)
def test_thinking_rules_are_400(
    client: anthropic.Anthropic, params: dict[str, Any], expected: str
) -> None:
    body: dict[str, Any] = {"max_tokens": 1500, "thinking": THINK, "messages": QUESTION} | params
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(model=CLAUDE_MODEL, **body)
    assert expected in caught.value.message


def test_interleaved_beta_lets_the_budget_exceed_max_tokens(client: anthropic.Anthropic) -> None:
    message = client.beta.messages.create(
        model=CLAUDE_MODEL,
        max_tokens=40,
        thinking={"type": "enabled", "budget_tokens": 2048},
        messages=QUESTION,  # type: ignore[arg-type]
        betas=["interleaved-thinking-2025-05-14"],
    )
    assert message.content[0].type == "thinking"
    assert message.usage.output_tokens <= 40


def test_count_tokens_includes_the_thinking_prompt(client: anthropic.Anthropic) -> None:
    plain = client.messages.count_tokens(model=CLAUDE_MODEL, messages=QUESTION)
    thinking = client.messages.count_tokens(model=CLAUDE_MODEL, messages=QUESTION, thinking=THINK)
    assert thinking.input_tokens > plain.input_tokens
    assert think(client).usage.input_tokens == thinking.input_tokens


def test_signer_secret_survives_restarts(tmp_path: Path) -> None:
    signature = ThinkingSigner.from_data_dir(tmp_path).sign("a thought")
    restarted = ThinkingSigner.from_data_dir(tmp_path)
    assert restarted.verify("a thought", signature)
    assert not restarted.verify("another thought", signature)
    assert not ThinkingSigner.from_data_dir(tmp_path / "elsewhere").verify("a thought", signature)
    assert not restarted.verify("a thought", "not base64 at all!")
    assert (tmp_path / "keys" / "thinking.key").stat().st_mode & 0o777 == 0o600


def test_thinking_between_tool_calls_needs_interleaving(client: anthropic.Anthropic) -> None:
    thought = think(client).content[0]
    assert thought.type == "thinking"
    tool = {
        "name": "add",
        "input_schema": {"type": "object", "properties": {"a": {"type": "integer"}}},
    }
    history: list[Any] = [
        {"role": "user", "content": "Add one to 41."},
        {
            "role": "assistant",
            "content": [
                thought.model_dump(),
                {"type": "tool_use", "id": "toolu_1", "name": "add", "input": {"a": 41}},
            ],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "42"}],
        },
    ]
    plain = client.messages.create(
        model=CLAUDE_MODEL, max_tokens=1200, thinking=THINK, tools=[tool], messages=history
    )
    assert all(b.type != "thinking" for b in plain.content)  # the turn already thought
    interleaved = client.beta.messages.create(
        model=CLAUDE_MODEL,
        max_tokens=1200,
        thinking=THINK,
        tools=[tool],  # type: ignore[list-item]
        messages=history,
        betas=["interleaved-thinking-2025-05-14"],
    )
    assert interleaved.content[0].type == "thinking"


def test_count_tokens_agrees_with_usage_when_adaptive_does_not_think(
    client: anthropic.Anthropic,
) -> None:
    # Regression: count_tokens once rendered the thinking prompt for adaptive requests that
    # the embedded model answers without thinking, so the two counts disagreed.
    adaptive: dict[str, Any] = {"thinking": {"type": "adaptive"}, "messages": QUESTION}
    counted = client.messages.count_tokens(model=CLAUDE_MODEL, **adaptive)
    message = client.messages.create(model=CLAUDE_MODEL, max_tokens=5, **adaptive)
    assert counted.input_tokens == message.usage.input_tokens
