"""MCP servers as agent tools, against real servers: the SDK's MCPServer over stdio (a script in
fixtures/) and over Streamable HTTP and SSE (tests/mcp/servers.py), plus `.mcp.json` parsing."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from tercet.agent import ScriptedModel, tool_use, turn
from tercet.agent.tools.base import ToolContext, ToolResult
from tercet.agent.tools.mcp import MAX_NAME_CHARS, McpServers, McpServerTool, tool_name
from tercet.agent.tools.mcp_config import (
    HttpServerConfig,
    McpConfigError,
    SseServerConfig,
    StdioServerConfig,
    expand_variables,
    find_mcp_config,
    load_mcp_config,
    parse_mcp_config,
)
from tests.agent.conftest import MakeAgent
from tests.mcp.servers import SECRET_WORD, McpServerInfo, refused_port, running_mcp_server

# Nothing here should take long: a hang (a call or a close that never ends) fails fast.
pytestmark = pytest.mark.timeout(60)

SERVER_SCRIPT = str(Path(__file__).parent / "fixtures" / "mcp_stdio_server.py")
STDIO_TOOLS = [
    "add",
    "echo",
    "look",
    "meet",
    "env",
    "cwd",
    "pid",
    "picture",
    "sleep",
    "fail",
    "die",
]
HTTP_TOOLS = {"add", "echo", "secret_word", "sleep", "fail", "reject", "die"}
TOKEN = "tok-agent-0451"
TOKEN_VAR = "TERCET_TEST_MCP_AGENT_TOKEN"


def stdio(*args: str, **fields: Any) -> dict[str, Any]:
    """A `.mcp.json` entry for the fixture server."""
    return {"command": sys.executable, "args": [SERVER_SCRIPT, *args], **fields}


def config(servers: dict[str, Any], **options: Any) -> McpServers:
    return McpServers(parse_mcp_config({"mcpServers": servers}), **options)


def by_name(servers: McpServers) -> dict[str, McpServerTool]:
    return {tool.name: tool for tool in servers.tools}


async def call(servers: McpServers, tool: str, /, **input: Any) -> ToolResult:
    return await by_name(servers)[tool].run(input, ToolContext(Path.cwd()))


def text(result: ToolResult) -> str:
    assert isinstance(result.content, str)
    return result.content


def children() -> dict[int, str]:
    """This process's child processes (zombies included), with their state letter."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == os.getpid():
            found[int(entry.name)] = fields[0]
    return found


def gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


@pytest.fixture(scope="module")
def http_server() -> Iterator[McpServerInfo]:
    """A Streamable HTTP server that wants a bearer token, for the whole module."""
    with running_mcp_server("streamable-http", token=TOKEN) as info:
        yield info


@pytest.fixture(scope="module")
def sse_server() -> Iterator[McpServerInfo]:
    with running_mcp_server("sse", token=TOKEN) as info:
        yield info


@pytest.fixture
def token_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_VAR, TOKEN)


def remote(info: McpServerInfo, kind: str = "http") -> dict[str, Any]:
    """A `.mcp.json` entry for a test HTTP server, its token taken from the environment."""
    return {"type": kind, "url": info.url, "headers": {"Authorization": f"Bearer ${{{TOKEN_VAR}}}"}}


@pytest.fixture
async def local() -> AsyncIterator[McpServers]:
    async with config({"local": stdio()}, call_timeout_s=10) as servers:
        assert servers.errors == {}
        yield servers


# Discovery


@pytest.mark.anyio
async def test_stdio_tools_are_offered_under_claude_codes_names(local: McpServers) -> None:
    assert [tool.name for tool in local.tools] == [f"mcp__local__{name}" for name in STDIO_TOOLS]
    add = by_name(local)["mcp__local__add"]
    assert (add.server_name, add.tool_name) == ("local", "add")
    definition = add.definition()
    assert definition["name"] == "mcp__local__add"
    assert definition["description"] == "Add two integers."
    schema = definition["input_schema"]
    assert schema["type"] == "object"
    assert schema["required"] == ["a", "b"]
    assert schema["properties"]["a"]["type"] == "integer"
    assert "type" not in definition  # a custom tool
    assert add.describe({"a": 1, "b": 2}) == 'mcp__local__add: {"a": 1, "b": 2}'


