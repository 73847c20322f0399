"""The raw event stream, read with httpx: event order, index rules, pings, usage."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.conftest import CLAUDE_MODEL


def read_events(
    server: str, body: dict[str, Any]
) -> tuple[httpx.Response, list[tuple[str, dict[str, Any]]]]:
    events: list[tuple[str, dict[str, Any]]] = []
    with httpx.stream(
        "POST", f"{server}/v1/messages?beta=true", json=body, timeout=120
    ) as response:
        name = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                assert name is not None
                events.append((name, json.loads(line.removeprefix("data: "))))
                name = None
    return response, events


def test_event_sequence_follows_the_protocol(server: str) -> None:
    response, events = read_events(
        server,
        {
            "model": CLAUDE_MODEL,
            "max_tokens": 12,
            "stream": True,
            "temperature": 0,
            "messages": [{"role": "user", "content": "Tell me about rivers."}],
        },
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    for name, data in events:
        assert data["type"] == name  # the SDK dispatches on the event line
    names = [name for name, _ in events if name != "ping"]
    assert "ping" in [name for name, _ in events]
    assert names[0] == "message_start"
    assert names[1] == "content_block_start"
    assert set(names[2:-3]) == {"content_block_delta"}
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]

    start = events[0][1]["message"]
    assert (
        start["content"] == [] and start["stop_reason"] is None and start["model"] == CLAUDE_MODEL
    )
    assert start["usage"]["input_tokens"] > 0
    blocks = [d for n, d in events if n.startswith("content_block")]
    assert {d["index"] for d in blocks} == {0}
    assert blocks[0]["content_block"] == {"type": "text", "text": "", "citations": None}
    assert all(d["delta"]["type"] == "text_delta" for d in blocks[1:-1])
    delta = next(d for n, d in events if n == "message_delta")
    assert delta["delta"]["stop_reason"] == "max_tokens"
    assert delta["usage"]["output_tokens"] == 12
    assert delta["usage"]["input_tokens"] == start["usage"]["input_tokens"]


def test_an_error_before_the_stream_starts_is_a_plain_error_response(server: str) -> None:
    response, events = read_events(
        server,
        {
            "model": "no-such-model",
            "max_tokens": 5,
            "stream": True,
            "messages": [{"role": "user", "content": "x"}],
        },
    )
    assert response.status_code == 404
    assert events == []
