"""The server's own control flow (queueing, disconnects, auth, mid-stream errors).

A scripted engine makes these exact; the real model is used where the claim is about it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Iterator
from concurrent.futures import ThreadPoolExecutor

import anthropic
import httpx
import pytest

from tercet.engine.base import GenerationEvent, PreparedPrompt, SamplingParams
from tercet.engine.scripted import ScriptedEngine
from tercet.server.app import create_app
from tercet.server.config import ServerConfig
from tercet.server.runner import BackgroundServer
from tercet.wire.errors import InvalidRequestError
from tests.conftest import CLAUDE_MODEL

USER = [{"role": "user", "content": "hi"}]
LONG_REPLY = " ".join(f"word{i}" for i in range(200))


def serve(engine: ScriptedEngine, **settings: object) -> BackgroundServer:
    config = ServerConfig.model_validate({"api_keys": [], **settings})
    return BackgroundServer(create_app(config, [engine]))


def wait_for(condition: object, timeout: float = 30.0) -> None:
    """Polls `condition` (the server's engine runs in another thread); the timeout only turns a
    hang into a failure, so it is generous for a loaded machine."""
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


@pytest.fixture
def slow_engine() -> ScriptedEngine:
    return ScriptedEngine([LONG_REPLY], delay=0.02)


def test_full_queue_answers_529_overloaded(slow_engine: ScriptedEngine) -> None:
    with serve(slow_engine, max_queue=0) as running:
        client = anthropic.Anthropic(base_url=running.base_url, api_key="k", max_retries=0)
        with client.messages.stream(model=CLAUDE_MODEL, max_tokens=500, messages=USER) as busy:
            next(iter(busy.text_stream))  # the engine is now generating
            with pytest.raises(anthropic.OverloadedError) as caught:
                client.messages.create(model=CLAUDE_MODEL, max_tokens=5, messages=USER)
            assert caught.value.status_code == 529
            assert caught.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
            assert "".join(busy.text_stream)  # the running request is unharmed
        assert client.messages.create(model=CLAUDE_MODEL, max_tokens=5, messages=USER).content


def test_queued_requests_all_complete() -> None:
    engine = ScriptedEngine(["one two three"], delay=0.01)
    with serve(engine, max_queue=4) as running:
        client = anthropic.Anthropic(base_url=running.base_url, api_key="k", max_retries=0)
        with ThreadPoolExecutor(4) as pool:
            replies = list(
                pool.map(
                    lambda _: client.messages.create(
                        model=CLAUDE_MODEL, max_tokens=9, messages=USER
                    ),
                    range(4),
                )
            )
    assert [r.content[0].text for r in replies] == ["one two three"] * 4  # type: ignore[union-attr]
    assert engine.log == ["finished"] * 4


def test_disconnect_during_stream_stops_generation(slow_engine: ScriptedEngine) -> None:
    with serve(slow_engine) as running:
        body = {"model": CLAUDE_MODEL, "max_tokens": 500, "stream": True, "messages": USER}
        with httpx.stream("POST", f"{running.base_url}/v1/messages", json=body) as response:
            for line in response.iter_lines():
                if "text_delta" in line:
                    break
        wait_for(lambda: slow_engine.log == ["cancelled"])


def test_disconnect_during_non_streaming_request_stops_generation(
    slow_engine: ScriptedEngine,
) -> None:
    with serve(slow_engine) as running:
        body = {"model": CLAUDE_MODEL, "max_tokens": 500, "messages": USER}
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{running.base_url}/v1/messages", json=body, timeout=0.5)
        wait_for(lambda: slow_engine.log == ["cancelled"])


def test_pings_flow_while_a_request_waits_and_generates() -> None:
    engine = ScriptedEngine(["slow words here"], delay=0.3)
    with serve(engine, ping_interval=0.05) as running:
        body = {"model": CLAUDE_MODEL, "max_tokens": 50, "stream": True, "messages": USER}
        with httpx.stream("POST", f"{running.base_url}/v1/messages", json=body) as response:
            names = [line[7:] for line in response.iter_lines() if line.startswith("event: ")]
    assert names.count("ping") >= 5  # about one per 50 ms over ~0.9 s of generation
    assert [n for n in names if n != "ping"][-1] == "message_stop"


class FailingEngine(ScriptedEngine):
    async def generate(
        self, prompt: PreparedPrompt, params: SamplingParams
    ) -> AsyncGenerator[GenerationEvent, None]:
        async for event in super().generate(prompt, params):
            yield event
            raise RuntimeError("the engine broke")


def test_engine_failure_mid_stream_is_an_error_event() -> None:
    with serve(FailingEngine(["a b c"])) as running:
        body = {"model": CLAUDE_MODEL, "max_tokens": 50, "stream": True, "messages": USER}
        with httpx.stream("POST", f"{running.base_url}/v1/messages", json=body) as response:
            lines = list(response.iter_lines())
        assert "event: error" in lines
        assert any('"type":"api_error"' in line for line in lines)
        client = anthropic.Anthropic(base_url=running.base_url, api_key="k", max_retries=0)
        with pytest.raises(anthropic.InternalServerError) as caught:
            client.messages.create(model=CLAUDE_MODEL, max_tokens=50, messages=USER)
        assert "Traceback" not in caught.value.message


@pytest.fixture
def keyed_server() -> Iterator[str]:
    with serve(ScriptedEngine(), api_keys=["secret-1", "secret-2"]) as running:
        yield running.base_url


def test_keys_are_checked_when_configured(keyed_server: str) -> None:
    def client(**auth: str) -> anthropic.Anthropic:
        return anthropic.Anthropic(base_url=keyed_server, max_retries=0, **auth)

    with pytest.raises(anthropic.AuthenticationError) as wrong:
        client(api_key="nope").messages.create(model=CLAUDE_MODEL, max_tokens=5, messages=USER)
    assert wrong.value.status_code == 401
    assert wrong.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    assert (
        client(api_key="secret-2")
        .messages.create(model=CLAUDE_MODEL, max_tokens=5, messages=USER)
        .content
    )
    assert client(auth_token="secret-1").models.list().data
    assert httpx.head(f"{keyed_server}/").status_code == 200  # the health probe stays open


def test_missing_key_says_what_is_missing(keyed_server: str) -> None:
    response = httpx.post(f"{keyed_server}/v1/messages", json={})
    assert response.status_code == 401
    assert response.json()["error"]["message"] == "x-api-key header is required"


def test_real_model_is_freed_when_a_long_stream_is_abandoned(
    server: str, client: anthropic.Anthropic
) -> None:
    body = {
        "model": CLAUDE_MODEL,
        "max_tokens": 8000,
        "stream": True,
        "messages": [{"role": "user", "content": "Write a very long story about a lighthouse."}],
    }
    with httpx.stream("POST", f"{server}/v1/messages", json=body) as response:
        for line in response.iter_lines():
            if "text_delta" in line:
                break
    started = time.monotonic()
    reply = client.messages.create(model=CLAUDE_MODEL, max_tokens=5, messages=USER)
    # Decoding 8000 tokens takes a minute here; a freed model answers in well under that.
    assert time.monotonic() - started < 15
    assert reply.usage.output_tokens > 0


class RefusingEngine(ScriptedEngine):
    async def generate(
        self, prompt: PreparedPrompt, params: SamplingParams
    ) -> AsyncGenerator[GenerationEvent, None]:
        raise InvalidRequestError("the upstream refused this")
        yield  # pragma: no cover (makes this a generator)


def test_engine_api_errors_keep_their_status_without_streaming() -> None:
    with serve(RefusingEngine()) as running:
        client = anthropic.Anthropic(base_url=running.base_url, api_key="k", max_retries=0)
        with pytest.raises(anthropic.BadRequestError) as caught:
            client.messages.create(model=CLAUDE_MODEL, max_tokens=5, messages=USER)
        assert "the upstream refused this" in caught.value.message