@pytest.mark.anyio
async def test_read_only_comes_from_the_tools_annotations(local: McpServers) -> None:
    tools = by_name(local)
    assert tools["mcp__local__look"].is_read_only({"what": "x"}) is True
    assert tools["mcp__local__add"].is_read_only({"a": 1, "b": 2}) is False  # no annotation


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["http", "sse"])
async def test_http_tools_are_discovered_and_called(
    kind: str, http_server: McpServerInfo, sse_server: McpServerInfo, token_env: None
) -> None:
    info = http_server if kind == "http" else sse_server
    async with config({"remote": remote(info, kind)}) as servers:
        assert servers.errors == {}
        assert {tool.name for tool in servers.tools} == {f"mcp__remote__{t}" for t in HTTP_TOOLS}
        add = by_name(servers)["mcp__remote__add"].definition()
        assert add["description"] == "Add two integers."
        assert add["input_schema"]["properties"]["b"]["type"] == "integer"
        word = await call(servers, "mcp__remote__secret_word")
        assert (text(word), word.is_error) == (SECRET_WORD, False)
        assert text(await call(servers, "mcp__remote__add", a=2, b=40)) == "42"


# Calls


@pytest.mark.anyio
async def test_stdio_calls_return_the_servers_result(local: McpServers) -> None:
    result = await call(local, "mcp__local__add", a=2, b=40)
    assert (text(result), result.is_error) == ("42", False)
    assert text(await call(local, "mcp__local__echo", text="héllo\nworld")) == "héllo\nworld"
    picture = await call(local, "mcp__local__picture")
    assert text(picture) == "a pixel:\n[image: image/png, 67 bytes]"


@pytest.mark.anyio
async def test_concurrent_calls_share_one_server(local: McpServers) -> None:
    results: list[str] = []

    async def add(n: int) -> None:
        results.append(text(await call(local, "mcp__local__add", a=n, b=n)))

    async with anyio.create_task_group() as group:
        for n in range(8):
            group.start_soon(add, n)
    assert sorted(results, key=int) == [str(2 * n) for n in range(8)]


@pytest.mark.anyio
async def test_the_agent_runs_read_only_mcp_calls_of_one_reply_together(
    local: McpServers, make_agent: MakeAgent
) -> None:
    meet = tool_use("mcp__local__meet", {"expected": 2})
    model = ScriptedModel([turn(meet, tool_use("mcp__local__meet", {"expected": 2})), turn("ok")])
    assert (await make_agent(model, tools=local.tools).run_until_done("meet twice")).ok
    results = model.requests[1].messages[-1]["content"]
    # Run one after the other, the first call would wait its 8 s alone and say "1 met": the
    # meeting is the proof, so no clock is read (a loaded machine may take seconds for it).
    assert [r["content"] for r in results] == ["2 met", "2 met"]


@pytest.mark.anyio
async def test_stdio_server_gets_env_cwd_and_expanded_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TERCET_TEST_FROM_PARENT", "inherited")
    monkeypatch.setenv("TERCET_TEST_EXPANDED", "expanded-value")
    (tmp_path / "work").mkdir()
    entry = stdio(env={"GREETING": "hi ${TERCET_TEST_EXPANDED}!"}, cwd="work")
    (tmp_path / ".mcp.json").write_text(json.dumps({"mcpServers": {"local": entry}}))
    async with McpServers(load_mcp_config(tmp_path / ".mcp.json")) as servers:
        assert text(await call(servers, "mcp__local__env", name="GREETING")) == "hi expanded-value!"
        inherited = await call(servers, "mcp__local__env", name="TERCET_TEST_FROM_PARENT")
        assert text(inherited) == "inherited"
        assert text(await call(servers, "mcp__local__cwd")) == str(tmp_path / "work")


@pytest.mark.anyio
async def test_stdio_server_runs_in_the_projects_directory_by_default(tmp_path: Path) -> None:
    async with config({"local": stdio()}, cwd=tmp_path) as servers:
        assert text(await call(servers, "mcp__local__cwd")) == str(tmp_path)


