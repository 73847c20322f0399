"""The Messages API over the OpenAI-compatible engine, with a real upstream on loopback:
llama-cpp-python's own server (`python -m llama_cpp.server`) serving the same bundled GGUF.

Where the upstream cannot do what the embedded engine does, the test says so.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import jsonschema
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from tercet.engine.bundled import bundled_model_path
from tercet.engine.openai import OpenAICompatibleEngine
from tercet.server.app import create_app
from tercet.server.config import ServerConfig
from tercet.server.runner import BackgroundServer
from tests.conftest import CLAUDE_MODEL
from tests.mcp.servers import refused_port

QUESTION = [{"role": "user", "content": "Write one sentence about the sea."}]
WEATHER = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


def free_port() -> int:
    """A port free a moment ago: something else may take it before the server binds it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_upstream(port: int) -> subprocess.Popen[bytes] | None:
    """llama_cpp.server on `port` once it answers; None if it exited first (the port taken)."""
    command = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(bundled_model_path()),
        "--host", "127.0.0.1", "--port", str(port),
        "--n_ctx", "4096",
        "--chat_format", "chatml-function-calling",
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while True:
        try:
            answered = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).is_success
        except httpx.HTTPError:
            answered = False
        if process.poll() is not None:
            return None
        if answered:
            return process
        if time.monotonic() > deadline:
            process.kill()
            process.wait()
            raise AssertionError("llama_cpp.server did not start")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    """llama-cpp-python's OpenAI-compatible server, with its function-calling chat format."""
    # It takes a port number only, probed free before its slow start: should something take
    # the port meanwhile, it exits, and it is started again on another.
    for _ in range(3):
        port = free_port()
        process = start_upstream(port)
        if process is not None:
            break
    else:
        raise AssertionError("llama_cpp.server exited at start three times")
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def remote(
    upstream: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[anthropic.Anthropic]:
    engine = OpenAICompatibleEngine(upstream, model_id="smollm2-remote", context_window=4096)
    config = ServerConfig(data_dir=tmp_path_factory.mktemp("data"), api_keys=[])
    with BackgroundServer(create_app(config, [engine])) as running:
        yield anthropic.Anthropic(base_url=running.base_url, api_key="k", max_retries=0)


def test_create_and_stream_agree(remote: anthropic.Anthropic) -> None:
    created = remote.messages.create(
        model=CLAUDE_MODEL, max_tokens=16, messages=QUESTION, extra_body={"temperature": 0}
    )
    assert created.content[0].type == "text" and created.content[0].text
    assert created.stop_reason in ("end_turn", "max_tokens")
    with remote.messages.stream(
        model=CLAUDE_MODEL, max_tokens=16, messages=QUESTION, extra_body={"temperature": 0}
    ) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) > 1
    assert "".join(pieces) == created.content[0].text == final.content[0].text


def test_max_tokens_and_usage(remote: anthropic.Anthropic) -> None:
    message = remote.messages.create(
        model=CLAUDE_MODEL, max_tokens=4, messages=QUESTION, extra_body={"temperature": 0}
    )
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 4
    # Approximate: the upstream has a tokenizer endpoint but cannot render its chat template
    # for us, so count_tokens counts the flattened text (plus a little per message).
    counted = remote.messages.count_tokens(model=CLAUDE_MODEL, messages=QUESTION)
    assert 0 < counted.input_tokens < 40


def test_stop_sequences_are_exact(remote: anthropic.Anthropic) -> None:
    free = remote.messages.create(
        model=CLAUDE_MODEL, max_tokens=20, messages=QUESTION, extra_body={"temperature": 0}
    )
    text = free.content[0].text
    stop = text.split()[2]
    cut = remote.messages.create(
        model=CLAUDE_MODEL,
        max_tokens=20,
        messages=QUESTION,
        stop_sequences=[stop],
        extra_body={"temperature": 0},
    )
    assert (cut.stop_reason, cut.stop_sequence) == ("stop_sequence", stop)
    assert cut.content[0].text == text[: text.index(stop)]


