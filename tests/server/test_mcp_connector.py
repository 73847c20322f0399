"""The MCP connector: remote MCP servers named in a request, their tools run by the server.

Real MCP servers (the SDK's MCPServer in a subprocess, both transports, one with a token) on
loopback. The loop's exact control flow is checked with a scripted model; that the real model
calls a discovered tool and reads its result, with the bundled model through the SDK.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anthropic
import pytest

from tercet.engine.scripted import ScriptedCall, ScriptedEngine
from tercet.server.app import create_app
from tercet.server.config import ServerConfig
from tercet.server.runner import BackgroundServer
from tests.conftest import CLAUDE_MODEL
from tests.mcp.servers import SECRET_WORD, McpServerInfo, running_mcp_server

pytestmark = pytest.mark.timeout(120)

TOKEN = "tok-connector-8812"
V1 = "mcp-client-2025-04-04"
V2 = "mcp-client-2025-11-20"
TOOLS = {"add", "echo", "secret_word", "sleep", "fail", "reject", "die"}


@pytest.fixture(scope="module")
def http_server() -> Iterator[McpServerInfo]:
    """Streamable HTTP, requiring a token."""
    with running_mcp_server("streamable-http", token=TOKEN) as info:
        yield info


@pytest.fixture(scope="module")
def sse_server() -> Iterator[McpServerInfo]:
    """The older SSE transport, open."""
    with running_mcp_server("sse") as info:
        yield info


def server_def(info: McpServerInfo, name: str = "tools", **extra: Any) -> dict[str, Any]:
    definition = {"type": "url", "url": info.url, "name": name, **extra}
    if info.token is not None:
        definition.setdefault("authorization_token", info.token)
    return definition


def toolset(name: str = "tools", **extra: Any) -> dict[str, Any]:
    return {"type": "mcp_toolset", "mcp_server_name": name, **extra}


@contextmanager
def scripted_server(
    tmp_path: Path, replies: list[str | ScriptedCall], **config: Any
) -> Iterator[tuple[anthropic.Anthropic, ScriptedEngine]]:
    engine = ScriptedEngine(replies)
    settings = ServerConfig(data_dir=tmp_path, api_keys=[], **config)
    with BackgroundServer(create_app(settings, [engine])) as running:
        client = anthropic.Anthropic(base_url=running.base_url, api_key="k", max_retries=0)
        yield client, engine


def ask(
    client: anthropic.Anthropic,
    servers: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None = None,
    *,
    betas: list[str] | None = None,
    text: str = "Go.",
    **params: Any,
) -> Any:
    """One request through the SDK's beta surface, as a user of the connector writes it."""
    default_tools = [toolset(s["name"]) for s in servers]
    body: dict[str, Any] = {
        "model": CLAUDE_MODEL,
        "max_tokens": 200,
        "messages": [{"role": "user", "content": text}],
        "mcp_servers": servers,
        "tools": default_tools if tools is None else tools,
        "betas": betas or [V2],
    }
    return client.beta.messages.create(**(body | params))


def offered(engine: ScriptedEngine) -> list[str]:
    return [tool.name for tool in engine.conversations[-1].tools]


def result_text(block: Any) -> str:
    content = block.content
    return content if isinstance(content, str) else "".join(b.text for b in content)


# The loop, exactly (a scripted model, real MCP servers)


@pytest.mark.parametrize("transport", ["streamable-http", "sse"])
def test_the_server_calls_the_tool_and_the_model_goes_on(
    tmp_path: Path,
    transport: str,
    http_server: McpServerInfo,
    sse_server: McpServerInfo,
) -> None:
    info = http_server if transport == "streamable-http" else sse_server
    replies: list[str | ScriptedCall] = [ScriptedCall("add", {"a": 2, "b": 40}), "It is 42."]
    with scripted_server(tmp_path, replies) as (client, engine):
        message = ask(client, [server_def(info)])
    assert [b.type for b in message.content] == ["mcp_tool_use", "mcp_tool_result", "text"]
    call, result, answer = message.content
    assert call.id.startswith("mcptoolu_")
    assert (call.name, call.server_name, call.input) == ("add", "tools", {"a": 2, "b": 40})
    assert result.tool_use_id == call.id and result.is_error is False
    assert result_text(result) == "42"
    assert answer.text == "It is 42." and message.stop_reason == "end_turn"
    assert set(offered(engine)) == TOOLS
    assert "42" in engine.prompts[-1]  # the model read the result before answering