@pytest.mark.anyio
async def test_a_failing_tool_is_an_error_result(
    local: McpServers, http_server: McpServerInfo, token_env: None
) -> None:
    failed = await call(local, "mcp__local__fail", message="the disk is lava")
    assert failed.is_error
    assert "the disk is lava" in text(failed)
    bad_input = await call(local, "mcp__local__add", a="x")
    assert bad_input.is_error
    assert "validation error" in text(bad_input)
    async with config({"remote": remote(http_server)}) as servers:
        failed = await call(servers, "mcp__remote__fail", message="no such thing")
        assert failed.is_error and "no such thing" in text(failed)
        rejected = await call(servers, "mcp__remote__reject", message="protocol says no")
        assert rejected.is_error
        assert text(rejected) == (
            "MCP server 'remote': it answered the call of 'reject' with an error: "
            "protocol says no (code -32010)"
        )
        assert text(await call(servers, "mcp__remote__add", a=1, b=1)) == "2"


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["stdio", "http"])
async def test_a_hanging_call_times_out_and_the_server_stays_usable(
    kind: str, http_server: McpServerInfo, token_env: None
) -> None:
    entry = stdio() if kind == "stdio" else remote(http_server)
    async with config({"s": entry}, call_timeout_s=1) as servers:
        started = time.monotonic()
        result = await call(servers, "mcp__s__sleep", seconds=30)
        # Ended by the 1 s timeout, not the 30 s sleep; the margin is for a loaded machine.
        assert time.monotonic() - started < 15
        assert result.is_error
        assert text(result) == (
            "MCP server 's': the call of 'sleep' did not finish within 1s and was cancelled"
        )
        assert text(await call(servers, "mcp__s__add", a=1, b=2)) == "3"


@pytest.mark.anyio
async def test_a_stdio_server_that_dies_is_an_error_and_restarted_at_the_next_call(
    local: McpServers,
) -> None:
    first = int(text(await call(local, "mcp__local__pid")))
    died = await call(local, "mcp__local__die")
    assert died.is_error
    assert text(died).startswith(
        "MCP server 'local': the server process exited during the call of 'die' "
        "(it is restarted at the next call); its stderr ends with:\n"
    )
    assert text(died).endswith("dying on request")
    # The promise behind "exited": the process is reaped before the result is returned, so it
    # is not even a zombie child any more (no waiting here: the code waited).
    assert first not in children()
    assert gone(first)
    second = int(text(await call(local, "mcp__local__pid")))
    assert second != first
    assert text(await call(local, "mcp__local__add", a=20, b=22)) == "42"


