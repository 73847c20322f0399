"""The agent's models on the wire: AnthropicModel against a real tercet server on loopback,
InProcessModel on tercet's app with no server (a scripted engine, and the real bundled model),
and the streaming ASGI transport between the SDK and the app."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tercet.agent import (
    AnthropicModel,
    BashTool,
    Budget,
    Compacted,
    CompactionConfig,
    InProcessModel,
    ModelRequest,
    Permissions,
    ReplyProgress,
    TextDelta,
    TextEditorTool,
    ToolFinished,
    load_session,
)
from tercet.agent.inprocess import StreamingASGITransport
from tercet.engine.bundled import BUNDLED_MODEL_ID, bundled_model_path
from tercet.engine.llama import LlamaCppEngine
from tercet.engine.scripted import ScriptedCall, ScriptedEngine
from tercet.server.app import create_app
from tercet.server.config import ServerConfig
from tercet.server.runner import BackgroundServer
from tests.agent.conftest import MakeAgent, collect, result_of
from tests.conftest import CLAUDE_MODEL

pytestmark = pytest.mark.anyio
TASK = "Say hello with bash, then stop."


def scripted_engine() -> ScriptedEngine:
    return ScriptedEngine(
        [ScriptedCall("bash", {"command": "echo hello over the wire"}), "Said hello. All done."],
        context_window=4096,
    )


@pytest.fixture
def scripted_server(tmp_path: Path) -> Iterator[str]:
    config = ServerConfig(data_dir=tmp_path / "server", api_keys=["sk-test"])
    with BackgroundServer(create_app(config, [scripted_engine()])) as running:
        yield running.base_url


async def test_anthropic_model_runs_the_loop_against_a_tercet_server(
    make_agent: MakeAgent, scripted_server: str
) -> None:
    model = AnthropicModel(base_url=scripted_server, api_key="sk-test", max_retries=0)
    try:
        agent = make_agent(model, model=CLAUDE_MODEL, tools=[BashTool()], max_tokens=1024)
        events = await collect(agent.run(TASK))
        assert await model.context_window(CLAUDE_MODEL) == 4096
    finally:
        await model.aclose()
    result = result_of(events)
    assert result.ok, result.message
    assert result.text == "Said hello. All done." and result.turns == 2
    (finished,) = [e for e in events if isinstance(e, ToolFinished)]
    assert (finished.name, finished.content, finished.is_error) == (
        "bash",
        "hello over the wire\n",
        False,
    )
    assert len([e for e in events if isinstance(e, TextDelta)]) > 1  # streamed word by word
    assert result.usage.input_tokens > 0 and result.usage.output_tokens > 0
    # The saved conversation is what went over the wire: the server's tool_use id and all.
    session = load_session(Path(result.trajectory or ""))
    call = session.messages[1]["content"][0]
    assert call["type"] == "tool_use" and call["id"].startswith("toolu_")
    assert session.messages[2]["content"][0]["tool_use_id"] == call["id"]


async def test_api_errors_end_the_run_with_the_servers_message(
    make_agent: MakeAgent, scripted_server: str
) -> None:
    model = AnthropicModel(base_url=scripted_server, api_key="wrong-key", max_retries=0)
    try:
        result = await make_agent(model, model=CLAUDE_MODEL).run_until_done(TASK)
    finally:
        await model.aclose()
    assert result.reason == "error"
    assert "the model answered 401: authentication_error" in result.message


async def test_in_process_model_speaks_the_same_wire(make_agent: MakeAgent, tmp_path: Path) -> None:
    model = InProcessModel(scripted_engine(), config=ServerConfig(data_dir=tmp_path, api_keys=[]))
    try:
        agent = make_agent(model, model=CLAUDE_MODEL, tools=[BashTool()], max_tokens=1024)
        events = await collect(agent.run(TASK))
        assert await model.context_window(CLAUDE_MODEL) == 4096
    finally:
        await model.aclose()
    result = result_of(events)
    assert result.ok and result.text == "Said hello. All done."
    (finished,) = [e for e in events if isinstance(e, ToolFinished)]
    assert finished.content == "hello over the wire\n"


async def test_a_compaction_passes_the_servers_checks(
    make_agent: MakeAgent, tmp_path: Path
) -> None:
    """The summary request (the history, tools offered but tool_choice none) is one the
    server accepts, and so is the compacted history after it."""
    engine = ScriptedEngine(
        [ScriptedCall("bash", {"command": "echo 1"}), "Ran echo once.", "Done."],
        context_window=4096,
    )
    model = InProcessModel(engine, config=ServerConfig(data_dir=tmp_path, api_keys=[]))
    tiny = CompactionConfig(context_window=100, threshold=0.5, keep_steps=0)
    try:
        agent = make_agent(
            model, model=CLAUDE_MODEL, tools=[BashTool()], max_tokens=1024, compaction=tiny
        )
        events = await collect(agent.run(TASK))
    finally:
        await model.aclose()
    result = result_of(events)
    assert result.ok, result.message
    (compacted,) = [e for e in events if isinstance(e, Compacted)]
    assert compacted.summary == "Ran echo once."
    assert "Your context window is nearly full" in engine.prompts[1]
    assert "Ran echo once." in engine.prompts[2] and TASK in engine.prompts[2]


async def test_streaming_transport_delivers_the_body_as_it_is_sent() -> None:
    sent: list[float] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["path"] == "/v1/slow"
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for index in range(3):
            sent.append(time.monotonic())
            await send({"type": "http.response.body", "body": b"%d" % index, "more_body": True})
            await asyncio.sleep(0.1)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    client = httpx2.AsyncClient(transport=StreamingASGITransport(app), base_url="http://app")
    async with client, client.stream("POST", "/v1/slow", content=b"{}") as response:
        received = [(chunk, time.monotonic()) async for chunk in response.aiter_bytes()]
    assert [chunk for chunk, _ in received] == [b"0", b"1", b"2"]
    assert received[0][1] < sent[2]  # the first chunk arrived before the app sent the last


async def test_closing_a_stream_early_tells_the_app(tmp_path: Path) -> None:
    engine = ScriptedEngine([" ".join(f"w{i}" for i in range(400))], delay=0.01)
    model = InProcessModel(engine, config=ServerConfig(data_dir=tmp_path, api_keys=[]))
    request = ModelRequest(
        CLAUDE_MODEL, 1000, [{"role": "user", "content": [{"type": "text", "text": "go"}]}]
    )
    try:
        stream = model.stream(request)
        async for item in stream:
            if isinstance(item, ReplyProgress):  # as the reply starts
                continue
            assert isinstance(item, TextDelta)
            break
        await stream.aclose()
        deadline = time.monotonic() + 5
        while engine.log != ["cancelled"] and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert engine.log == ["cancelled"]
    finally:
        await model.aclose()


async def test_in_process_model_on_the_bundled_model(make_agent: MakeAgent, tmp_path: Path) -> None:
    """The real embedded model, weak as it is: the mechanics must hold (requests go through,
    tools are offered, the run ends within its budget and is saved), not the answers."""
    engine = LlamaCppEngine(
        bundled_model_path(), model_id=BUNDLED_MODEL_ID, context_window=8192, threads=2
    )
    model = InProcessModel(
        engine,
        config=ServerConfig(data_dir=tmp_path / "server", api_keys=[]),
        extra_body={"temperature": 0},
    )
    work = tmp_path / "work"
    (work / "hello.txt").write_text("hello\n")
    try:
        agent = make_agent(
            model,
            model=CLAUDE_MODEL,
            tools=[BashTool(timeout_s=10), TextEditorTool()],
            permissions=Permissions(mode="plan", cwd=work),  # whatever it calls, nothing changes
            max_tokens=48,
            budget=Budget(max_turns=3, max_wall_time_s=120),
        )
        events = await collect(agent.run("Show the contents of hello.txt."))
    finally:
        await model.aclose()
    result = result_of(events)
    assert result.reason in ("end_turn", "max_turns", "max_tokens", "max_wall_time"), result
    assert 1 <= result.turns <= 3
    assert result.usage.input_tokens > 100  # the system prompt and the tool schemas
    assert result.usage.output_tokens > 0
    session = load_session(Path(result.trajectory or ""))
    # A reply the wall clock cut short (a loaded machine) counts among the run's turns, its
    # output estimated, but only finished turns are saved in the session.
    cut_short = result.reason == "max_wall_time" and session.turns == result.turns - 1
    assert session.turns == result.turns or cut_short, (session.turns, result)
    assert session.messages[0]["role"] == "user"
    assert (work / "hello.txt").read_text() == "hello\n"


async def test_signed_thinking_survives_the_trajectory_on_the_bundled_model(
    make_agent: MakeAgent, tmp_path: Path
) -> None:
    """Thinking blocks go back to the server exactly as it signed them, resumed from the
    saved session; a tampered one is refused by the server, and the run says why."""
    engine = LlamaCppEngine(
        bundled_model_path(), model_id=BUNDLED_MODEL_ID, context_window=8192, threads=2
    )
    model = InProcessModel(
        engine,
        config=ServerConfig(data_dir=tmp_path / "server", api_keys=[]),
        extra_body={"temperature": 0},
    )
    settings: dict[str, Any] = {
        "model": CLAUDE_MODEL,
        "thinking": True,
        "thinking_budget_tokens": 1024,
        "max_tokens": 1100,
        "budget": Budget(max_turns=1),  # a reply may think for up to 1024 tokens
    }
    try:
        agent = make_agent(model, **settings)
        first = await agent.run_until_done("What is 2+2?")
        assert first.reason in ("end_turn", "max_turns"), first
        thought = agent.messages[1]["content"][0]
        assert thought["type"] == "thinking" and thought["signature"]

        second = await make_agent(model, **settings).resume_until_done(first.session_id, "And 3+3?")
        assert second.reason in ("end_turn", "max_turns"), second

        path = Path(first.trajectory or "")
        path.write_text(path.read_text().replace(thought["signature"], "forged" * 8))
        forged = await make_agent(model, **settings).resume_until_done(first.session_id, "And 4+4?")
        assert forged.reason == "error" and "Invalid `signature`" in forged.message
    finally:
        await model.aclose()