def test_streamed_in_order(tmp_path: Path, http_server: McpServerInfo) -> None:
    replies: list[str | ScriptedCall] = [ScriptedCall("echo", {"text": "hi there"}), "Done."]
    with (
        scripted_server(tmp_path, replies) as (client, _),
        client.beta.messages.stream(
            model=CLAUDE_MODEL,
            max_tokens=100,
            messages=[{"role": "user", "content": "Go."}],
            mcp_servers=[server_def(http_server)],  # type: ignore[list-item]
            tools=[toolset()],  # type: ignore[list-item]
            betas=[V2],
        ) as stream,
    ):
        events = list(stream)
        message = stream.get_final_message()
    starts = [e.content_block.type for e in events if e.type == "content_block_start"]
    assert starts == ["mcp_tool_use", "mcp_tool_result", "text"]
    deltas = [e.delta for e in events if e.type == "content_block_delta" and e.index == 0]
    assert deltas and all(d.type == "input_json_delta" for d in deltas)
    assert message.content[0].input == {"text": "hi there"}
    assert result_text(message.content[1]) == "hi there"


def test_tool_errors_are_results_the_model_reads(
    tmp_path: Path, http_server: McpServerInfo
) -> None:
    replies: list[str | ScriptedCall] = [
        ScriptedCall("fail", {"message": "disk on fire"}),
        ScriptedCall("reject", {"message": "not allowed today"}),
        ScriptedCall("add", {"a": "two"}),  # input the tool's schema refuses
        "I give up.",
    ]
    with scripted_server(tmp_path, replies) as (client, engine):
        message = ask(client, [server_def(http_server)])
    kinds = [b.type for b in message.content]
    assert kinds == ["mcp_tool_use", "mcp_tool_result"] * 3 + ["text"]
    results = message.content[1:6:2]
    assert all(r.is_error for r in results)
    assert "disk on fire" in result_text(results[0])
    assert "not allowed today" in result_text(results[1])
    assert result_text(results[2])  # says what was wrong with the input
    assert "disk on fire" in engine.prompts[-1]


def test_a_slow_tool_times_out_as_an_error_result(
    tmp_path: Path, http_server: McpServerInfo
) -> None:
    replies: list[str | ScriptedCall] = [ScriptedCall("sleep", {"seconds": 30}), "Too slow."]
    with scripted_server(tmp_path, replies, mcp_call_timeout_s=1.0) as (client, _):
        started = time.monotonic()
        message = ask(client, [server_def(http_server)])
        took = time.monotonic() - started
        assert took < 15, took
        result = message.content[1]
        assert result.is_error and "within 1s" in result_text(result)
        assert message.content[-1].text == "Too slow."
        # The pooled session is still good for the next request.
        replies_after = ask(client, [server_def(http_server)])
        assert replies_after.content[0].type == "mcp_tool_use"


def test_a_server_that_dies_mid_call(tmp_path: Path) -> None:
    replies: list[str | ScriptedCall] = [
        ScriptedCall("die", {}),
        "It died.",
        ScriptedCall("secret_word", {}),
        "Got it.",
    ]
    with scripted_server(tmp_path, replies) as (client, _):
        # Restarted below on the port this server bound itself (a port probed free before
        # the server started could be taken meanwhile).
        with running_mcp_server("streamable-http") as doomed:
            message = ask(client, [server_def(doomed)])
            assert [b.type for b in message.content] == ["mcp_tool_use", "mcp_tool_result", "text"]
            assert message.content[1].is_error
            assert doomed.process.wait(timeout=10) == 1
        # Down now: a clear 400 naming it, not a hang or a 500; the server keeps serving.
        with pytest.raises(anthropic.BadRequestError, match="'tools' cannot be used"):
            ask(client, [server_def(doomed)])
        assert client.models.list().data[0].id == "scripted"
        # Back on the same URL: the next request reconnects and is served as if nothing happened.
        with running_mcp_server("streamable-http", port=doomed.port) as back:
            again = ask(client, [server_def(back)])
            assert result_text(again.content[1]) == SECRET_WORD
            assert again.content[1].is_error is False