@pytest.mark.parametrize("stream", [False, True])
def test_forced_tool_call_and_loop(remote: anthropic.Anthropic, stream: bool) -> None:
    messages: list[dict[str, object]] = [
        {"role": "user", "content": "What's the weather in Paris?"}
    ]
    params: dict[str, Any] = {
        "model": CLAUDE_MODEL,
        "max_tokens": 60,
        "tools": [WEATHER],
        "tool_choice": {"type": "tool", "name": "get_weather"},
        "messages": messages,
    }
    if stream:
        with remote.messages.stream(**params) as events:
            deltas = [e for e in events if e.type == "content_block_delta"]
            first = events.get_final_message()
        assert deltas and all(e.delta.type == "input_json_delta" for e in deltas)
    else:
        first = remote.messages.create(**params)
    calls = [b for b in first.content if b.type == "tool_use"]
    assert first.stop_reason == "tool_use" and len(calls) == 1
    # Schema-valid here because llama-cpp-python constrains forced calls with a grammar too;
    # other upstreams may not.
    jsonschema.validate(calls[0].input, WEATHER["input_schema"])
    messages += [
        {"role": "assistant", "content": first.content},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": calls[0].id, "content": "Sunny"}],
        },
    ]
    # Upstream limitation: llama-cpp-python streams nothing at all for `tool_choice: auto`
    # (its chatml-function-calling handler), so the answer turn offers no tools.
    final = remote.messages.create(
        model=CLAUDE_MODEL,
        max_tokens=30,
        tools=[WEATHER],
        tool_choice={"type": "none"},
        messages=messages,  # type: ignore[arg-type]
    )
    assert final.content and final.content[0].type == "text" and final.content[0].text
    assert final.usage.input_tokens > first.usage.input_tokens  # the result reached the model


def test_forced_any_inputs_validate_and_none_never_calls(remote: anthropic.Anthropic) -> None:
    prompts = ["Weather in Oslo?", "Is it hot in Lima?", "Tell me about Rome.", "Hello there."]
    for prompt in prompts:
        forced = remote.messages.create(
            model=CLAUDE_MODEL,
            max_tokens=60,
            tools=[WEATHER],
            # With one tool, sent as that function by name: llama-cpp-python's server has no
            # tool_choice "required" (what `any` with several tools becomes) and fails on it.
            tool_choice={"type": "any"},
            messages=[{"role": "user", "content": prompt}],
        )
        calls = [b for b in forced.content if b.type == "tool_use"]
        assert forced.stop_reason == "tool_use" and calls, forced.content
        for call in calls:
            jsonschema.validate(call.input, WEATHER["input_schema"])
        never = remote.messages.create(
            model=CLAUDE_MODEL,
            max_tokens=30,
            tools=[WEATHER],
            tool_choice={"type": "none"},
            messages=[{"role": "user", "content": prompt}],
        )
        assert [b.type for b in never.content] == ["text"]


def test_thinking_off_and_signatures(remote: anthropic.Anthropic) -> None:
    plain = remote.messages.create(
        model=CLAUDE_MODEL,
        max_tokens=10,
        thinking={"type": "disabled"},
        messages=QUESTION,
    )
    assert all(b.type == "text" for b in plain.content)
    thought = remote.messages.create(
        model=CLAUDE_MODEL,
        max_tokens=1100,
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=QUESTION,
    )
    block = thought.content[0]
    assert block.type == "thinking"
    follow_up = [
        *QUESTION,
        {"role": "assistant", "content": thought.content},
        {"role": "user", "content": "And another one."},
    ]
    again = remote.messages.create(
        model=CLAUDE_MODEL,
        max_tokens=1100,
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=follow_up,  # type: ignore[arg-type]
    )
    assert again.content
    follow_up[1] = {
        "role": "assistant",
        "content": [
            {"type": "thinking", "thinking": "I was told to.", "signature": block.signature},
            *thought.content[1:],
        ],
    }
    with pytest.raises(anthropic.BadRequestError, match="Invalid `signature`"):
        remote.messages.create(
            model=CLAUDE_MODEL,
            max_tokens=1100,
            thinking={"type": "enabled", "budget_tokens": 1024},
            messages=follow_up,  # type: ignore[arg-type]
        )


