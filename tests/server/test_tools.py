"""Client tool use on the real model: forced and free choice, valid inputs, the full loop."""

from __future__ import annotations

from typing import Any

import anthropic
import jsonschema
import pytest

from tercet.server.client_tools import BASH, CLIENT_TOOL_KINDS, MEMORY, ClientToolKind
from tests.conftest import CLAUDE_MODEL

WEATHER = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "input_schema": {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city", "unit"],
    },
}
ADD = {
    "name": "add",
    "description": "Add two integers",
    "input_schema": {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "required": ["a", "b"],
    },
}
SEARCH = {
    "name": "search_files",
    "description": "Search files for a pattern",
    "input_schema": {
        "type": "object",
        "properties": {
            "pattern": {"type": "string"},
            "options": {
                "type": "object",
                "properties": {
                    "case_sensitive": {"type": "boolean"},
                    "max_results": {"type": "number"},
                },
            },
        },
        "required": ["pattern"],
    },
}
TOOLS = [WEATHER, ADD, SEARCH]
SCHEMAS = {t["name"]: t["input_schema"] for t in TOOLS}

PROMPTS = [
    "What's the weather in Paris?",
    "Add 2 and 3.",
    "Find TODO comments in my code.",
    "Is it raining in Tokyo right now?",
    "What is 1234 plus 4321?",
    "Search for the word 'deprecated' in src and tests.",
    "How warm is it in Cairo, in fahrenheit?",
    "Sum of minus seven and twelve?",
    "Look for files mentioning 'license', case sensitive.",
    "Weather for Reykjavik please.",
]


def create(client: anthropic.Anthropic, prompt: str, **params: Any) -> anthropic.types.Message:
    # Arrays are left out of these schemas: the 135M model tends to extend a list until
    # max_tokens, which is a complete but uninteresting outcome (stop_reason "max_tokens").
    body: dict[str, Any] = {
        "max_tokens": 200,
        "tools": TOOLS,
        "messages": [{"role": "user", "content": prompt}],
    }
    return client.messages.create(model=CLAUDE_MODEL, **(body | params))


@pytest.mark.parametrize(
    ("name", "prompt"),
    [
        ("get_weather", "Help me plan my day."),
        ("add", "Please help me."),
        ("search_files", "Search for the word cat."),
    ],
)
def test_forced_tool_is_called_with_valid_input(
    client: anthropic.Anthropic, name: str, prompt: str
) -> None:
    # Greedy, so the same call is made on every run; the prompts need not ask for the tool.
    message = create(
        client, prompt, tool_choice={"type": "tool", "name": name}, extra_body={"temperature": 0}
    )
    assert message.stop_reason == "tool_use"
    assert [b.type for b in message.content] == ["tool_use"]
    call = message.content[0]
    assert call.type == "tool_use" and call.name == name and call.id.startswith("toolu_")
    jsonschema.validate(call.input, SCHEMAS[name])


def test_every_input_validates_across_varied_prompts(client: anthropic.Anthropic) -> None:
    seen: set[str] = set()
    cut_short = 0
    for index in range(50):
        prompt = PROMPTS[index % len(PROMPTS)]
        # Vary the sampling as well as the prompt: greedy first, then the model's default.
        sampling = {"temperature": 0} if index < len(PROMPTS) else {}
        message = create(client, prompt, tool_choice={"type": "any"}, extra_body=sampling)
        calls = [b for b in message.content if b.type == "tool_use"]
        assert calls, (prompt, sampling, message.content)
        if message.stop_reason == "max_tokens":
            # The 135M model sometimes writes one string until max_tokens: the last call is
            # then unfinished (empty input), which is not a schema violation but must stay rare.
            cut_short += 1
            calls = calls[:-1]
        else:
            assert message.stop_reason == "tool_use"
        for call in calls:  # with parallel calls allowed, the model may make several
            jsonschema.validate(call.input, SCHEMAS[call.name])
            seen.add(call.name)
    assert cut_short <= 5, f"{cut_short} of 50 calls ran into max_tokens"
    assert len(seen) >= 2  # the model picks among the tools, not always the first


def test_tool_choice_none_never_calls(client: anthropic.Anthropic) -> None:
    for prompt in PROMPTS[:4]:
        message = create(client, prompt, tool_choice={"type": "none"})
        assert all(b.type == "text" for b in message.content)
        assert message.stop_reason != "tool_use"