@pytest.mark.anyio
async def test_a_server_that_cannot_be_restarted_is_tried_again_at_each_call(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "broken"
    async with config({"flaky": stdio("--crash-if-exists", str(marker))}) as servers:
        marker.touch()
        assert (await call(servers, "mcp__flaky__die")).is_error
        failed = await call(servers, "mcp__flaky__add", a=1, b=2)
        assert failed.is_error
        assert text(failed) == (
            f"MCP server 'flaky': it stopped, and restarting it failed: {sys.executable!r} "
            f"exited before completing the MCP handshake; its stderr ends with:\n{marker} exists"
        )
        marker.unlink()
        assert text(await call(servers, "mcp__flaky__add", a=1, b=2)) == "3"


@pytest.mark.anyio
async def test_an_http_server_that_dies_is_an_error_and_reconnected_once_it_is_back(
    token_env: None,
) -> None:
    with running_mcp_server("streamable-http", token=TOKEN) as info:
        # Restarted on the port the server bound itself (not one probed free before it
        # started, which something else could take meanwhile).
        port = info.port
        servers = config({"remote": remote(info)}, connect_timeout_s=3)
        await servers.start()
    try:
        # The server is gone (the fixture stopped it): a call fails, and so does the reconnect.
        down = await call(servers, "mcp__remote__add", a=1, b=2)
        assert down.is_error
        assert "MCP server 'remote'" in text(down)
        with running_mcp_server("streamable-http", token=TOKEN, port=port):  # serving now
            back = await call(servers, "mcp__remote__add", a=1, b=2)
            assert (text(back), back.is_error) == ("3", False)
            died = await call(servers, "mcp__remote__die")
            assert died.is_error
            assert text(died).startswith("MCP server 'remote': ")
    finally:
        await servers.aclose()


# Startup failures


@pytest.mark.anyio
async def test_servers_that_cannot_start_are_reported_and_the_others_work(
    http_server: McpServerInfo, token_env: None
) -> None:
    with refused_port() as port:
        entries = {
            "missing": {"command": "/nonexistent/tercet-no-such-server"},
            "crashing": stdio("--crash-on-start", "fatal: no API key configured"),
            "good": stdio(),
            "remote": remote(http_server),
            "refused": {"type": "http", "url": http_server.url, "headers": {"Authorization": "x"}},
            "nobody": {"type": "http", "url": f"http://127.0.0.1:{port}/mcp"},
        }
        async with config(entries) as servers:
            assert set(servers.errors) == {"missing", "crashing", "refused", "nobody"}
            assert servers.errors["missing"] == (
                "MCP server 'missing': could not start '/nonexistent/tercet-no-such-server': "
                "command not found"
            )
            assert servers.errors["crashing"] == (
                f"MCP server 'crashing': {sys.executable!r} exited before completing the MCP "
                "handshake; its stderr ends with:\nfatal: no API key configured"
            )
            assert servers.errors["refused"] == (
                f"MCP server 'refused': {http_server.url} refused the request (HTTP 401); "
                "check its headers"
            )
            assert servers.errors["nobody"].startswith("MCP server 'nobody': could not connect to ")
            assert {tool.server_name for tool in servers.tools} == {"good", "remote"}
            assert text(await call(servers, "mcp__good__add", a=1, b=2)) == "3"
            assert text(await call(servers, "mcp__remote__secret_word")) == SECRET_WORD


@pytest.mark.anyio
async def test_a_server_that_never_answers_times_out_at_startup() -> None:
    before = set(children())
    started = time.monotonic()
    async with config({"silent": {"command": "sleep", "args": ["30"]}}, connect_timeout_s=1) as s:
        # The 1 s timeout and a 2 s grace to exit, not the 30 s sleep; a margin for load.
        assert time.monotonic() - started < 20
        assert s.errors["silent"] == (
            "MCP server 'silent': 'sleep' did not complete the MCP handshake within 1s"
        )
        assert s.tools == []
        assert set(children()) <= before  # the silent process was stopped


@pytest.mark.anyio
async def test_an_unset_variable_is_named_in_the_startup_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TERCET_TEST_UNSET_COMMAND", raising=False)
    async with config({"x": {"command": "${TERCET_TEST_UNSET_COMMAND}"}}) as servers:
        assert servers.errors["x"] == (
            "MCP server 'x': could not start '${TERCET_TEST_UNSET_COMMAND}': command not found "
            "(its configuration uses ${TERCET_TEST_UNSET_COMMAND}, which is not set)"
        )


# Shutdown


@pytest.mark.anyio
async def test_aclose_leaves_no_child_processes() -> None:
    before = set(children())
    servers = config({"a": stdio(), "b": stdio(), "stubborn": stdio("--ignore-eof")})
    await servers.start()
    pids = [int(text(await call(servers, f"mcp__{name}__pid"))) for name in ("a", "b", "stubborn")]
    assert set(pids) <= set(children())
    await call(servers, "mcp__a__die")  # one dead (and restarted) on the way
    pids.append(int(text(await call(servers, "mcp__a__pid"))))
    await servers.aclose()
    assert all(gone(pid) for pid in pids)
    assert set(children()) <= before  # none left, not even a zombie
    after = await call(servers, "mcp__b__add", a=1, b=2)
    assert after.is_error
    assert text(after) == "MCP server 'b': it has been shut down"
    await servers.aclose()  # twice is fine


@pytest.mark.anyio
async def test_cancelled_startup_and_calls_leave_nothing_behind() -> None:
    before = set(children())
    servers = config({"silent": {"command": "sleep", "args": ["30"]}, "local": stdio()})
    with anyio.move_on_after(0.5):  # the user gives up while `silent` is still starting
        await servers.start()
    assert set(children()) <= before  # a cancelled start stops every server, started or not
    async with config({"local": stdio()}) as servers:
        with anyio.move_on_after(0.3):  # the user interrupts a tool call
            await call(servers, "mcp__local__sleep", seconds=30)
        assert text(await call(servers, "mcp__local__add", a=1, b=2)) == "3"


@pytest.mark.anyio
async def test_a_tools_aclose_shuts_its_server_down(local: McpServers) -> None:
    pid = int(text(await call(local, "mcp__local__pid")))
    await by_name(local)["mcp__local__add"].aclose()
    assert gone(pid)
    assert (await call(local, "mcp__local__echo", text="x")).is_error


# Names


def test_tool_names_follow_claude_code() -> None:
    assert tool_name("github", "create_issue") == "mcp__github__create_issue"
    assert tool_name("my server.v2", "do/it!") == "mcp__my_server_v2__do_it_"


@pytest.mark.anyio
async def test_long_and_clashing_names_are_cut_and_made_unique(local: McpServers) -> None:
    long_server = "s" * 70
    async with config({long_server: stdio(), "a.b": stdio(), "a_b": stdio()}) as servers:
        names = [tool.name for tool in servers.tools]
        assert len(names) == len(set(names)) == 3 * len(STDIO_TOOLS)
        assert all(len(name) <= MAX_NAME_CHARS for name in names)
        assert all(set(name) <= set("abcdefghijklmnopqrstuvwxyz_0123456789-") for name in names)
        assert "mcp__a_b__add" in names
        clash = [t for t in servers.tools if t.server_name == "a_b" and t.tool_name == "add"]
        assert clash[0].name.startswith("mcp__a_b__add_")
        assert text(await clash[0].run({"a": 1, "b": 1}, ToolContext(Path.cwd()))) == "2"


# Configuration


def test_config_accepts_claude_codes_three_shapes() -> None:
    parsed = parse_mcp_config(
        {
            "mcpServers": {
                "local": {"command": "npx", "args": ["-y", "srv"], "env": {"K": "v"}},
                "explicit": {"type": "stdio", "command": "srv", "alwaysAllow": ["x"]},
                "remote": {"type": "http", "url": "https://x.test/mcp", "headers": {"A": "b"}},
                "legacy": {"type": "sse", "url": "http://localhost:9/sse"},
            }
        },
        environ={},
    )
    assert parsed.servers == {
        "local": StdioServerConfig(command="npx", args=["-y", "srv"], env={"K": "v"}),
        "explicit": StdioServerConfig(command="srv"),
        "remote": HttpServerConfig(type="http", url="https://x.test/mcp", headers={"A": "b"}),
        "legacy": SseServerConfig(type="sse", url="http://localhost:9/sse"),
    }
    assert parsed.unset_variables == {}


def test_config_expands_variables_as_claude_code_does() -> None:
    environ = {"HOME_DIR": "/home/me", "TOKEN": "t0k", "EMPTY": ""}
    parsed = parse_mcp_config(
        {
            "mcpServers": {
                "local": {
                    "command": "${HOME_DIR}/bin/srv",
                    "args": ["--token=${TOKEN}", "${MISSING:-fallback}", "$TOKEN"],
                    "env": {"A": "${EMPTY:-default}", "B": "${NOT_SET}", "C": "${TOKEN}"},
                    "note": "${TOKEN}",  # not a field Claude Code expands (and ignored)
                },
                "remote": {
                    "type": "http",
                    "url": "https://${HOST:-example.com}/mcp",
                    "headers": {"Authorization": "Bearer ${TOKEN}", "X": "${ALSO_NOT_SET}"},
                },
            }
        },
        environ=environ,
    )
    local = parsed.servers["local"]
    assert isinstance(local, StdioServerConfig)
    assert local.command == "/home/me/bin/srv"
    assert local.args == ["--token=t0k", "fallback", "$TOKEN"]
    assert local.env == {"A": "default", "B": "${NOT_SET}", "C": "t0k"}
    remote = parsed.servers["remote"]
    assert isinstance(remote, HttpServerConfig)
    assert remote.url == "https://example.com/mcp"
    assert remote.headers == {"Authorization": "Bearer t0k", "X": "${ALSO_NOT_SET}"}
    assert parsed.unset_variables == {"local": ["NOT_SET"], "remote": ["ALSO_NOT_SET"]}
    assert expand_variables("${A}${A:-x}${B:-}", {"A": "1"}) == "11"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], 'expected a JSON object with an "mcpServers" object'),
        ({"servers": {}}, 'expected a JSON object with an "mcpServers" object'),
        ({"mcpServers": {"x": "npx srv"}}, "server 'x': expected a JSON object"),
        (
            {"mcpServers": {"x": {"args": []}}},
            'server \'x\': a server needs a "command" (stdio), or "type": "http" or "sse" '
            'with a "url"',
        ),
        ({"mcpServers": {"x": {"type": "stdio"}}}, "server 'x': command: Field required"),
        ({"mcpServers": {"x": {"type": "http"}}}, "server 'x': url: Field required"),
        ({"mcpServers": {"x": {"command": ""}}}, "server 'x': command: String should have at"),
        (
            {"mcpServers": {"x": {"command": "srv", "args": "--flag"}}},
            "server 'x': args: Input should be a valid list",
        ),
        (
            {"mcpServers": {"x": {"command": "srv", "env": {"A": 1}}}},
            "server 'x': env.A: Input should be a valid string",
        ),
        ({"mcpServers": {"x": {"type": "ws", "url": "ws://h"}}}, "server 'x': unknown type 'ws'"),
        ({"mcpServers": {" ": {"command": "srv"}}}, "a server's name is empty"),
    ],
)
def test_bad_config_is_a_clear_error(data: object, message: str) -> None:
    with pytest.raises(McpConfigError) as raised:
        parse_mcp_config(data, environ={}, source=".mcp.json")
    assert str(raised.value).startswith(f".mcp.json: {message}")