def test_thinking_block_is_present_but_empty_for_a_model_without_reasoning(
    remote: anthropic.Anthropic,
) -> None:
    message = remote.messages.create(
        model=CLAUDE_MODEL,
        max_tokens=1100,
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=QUESTION,
    )
    # The upstream returns no reasoning_content for SmolLM2: the block is there, signed, empty.
    assert message.content[0].type == "thinking" and message.content[0].signature
    assert message.content[0].thinking == ""


def test_an_unreachable_upstream_is_529_and_the_server_stays_up(tmp_path: Path) -> None:
    with refused_port() as port:
        unreachable_upstream_is_529(tmp_path, port)


def unreachable_upstream_is_529(tmp_path: Path, port: int) -> None:
    engine = OpenAICompatibleEngine(f"http://127.0.0.1:{port}/v1", model="m", context_window=4096)
    with BackgroundServer(
        create_app(ServerConfig(data_dir=tmp_path, api_keys=[]), [engine])
    ) as running:
        client = anthropic.Anthropic(base_url=running.base_url, api_key="k", max_retries=0)
        for _ in range(2):
            with pytest.raises(anthropic.OverloadedError) as caught:
                client.messages.create(model=CLAUDE_MODEL, max_tokens=5, messages=QUESTION)
            assert "upstream model server is unavailable" in caught.value.message


def test_cache_salt_keeps_api_keys_apart_upstream(tmp_path: Path) -> None:
    # What tercet sends is the point here, so the upstream records it and answers a fixed
    # stream (vLLM, which reads `cache_salt`, is not installable here).
    bodies: list[dict[str, Any]] = []
    upstream = FastAPI()

    @upstream.post("/v1/chat/completions")
    async def complete(request: Request) -> StreamingResponse:
        bodies.append(await request.json())
        chunks = [
            {"choices": [{"index": 0, "delta": {"content": "Hi."}}]},
            {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        ]
        lines = [f"data: {json.dumps(c)}\n\n" for c in chunks] + ["data: [DONE]\n\n"]
        return StreamingResponse(iter(lines), media_type="text/event-stream")

    with BackgroundServer(upstream) as fake:
        salted = OpenAICompatibleEngine(
            f"{fake.base_url}/v1", model="m", context_window=4096, cache_salt=True
        )
        config = ServerConfig(data_dir=tmp_path, api_keys=[])
        with BackgroundServer(create_app(config, [salted])) as running:
            for key in ("key-a", "key-b", "key-a"):
                client = anthropic.Anthropic(base_url=running.base_url, api_key=key)
                reply = client.messages.create(model=CLAUDE_MODEL, max_tokens=5, messages=QUESTION)
                assert reply.content[0].text == "Hi."
    salts = [body["cache_salt"] for body in bodies]
    assert salts[0] == salts[2] != salts[1]  # one per key, the same for a key each time
    assert all(len(salt) == 32 and "key-" not in salt for salt in salts)


def test_the_real_upstream_accepts_a_cache_salt(upstream: str, tmp_path: Path) -> None:
    salted = OpenAICompatibleEngine(
        upstream, model_id="salted", context_window=4096, cache_salt=True
    )
    with BackgroundServer(
        create_app(ServerConfig(data_dir=tmp_path, api_keys=[]), [salted])
    ) as running:
        client = anthropic.Anthropic(base_url=running.base_url, api_key="k", max_retries=0)
        reply = client.messages.create(model=CLAUDE_MODEL, max_tokens=5, messages=QUESTION)
        assert reply.usage.output_tokens > 0