def test_allowed_tools_and_configs_hide_the_others(
    tmp_path: Path, http_server: McpServerInfo, sse_server: McpServerInfo
) -> None:
    with scripted_server(tmp_path, ["Fine."]) as (client, engine):
        # v2: off by default, two turned on; the other server's tools all on.
        only = {"enabled": False}
        configs = {"add": {"enabled": True}, "echo": {"enabled": True}}
        servers = [server_def(http_server, "a"), server_def(sse_server, "b")]
        tools = [toolset("a", default_config=only, configs=configs), toolset("b")]
        ask(client, servers, tools)
        names = offered(engine)
        assert names[:2] == ["add", "echo"]
        # b's tools clash with a's names, so they are made unique with the server's name.
        assert set(names[2:]) == {"b__add", "b__echo"} | (TOOLS - {"add", "echo"})
        # v2: on by default, one turned off.
        ask(client, servers[:1], [toolset("a", configs={"die": {"enabled": False}})])
        assert set(offered(engine)) == TOOLS - {"die"}
        # v1: allowed_tools, and enabled.
        v1_servers = [
            server_def(http_server, "a", tool_configuration={"allowed_tools": ["secret_word"]}),
            server_def(sse_server, "b", tool_configuration={"enabled": False}),
        ]
        ask(client, v1_servers, [], betas=[V1])
        assert offered(engine) == ["secret_word"]


def test_a_call_of_a_hidden_tool_is_not_run(tmp_path: Path, http_server: McpServerInfo) -> None:
    # The model names a tool the request did not offer: an ordinary client tool call, not run.
    replies: list[str | ScriptedCall] = [ScriptedCall("die", {})]
    with scripted_server(tmp_path, replies) as (client, _):
        only = [toolset(default_config={"enabled": False}, configs={"add": {"enabled": True}})]
        message = ask(client, [server_def(http_server)], only)
    assert [b.type for b in message.content] == ["tool_use"]
    assert message.stop_reason == "tool_use"
    assert http_server.process.poll() is None  # still alive: `die` never ran


def test_one_call_a_reply_when_the_server_runs_tools(
    tmp_path: Path, http_server: McpServerInfo
) -> None:
    # The loop answers the call a reply ends with; several in one reply (server and client
    # calls mixed) could not each get their result, so the engine is told to make one.
    weather = {"name": "weather", "input_schema": {"type": "object"}}
    with scripted_server(tmp_path, ["Fine."]) as (client, engine):
        ask(client, [server_def(http_server)], [weather, toolset()])
        client.messages.create(
            model=CLAUDE_MODEL,
            max_tokens=20,
            messages=[{"role": "user", "content": "Go."}],
            tools=[weather],  # type: ignore[list-item]
        )
    with_mcp, without = (params.tools for params in engine.sampling)
    assert with_mcp is not None and with_mcp.parallel is False
    assert without is not None and without.parallel is True


def test_mcp_tools_next_to_the_requests_own(tmp_path: Path, http_server: McpServerInfo) -> None:
    weather = {"name": "weather", "input_schema": {"type": "object"}}
    replies: list[str | ScriptedCall] = [
        ScriptedCall("secret_word", {}),
        ScriptedCall("weather", {}),
    ]
    with scripted_server(tmp_path, replies) as (client, engine):
        message = ask(client, [server_def(http_server)], [weather, toolset()])
    assert offered(engine)[0] == "weather" and set(offered(engine)[1:]) == TOOLS
    kinds = [b.type for b in message.content]
    assert kinds == ["mcp_tool_use", "mcp_tool_result", "tool_use"]
    assert result_text(message.content[1]) == SECRET_WORD
    assert message.stop_reason == "tool_use"  # the client runs its own tool


