"""The Messages API on the real model, driven by the official `anthropic` SDK."""

from __future__ import annotations

import anthropic
import httpx
import pytest

from tests.conftest import CLAUDE_MODEL

GREEDY = {"temperature": 0}  # the SDK has no sampling parameters any more; they go as extra_body
HELLO = [{"role": "user", "content": "Write one sentence about the sea."}]


def test_create_answers_with_text_and_exact_usage(client: anthropic.Anthropic) -> None:
    message = client.messages.create(
        model=CLAUDE_MODEL, max_tokens=24, messages=HELLO, extra_body=GREEDY
    )
    assert message.model == CLAUDE_MODEL  # the requested name is echoed
    assert message.id.startswith("msg_")
    assert message.role == "assistant"
    assert message.content and message.content[0].type == "text" and message.content[0].text.strip()
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert 0 < message.usage.output_tokens <= 24
    counted = client.messages.count_tokens(model=CLAUDE_MODEL, messages=HELLO)
    assert message.usage.input_tokens == counted.input_tokens > 10


def test_max_tokens_is_honoured_exactly(client: anthropic.Anthropic) -> None:
    message = client.messages.create(
        model=CLAUDE_MODEL,
        max_tokens=3,
        messages=[{"role": "user", "content": "Count from one to one hundred in words."}],
        extra_body=GREEDY,
    )
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 3


def test_stream_matches_create_at_temperature_zero(client: anthropic.Anthropic) -> None:
    created = client.messages.create(
        model=CLAUDE_MODEL, max_tokens=20, messages=HELLO, extra_body=GREEDY
    )
    pieces: list[str] = []
    with client.messages.stream(
        model=CLAUDE_MODEL, max_tokens=20, messages=HELLO, extra_body=GREEDY
    ) as stream:
        pieces.extend(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) > 1  # really streamed, not one buffered chunk
    assert "".join(pieces) == final.content[0].text == created.content[0].text
    assert final.usage.output_tokens == created.usage.output_tokens
    assert final.usage.input_tokens == created.usage.input_tokens
    assert final.stop_reason == created.stop_reason


def test_stop_sequence_cuts_the_answer(client: anthropic.Anthropic) -> None:
    free = client.messages.create(
        model=CLAUDE_MODEL, max_tokens=30, messages=HELLO, extra_body=GREEDY
    )
    text = free.content[0].text
    words = text.split()
    assert len(words) >= 3, text
    stop = words[2]
    cut = client.messages.create(
        model=CLAUDE_MODEL, max_tokens=30, messages=HELLO, stop_sequences=[stop], extra_body=GREEDY
    )
    assert cut.stop_reason == "stop_sequence"
    assert cut.stop_sequence == stop
    expected = text[: text.index(stop)]
    assert (cut.content[0].text if cut.content else "") == expected


def test_sampling_parameters_change_nothing_when_they_mean_greedy(
    client: anthropic.Anthropic,
) -> None:
    greedy = client.messages.create(
        model=CLAUDE_MODEL, max_tokens=15, messages=HELLO, extra_body=GREEDY
    )
    top_k_one = client.messages.create(
        model=CLAUDE_MODEL,
        max_tokens=15,
        messages=HELLO,
        extra_body={"temperature": 1.0, "top_k": 1},
    )
    tiny_top_p = client.messages.create(
        model=CLAUDE_MODEL,
        max_tokens=15,
        messages=HELLO,
        extra_body={"temperature": 1.0, "top_p": 1e-9},
    )
    assert top_k_one.content[0].text == greedy.content[0].text
    assert tiny_top_p.content[0].text == greedy.content[0].text


def test_prefill_is_continued(client: anthropic.Anthropic) -> None:
    message = client.messages.create(
        model=CLAUDE_MODEL,
        max_tokens=10,
        messages=[
            {"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": "The capital of France is"},
        ],
        extra_body=GREEDY,
    )
    counted = client.messages.count_tokens(model=CLAUDE_MODEL, messages=HELLO)
    assert message.usage.input_tokens != counted.input_tokens
    assert message.content[0].text  # only the continuation is returned
    assert not message.content[0].text.startswith("The capital of France is")


def test_system_prompt_and_mid_conversation_system_turn_count(client: anthropic.Anthropic) -> None:
    plain = client.messages.count_tokens(model=CLAUDE_MODEL, messages=HELLO)
    short = client.messages.count_tokens(model=CLAUDE_MODEL, messages=HELLO, system="Be terse.")
    longer = client.messages.count_tokens(
        model=CLAUDE_MODEL, messages=HELLO, system="Be terse, and answer in one short sentence."
    )
    mid = client.beta.messages.count_tokens(
        model=CLAUDE_MODEL,
        messages=[
            *HELLO,
            {"role": "assistant", "content": "The sea is wide."},
            {"role": "system", "content": "Answer in French."},  # type: ignore[list-item]
            {"role": "user", "content": "Again."},
        ],
    )
    assert longer.input_tokens > short.input_tokens
    assert mid.input_tokens > plain.input_tokens
    reply = client.beta.messages.create(
        model=CLAUDE_MODEL,
        max_tokens=5,
        messages=[*HELLO, {"role": "system", "content": "Be brief."}],  # type: ignore[list-item]
        betas=["claude-code-20250219", "some-future-beta-2099-01-01"],
        extra_body={"temperature": 0, "unknown_field": {"nested": True}},
    )
    assert reply.usage.output_tokens > 0


def test_tool_definitions_and_tool_history_are_part_of_the_prompt(
    client: anthropic.Anthropic,
) -> None:
    tool = {
        "name": "get_weather",
        "description": "Weather for a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
    bare = client.messages.count_tokens(model=CLAUDE_MODEL, messages=HELLO)
    with_tool = client.messages.count_tokens(model=CLAUDE_MODEL, messages=HELLO, tools=[tool])
    assert with_tool.input_tokens > bare.input_tokens + 10
    history = client.messages.create(
        model=CLAUDE_MODEL,
        max_tokens=8,
        tools=[tool],
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": [
                    {
                        "type": "tool_use",
                        "id": "toolu_1",
                        "name": "get_weather",
                        "input": {"city": "Paris"},
                    }
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "Sunny, 21 C"}
                ],
            },
        ],
        extra_body=GREEDY,
    )
    assert history.usage.output_tokens > 0


def test_models_list_and_retrieve(client: anthropic.Anthropic) -> None:
    listed = client.models.list()
    ids = [m.id for m in listed.data]
    assert "smollm2-135m-instruct" in ids
    served = client.models.retrieve("smollm2-135m-instruct")
    assert served.max_input_tokens == 16384
    alias = client.models.retrieve(CLAUDE_MODEL)
    assert alias.id == CLAUDE_MODEL
    with pytest.raises(anthropic.NotFoundError):
        client.models.retrieve("gpt-unknown")
    beta = client.beta.models.list()
    assert [m.id for m in beta.data] == ids


def test_every_response_carries_a_request_id(server: str) -> None:
    response = httpx.get(f"{server}/v1/models")
    assert response.headers["request-id"].startswith("req_")
    head = httpx.head(f"{server}/")  # Claude Code probes this at start
    assert head.status_code == 200