def test_load_reads_the_file_and_resolves_cwd(tmp_path: Path) -> None:
    path = tmp_path / ".mcp.json"
    path.write_text(json.dumps({"mcpServers": {"s": {"command": "srv", "cwd": "sub"}}}))
    loaded = load_mcp_config(path, environ={})
    assert loaded.base_dir == tmp_path
    assert loaded.servers["s"] == StdioServerConfig(command="srv", cwd=str(tmp_path / "sub"))
    path.write_text('{"mcpServers": {\n  "s": {"command": "srv",}\n}}')
    with pytest.raises(McpConfigError, match=r"\.mcp\.json is not valid JSON: .* \(line 2,"):
        load_mcp_config(path)
    with pytest.raises(McpConfigError, match="Cannot read the MCP configuration"):
        load_mcp_config(tmp_path / "missing.json")


def test_find_looks_up_to_the_repository_root(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    deep = repo / "src" / "pkg"
    deep.mkdir(parents=True)
    (repo / ".git").mkdir()
    (tmp_path / ".mcp.json").write_text("{}")  # above the repository: not the project's
    assert find_mcp_config(deep) is None
    (repo / ".mcp.json").write_text("{}")
    assert find_mcp_config(deep) == repo / ".mcp.json"
    (deep / ".mcp.json").write_text("{}")
    assert find_mcp_config(deep) == deep / ".mcp.json"
    loose = tmp_path / "loose"
    loose.mkdir()
    assert find_mcp_config(loose) is None  # outside a repository only its own counts
    (loose / ".mcp.json").write_text("{}")
    assert find_mcp_config(loose) == loose / ".mcp.json"


@pytest.mark.anyio
async def test_for_project_without_a_config_has_no_servers(tmp_path: Path) -> None:
    (tmp_path / ".git").mkdir()
    async with McpServers.for_project(tmp_path) as servers:
        assert (servers.tools, servers.errors) == ([], {})
    (tmp_path / ".mcp.json").write_text('{"mcpServers": {"x": {}}}')
    with pytest.raises(McpConfigError, match="server 'x'"):
        McpServers.for_project(tmp_path)