def test_pause_turn_and_sending_it_back(tmp_path: Path, http_server: McpServerInfo) -> None:
    replies: list[str | ScriptedCall] = [
        ScriptedCall("add", {"a": 1, "b": 1}),
        ScriptedCall("add", {"a": 2, "b": 2}),
        "Four.",
    ]
    with scripted_server(tmp_path, replies, max_tool_iterations=1) as (client, engine):
        first = ask(client, [server_def(http_server)])
        assert first.stop_reason == "pause_turn"
        assert [b.type for b in first.content] == ["mcp_tool_use", "mcp_tool_result"]
        history = [
            {"role": "user", "content": "Go."},
            {"role": "assistant", "content": [b.model_dump() for b in first.content]},
        ]
        second = ask(client, [server_def(http_server)], messages=history)
        assert second.stop_reason == "pause_turn"
        assert result_text(second.content[1]) == "4"
        # The earlier call and result were part of what the model read, under the same name.
        earlier = [b for t in engine.conversations[-1].turns for b in t.blocks]
        assert [(b.type, getattr(b, "name", None)) for b in earlier[1:3]] == [
            ("mcp_tool_use", "add"),
            ("mcp_tool_result", None),
        ]
        history.append({"role": "assistant", "content": [b.model_dump() for b in second.content]})
        history[1:] = [
            {"role": "assistant", "content": history[1]["content"] + history[2]["content"]}
        ]
        third = ask(client, [server_def(http_server)], messages=history)
        assert [b.type for b in third.content] == ["text"] and third.stop_reason == "end_turn"


# Requests that cannot be served: clear 400s, the token never in them