def test_auto_tool_calls_are_valid_when_made(client: anthropic.Anthropic) -> None:
    for prompt in PROMPTS:
        message = create(
            client, prompt, tool_choice={"type": "auto"}, extra_body={"temperature": 0}
        )
        for block in message.content:
            if block.type == "tool_use":
                jsonschema.validate(block.input, SCHEMAS[block.name])
                assert message.stop_reason == "tool_use"


def loop(client: anthropic.Anthropic, stream: bool) -> list[anthropic.types.Message]:
    messages: list[Any] = [{"role": "user", "content": "Add 2 and 3."}]
    first_params: dict[str, Any] = {
        "max_tokens": 80,
        "tools": [ADD],
        "tool_choice": {"type": "tool", "name": "add"},
    }
    if stream:
        with client.messages.stream(model=CLAUDE_MODEL, messages=messages, **first_params) as s:
            deltas = [
                e
                for e in s
                if e.type == "content_block_delta" and e.delta.type == "input_json_delta"
            ]
            first = s.get_final_message()
        assert len(deltas) > 1  # the input really streams, in pieces
    else:
        first = client.messages.create(model=CLAUDE_MODEL, messages=messages, **first_params)
    call = first.content[0]
    assert call.type == "tool_use"
    result = call.input["a"] + call.input["b"]
    messages += [
        {"role": "assistant", "content": first.content},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": call.id, "content": str(result)}],
        },
    ]
    final = client.messages.create(
        model=CLAUDE_MODEL, max_tokens=60, tools=[ADD], messages=messages
    )
    return [first, final]


@pytest.mark.parametrize("stream", [False, True])
def test_full_tool_loop(client: anthropic.Anthropic, stream: bool) -> None:
    first, final = loop(client, stream)
    assert first.stop_reason == "tool_use"
    assert final.content and final.stop_reason in ("end_turn", "tool_use", "max_tokens")
    assert final.usage.input_tokens > first.usage.input_tokens  # the result went into the prompt


def test_error_results_are_accepted(client: anthropic.Anthropic) -> None:
    message = client.messages.create(
        model=CLAUDE_MODEL,
        max_tokens=20,
        tools=[WEATHER],
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": [
                    {
                        "type": "tool_use",
                        "id": "toolu_1",
                        "name": "get_weather",
                        "input": {"city": "Paris", "unit": "celsius"},
                    }
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_1",
                        "is_error": True,
                        "content": [{"type": "text", "text": "service down"}],
                    }
                ],
            },
        ],
    )
    assert message.usage.output_tokens > 0


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"tools": [], "tool_choice": {"type": "any"}}, "requires at least one tool"),
        ({"tool_choice": {"type": "tool", "name": "nope"}}, "tool `nope` is not in `tools`"),
        (
            {
                "tool_choice": {"type": "any"},
                "thinking": {"type": "enabled", "budget_tokens": 1024},
                "max_tokens": 2000,
            },
            "Thinking may not be enabled when tool_choice forces tool use",
        ),
    ],
)
def test_tool_rules_are_400(
    client: anthropic.Anthropic, params: dict[str, Any], expected: str
) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        create(client, "Weather in Paris?", **params)
    assert expected in caught.value.message


@pytest.mark.parametrize(
    ("tool", "kind"),
    [
        ({"type": "bash_20250124", "name": "bash"}, BASH),
        ({"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"}, None),
        ({"type": "text_editor_20250124", "name": "str_replace_editor"}, None),
        ({"type": "memory_20250818", "name": "memory"}, MEMORY),
    ],
)
def test_anthropic_defined_client_tools_are_offered_with_their_schemas(
    client: anthropic.Anthropic, tool: dict[str, Any], kind: ClientToolKind | None
) -> None:
    kind = kind or CLIENT_TOOL_KINDS[tool["type"]]
    message = client.messages.create(
        model=CLAUDE_MODEL,
        max_tokens=120,
        tools=[tool, ADD],
        tool_choice={"type": "tool", "name": tool["name"]},
        messages=[{"role": "user", "content": "List the files in the current directory."}],
        extra_body={"temperature": 0},
    )
    call = message.content[0]
    assert call.type == "tool_use" and call.name == tool["name"]
    if message.stop_reason == "tool_use":
        jsonschema.validate(call.input, kind.input_schema)


def test_a_client_tool_type_must_keep_its_name(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        create(client, "hi", tools=[{"type": "bash_20250124", "name": "shell"}])
    assert "must be named `bash`" in caught.value.message


def test_server_tools_are_not_offered_as_client_tools(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        create(
            client,
            "hi",
            tools=[{"type": "web_search_20250305", "name": "web_search"}],
            tool_choice={"type": "tool", "name": "web_search"},
        )
    assert "requires at least one tool" in caught.value.message
