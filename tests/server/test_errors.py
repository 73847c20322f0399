"""Bad input gets the Anthropic error envelope with the right status, and the server stays up."""

from __future__ import annotations

import re
from typing import Any

import anthropic
import httpx
import pytest

from tests.conftest import CLAUDE_MODEL

USER = [{"role": "user", "content": "hi"}]


def post(server: str, body: bytes | str, **headers: str) -> httpx.Response:
    content = body.encode() if isinstance(body, str) else body
    return httpx.post(f"{server}/v1/messages", content=content, headers=headers, timeout=60)


def assert_envelope(response: httpx.Response, status: int, error_type: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == error_type
    assert body["request_id"] == response.headers["request-id"]
    message: str = body["error"]["message"]
    assert message and "Traceback" not in message
    return message


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "valid dictionary"),
        ('{"model": "claude-x", "messages": []}', "max_tokens: Field required"),
        ('{"model": "claude-x", "max_tokens": "ten", "messages": []}', "max_tokens"),
        ('{"model": "claude-x", "max_tokens": 5, "messages": []}', "at least one message"),
        ('{"model": 7, "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}', "model"),
    ],
)
def test_malformed_bodies_are_400(server: str, body: str, expected: str) -> None:
    message = assert_envelope(post(server, body), 400, "invalid_request_error")
    assert expected in message


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"max_tokens": -5}, "max_tokens: must be greater than or equal to 0"),
        ({"max_tokens": 128_001}, "maximum allowed number of output tokens"),
        (
            {"messages": [{"role": "assistant", "content": "hello"}]},
            'first message must use the "user" role',
        ),
        ({"messages": [{"role": "user", "content": ""}]}, "must have non-empty content"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": ""}]}]}, "non-empty"),
        (
            {"messages": [*USER, {"role": "assistant", "content": "ends with space "}]},
            "trailing whitespace",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "tool_result", "tool_use_id": "toolu_x", "content": "r"}
                        ],
                    }
                ]
            },
            "unexpected `tool_use_id`",
        ),
        (
            {
                "messages": [
                    *USER,
                    {
                        "role": "assistant",
                        "content": [
                            {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}
                        ],
                    },
                    {"role": "user", "content": "no result here"},
                ]
            },
            "`tool_use` ids were found without `tool_result` blocks",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}],
                    }
                ]
            },
            "cannot contain",
        ),
        ({"stop_sequences": ["   "]}, "non-whitespace"),
        ({"temperature": 1.5}, "temperature"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "image",
                                "source": {
                                    "type": "base64",
                                    "media_type": "image/png",
                                    "data": "iVBORw0KGgo=",
                                },
                            }
                        ],
                    }
                ]
            },
            "does not support image input",
        ),
    ],
)
def test_rule_violations_are_400_through_the_sdk(
    client: anthropic.Anthropic, params: dict[str, Any], expected: str
) -> None:
    body: dict[str, Any] = {"model": CLAUDE_MODEL, "max_tokens": 5, "messages": USER} | params
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(
            model=body.pop("model"),
            max_tokens=body.pop("max_tokens"),
            messages=body.pop("messages"),
            extra_body=body,
            timeout=60,  # an explicit timeout lifts the SDK's own max_tokens check
        )
    assert caught.value.status_code == 400
    assert expected in caught.value.message
    assert caught.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]


def test_unknown_model_is_404(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as caught:
        client.messages.create(model="gpt-4o", max_tokens=5, messages=USER)
    assert "model: gpt-4o" in caught.value.message


def test_a_huge_value_is_not_echoed_whole(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as caught:
        client.messages.create(model="m" * 100_000, max_tokens=5, messages=USER)
    message = caught.value.body["error"]["message"]  # type: ignore[index]
    assert message.startswith("model: mmm") and message.endswith(
        f"… ({100_007 - 2000} more characters)"
    )
    assert len(message) < 2100


def test_prompt_too_long_uses_the_wording_claude_code_compacts_on(
    client: anthropic.Anthropic,
) -> None:
    long_text = "word " * 20_000
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(
            model=CLAUDE_MODEL, max_tokens=5, messages=[{"role": "user", "content": long_text}]
        )
    match = re.search(r"prompt is too long: (\d+) tokens > (\d+) maximum", caught.value.message)
    assert match, caught.value.message
    assert int(match.group(1)) > int(match.group(2)) == 16383
    counted = client.messages.count_tokens(
        model=CLAUDE_MODEL, messages=[{"role": "user", "content": long_text}]
    )
    assert counted.input_tokens == int(match.group(1))


def test_oversize_body_is_413(client: anthropic.Anthropic) -> None:
    huge = "x" * (33 * 1024 * 1024)
    with pytest.raises(anthropic.RequestTooLargeError) as caught:
        client.messages.create(
            model=CLAUDE_MODEL, max_tokens=5, messages=[{"role": "user", "content": huge}]
        )
    assert caught.value.status_code == 413
    assert caught.value.body["error"]["type"] == "request_too_large"  # type: ignore[index]


def test_unknown_routes_and_methods_get_envelopes(server: str) -> None:
    assert_envelope(httpx.get(f"{server}/v1/nothing"), 404, "not_found_error")
    assert_envelope(httpx.get(f"{server}/v1/messages"), 405, "invalid_request_error")
    assert_envelope(httpx.get(f"{server}/v1/models?limit=0"), 400, "invalid_request_error")


def test_server_keeps_serving_after_bad_requests(client: anthropic.Anthropic, server: str) -> None:
    for body in ("{", "null", '{"model": "claude-x"}', "\x00\xff"):
        post(server, body)
    message = client.messages.create(model=CLAUDE_MODEL, max_tokens=3, messages=USER)
    assert message.usage.output_tokens > 0