def test_a_wrong_token_is_a_clear_error(
    tmp_path: Path, http_server: McpServerInfo, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with scripted_server(tmp_path, ["Fine."]) as (client, _):
        for token in ("wrong-token-xyz", None):
            server = server_def(http_server, authorization_token=token)
            if token is None:
                del server["authorization_token"]
            with pytest.raises(anthropic.BadRequestError) as refused:
                ask(client, [server])
            body = refused.value.body
            assert isinstance(body, dict) and body["error"]["type"] == "invalid_request_error"
            message = body["error"]["message"]
            assert "'tools'" in message and "mcp_servers.0" in message
            assert TOKEN not in message and "wrong-token-xyz" not in message
    # The server side logged (the anthropic client logs its own request, so it is left out);
    # neither token is in it.
    served = [r.getMessage() for r in caplog.records if not r.name.startswith("anthropic")]
    assert any("mcp" in r.name for r in caplog.records)
    assert not [line for line in served if TOKEN in line or "wrong-token-xyz" in line]


def test_odd_tokens_and_url_secrets_stay_out_of_errors(
    tmp_path: Path, sse_server: McpServerInfo
) -> None:
    with scripted_server(tmp_path, ["Fine."]) as (client, _):
        for token in ("sekrit\nxyz", "s\u00e9krit"):  # could never be a header: refused as such
            with pytest.raises(anthropic.BadRequestError) as refused:
                ask(client, [server_def(sse_server, authorization_token=token)])
            assert "authorization_token" in refused.value.message
            assert "krit" not in refused.value.message
        # A wrong path, spelt so the HTTP client quotes it back differently, with a secret query.
        base = sse_server.url.replace("127.0.0.1", "LOCALHOST").rsplit("/", 1)[0]
        url = f"{base}/nope/sse?token=SEKRIT1"
        with pytest.raises(anthropic.BadRequestError) as refused:
            ask(client, [{"type": "url", "url": url, "name": "tools"}])
        assert "SEKRIT1" not in refused.value.message, refused.value.message
        assert "cannot be used" in refused.value.message


def test_a_url_outside_the_allow_list_is_refused(
    tmp_path: Path, http_server: McpServerInfo, caplog: pytest.LogCaptureFixture
) -> None:
    closed = {"mcp_allow_loopback": False, "mcp_allowed_urls": ["https://mcp.example.com/"]}
    with scripted_server(tmp_path, ["Fine."], **closed) as (client, engine):
        with pytest.raises(anthropic.BadRequestError, match=r"mcp_servers\.0\.url"):
            ask(client, [server_def(http_server)])
        for url in ("http://169.254.169.254/latest", "file:///etc/passwd", "http://10.0.0.1/mcp"):
            with pytest.raises(anthropic.BadRequestError, match=r"mcp_servers\.0\.url"):
                ask(client, [{"type": "url", "url": url, "name": "x"}])
        assert engine.prompts == []  # refused before the model ran
    assert TOKEN not in caplog.text


@pytest.mark.parametrize(
    ("servers", "tools", "betas", "match"),
    [
        ([{"name": "a"}], None, [], "anthropic-beta"),
        ([{"name": "a"}, {"name": "a"}], None, [V2], "unique"),
        ([{"name": "a"}], [toolset("a"), toolset("a")], [V2], "more than one"),
        ([{"name": "a"}], [toolset("b")], [V2], "not in `mcp_servers`"),
        ([{"name": "a"}], [], [V2], "exactly one mcp_toolset"),
        (
            [{"name": "a", "tool_configuration": {"enabled": True}}],
            None,
            [V2],
            "tool_configuration",
        ),
        ([{"name": "a"}], [toolset("a")], [V1], "mcp_toolset"),
        ([{"name": "a", "url": "not a url"}], None, [V2], "url"),
        ([{"name": "a", "type": "stdio"}], None, [V2], "type"),
        ([{"name": f"s{n}"} for n in range(21)], None, [V2], "at most 20 MCP servers"),
    ],
)
def test_requests_that_break_the_rules(
    tmp_path: Path,
    http_server: McpServerInfo,
    servers: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
    betas: list[str],
    match: str,
) -> None:
    full = [server_def(http_server) | s for s in servers]
    if tools is None:
        tools = [toolset(s["name"]) for s in full][:1]
    with scripted_server(tmp_path, ["Fine."]) as (client, engine):
        with pytest.raises(anthropic.BadRequestError, match=match):
            ask(client, full, tools, betas=betas or ["other-beta-2025-01-01"])
        assert client.models.list().data  # still serving
        assert engine.prompts == []


# The real model (the bundled GGUF)


@pytest.mark.parametrize("stream", [False, True])
def test_the_real_model_calls_a_discovered_tool(
    client: anthropic.Anthropic, http_server: McpServerInfo, stream: bool
) -> None:
    # Forced, as the 135M model would not choose the tool; then it answers freely.
    params: dict[str, Any] = {
        "model": CLAUDE_MODEL,
        "max_tokens": 60,
        "messages": [{"role": "user", "content": "What is the secret word?"}],
        "mcp_servers": [server_def(http_server)],
        "tools": [
            toolset(default_config={"enabled": False}, configs={"secret_word": {"enabled": True}})
        ],
        "tool_choice": {"type": "any"},
        "betas": [V2],
        "extra_body": {"temperature": 0},
    }
    if stream:
        with client.beta.messages.stream(**params) as events:
            message = events.get_final_message()
    else:
        message = client.beta.messages.create(**params)
    kinds = [b.type for b in message.content]
    assert kinds[:2] == ["mcp_tool_use", "mcp_tool_result"], kinds
    call, result = message.content[:2]
    assert (call.name, call.server_name) == ("secret_word", "tools")
    assert result.tool_use_id == call.id and result.is_error is False
    assert result_text(result) == SECRET_WORD
    # The model went on after reading the result: a final answer, or another call.
    assert len(message.content) > 2 and message.stop_reason in ("end_turn", "max_tokens")
    assert message.usage.output_tokens > 0


def test_the_real_model_with_arguments_over_sse(
    client: anthropic.Anthropic, sse_server: McpServerInfo
) -> None:
    only_add = toolset(default_config={"enabled": False}, configs={"add": {"enabled": True}})
    message = client.beta.messages.create(
        model=CLAUDE_MODEL,
        max_tokens=100,
        messages=[{"role": "user", "content": "What is 2 plus 3?"}],
        mcp_servers=[server_def(sse_server)],  # type: ignore[list-item]
        tools=[only_add],  # type: ignore[list-item]
        tool_choice={"type": "tool", "name": "add"},
        betas=[V1, V2],
        extra_body={"temperature": 0},
    )
    call, result = message.content[:2]
    assert call.type == "mcp_tool_use" and call.name == "add"
    a, b = call.input["a"], call.input["b"]  # the schema's required arguments, as integers
    assert isinstance(a, int) and isinstance(b, int)
    assert result.is_error is False and result_text(result) == str(a + b)


def test_count_tokens_counts_the_mcp_tools(
    client: anthropic.Anthropic, http_server: McpServerInfo
) -> None:
    base: dict[str, Any] = {
        "model": CLAUDE_MODEL,
        "messages": [{"role": "user", "content": "Go."}],
        "betas": [V2],
    }
    plain = client.beta.messages.count_tokens(**base).input_tokens
    with_mcp = client.beta.messages.count_tokens(
        **base, mcp_servers=[server_def(http_server)], tools=[toolset()]
    ).input_tokens
    fewer = client.beta.messages.count_tokens(
        **base,
        mcp_servers=[server_def(http_server)],
        tools=[toolset(default_config={"enabled": False}, configs={"add": {"enabled": True}})],
    ).input_tokens
    assert plain < fewer < with_mcp
