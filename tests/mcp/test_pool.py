"""McpPool against real MCP servers (the SDK's MCPServer in a subprocess), and UrlPolicy."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator

import anyio
import pytest
from mcp_types import CallToolResult, EmbeddedResource, ImageContent, ResourceLink, TextContent
from mcp_types import TextResourceContents as TextResource

from tercet.mcp import (
    McpAuthError,
    McpCallResult,
    McpError,
    McpPool,
    McpPoolFull,
    McpUrlRefused,
    UrlPolicy,
)
from tercet.mcp.pool import render_content
from tests.mcp.servers import (
    SECRET_WORD,
    McpServerInfo,
    Transport,
    refused_port,
    running_mcp_server,
)

# Nothing here should take long: a hang (a call or a close that never ends) fails fast.
pytestmark = pytest.mark.timeout(60)

TOKEN = "tok-s3cr3t-0451"
TOOLS = {"add", "echo", "secret_word", "sleep", "fail", "reject", "die"}


@pytest.fixture(scope="module", params=["streamable-http", "streamable-http-legacy", "sse"])
def server(request: pytest.FixtureRequest) -> Iterator[McpServerInfo]:
    """One server per transport (and protocol era) for the whole module, with a token."""
    transport = "sse" if request.param == "sse" else "streamable-http"
    legacy = request.param.endswith("legacy")
    with running_mcp_server(transport, token=TOKEN, legacy=legacy) as info:
        yield info


def text(result: McpCallResult) -> str:
    return "".join(block["text"] for block in result.content)


# Against a running server, on both transports


@pytest.mark.anyio
async def test_lists_and_calls_tools(server: McpServerInfo) -> None:
    pool = McpPool()
    try:
        tools = await pool.list_tools(server.url, TOKEN)
        assert {tool.name for tool in tools} == TOOLS
        add = next(tool for tool in tools if tool.name == "add")
        assert add.description == "Add two integers."
        assert add.input_schema["properties"]["a"]["type"] == "integer"
        assert add.input_schema["required"] == ["a", "b"]

        result = await pool.call_tool(server.url, TOKEN, "add", {"a": 2, "b": 40})
        assert result.is_error is False
        assert result.content == [{"type": "text", "text": "42"}]
        word = await pool.call_tool(server.url, TOKEN, "secret_word", {})
        assert text(word) == SECRET_WORD
        echoed = await pool.call_tool(server.url, TOKEN, "echo", {"text": "héllo\nworld"})
        assert text(echoed) == "héllo\nworld"
    finally:
        await pool.aclose()


@pytest.mark.anyio
async def test_reuses_one_connection_and_caches_the_tool_list(server: McpServerInfo) -> None:
    pool = McpPool()
    try:
        first = await pool.list_tools(server.url, TOKEN)
        assert await pool.list_tools(server.url, TOKEN) == first
        await pool.call_tool(server.url, TOKEN, "add", {"a": 1, "b": 1})
        await pool.call_tool(server.url, TOKEN, "echo", {"text": "x"})
        stats = pool.stats()
        assert stats["connections"] == 1
        assert stats["connects"] == 1
        assert stats["in_flight"] == 0
    finally:
        await pool.aclose()
    assert pool.stats()["connections"] == 0


@pytest.mark.anyio
async def test_concurrent_calls_share_the_connection(server: McpServerInfo) -> None:
    pool = McpPool()
    results: dict[int, str] = {}

    async def call(i: int) -> None:
        result = await pool.call_tool(server.url, TOKEN, "sleep", {"seconds": 2})
        assert not result.is_error, text(result)
        results[i] = text(result)

    try:
        started = time.monotonic()
        async with anyio.create_task_group() as tg:
            for i in range(8):
                tg.start_soon(call, i)
        elapsed = time.monotonic() - started
        assert len(results) == 8
        # One after the other they take at least 16 s; together, 2 s and the calls' own cost,
        # which a loaded machine may stretch by seconds: half the serial time tells them apart.
        assert elapsed < 8, f"8 calls of 2s took {elapsed:.2f}s: not concurrent"
        assert pool.stats()["connects"] == 1
    finally:
        await pool.aclose()


@pytest.mark.anyio
async def test_tool_error_is_an_error_result_with_its_message(server: McpServerInfo) -> None:
    pool = McpPool()
    try:
        failed = await pool.call_tool(server.url, TOKEN, "fail", {"message": "the vat is empty"})
        assert failed.is_error
        assert "the vat is empty" in text(failed)
        # A JSON-RPC error answer (a protocol error) also becomes an error result...
        rejected = await pool.call_tool(server.url, TOKEN, "reject", {"message": "not today"})
        assert rejected.is_error
        assert "not today" in text(rejected)
        unknown = await pool.call_tool(server.url, TOKEN, "no_such_tool", {})
        assert unknown.is_error
        # ...and none of them costs the connection.
        ok = await pool.call_tool(server.url, TOKEN, "add", {"a": 1, "b": 2})
        assert text(ok) == "3"
        assert pool.stats()["connects"] == 1
    finally:
        await pool.aclose()


@pytest.mark.anyio
async def test_call_timeout_is_an_error_result_and_the_connection_survives(
    server: McpServerInfo,
) -> None:
    pool = McpPool(call_timeout_s=0.5)
    try:
        await pool.list_tools(server.url, TOKEN)
        started = time.monotonic()
        slow = await pool.call_tool(server.url, TOKEN, "sleep", {"seconds": 10})
        elapsed = time.monotonic() - started
        assert slow.is_error
        assert "0.5s" in text(slow)
        assert 0.4 < elapsed < 8  # the 0.5 s timeout, not the 10 s sleep (a margin for load)
        ok = await pool.call_tool(server.url, TOKEN, "echo", {"text": "still here"})
        assert text(ok) == "still here"
        assert pool.stats()["connects"] == 1
    finally:
        await pool.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize("token", ["wrong-token-9911", None])
async def test_refused_token_raises_auth_error_without_the_token(
    server: McpServerInfo, token: str | None
) -> None:
    pool = McpPool()
    try:
        started = time.monotonic()
        with pytest.raises(McpAuthError) as caught:
            await pool.list_tools(server.url, token)
        assert time.monotonic() - started < 8  # refused at once, not the 10 s connect timeout
        message = str(caught.value)
        assert "401" in message
        assert server.url in message
        assert TOKEN not in message
        if token is not None:
            assert token not in message
        # call_tool reports the same as an error result.
        result = await pool.call_tool(server.url, token, "add", {"a": 1, "b": 2})
        assert result.is_error
        assert "401" in text(result)
        assert token is None or token not in text(result)
        # Nothing stays pooled for a refused token, and the right one still works.
        assert pool.stats()["connections"] == 0
        assert text(await pool.call_tool(server.url, TOKEN, "add", {"a": 1, "b": 2})) == "3"
    finally:
        await pool.aclose()


@pytest.mark.anyio
async def test_tokens_are_pooled_apart_and_never_kept_in_the_keys(server: McpServerInfo) -> None:
    pool = McpPool()
    try:
        await pool.call_tool(server.url, TOKEN, "add", {"a": 1, "b": 2})
        await pool.call_tool(server.url, None, "add", {"a": 1, "b": 2})  # refused: not pooled
        assert pool.stats()["connections"] == 1
        assert TOKEN not in repr(pool._connections)
    finally:
        await pool.aclose()


@pytest.mark.anyio
async def test_no_log_record_carries_the_token(
    server: McpServerInfo, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger: ours, the SDK's, httpx2's, httpcore2's
    pool = McpPool()
    try:
        await pool.list_tools(server.url, TOKEN)
        await pool.call_tool(server.url, TOKEN, "echo", {"text": "x"})
        await pool.call_tool(server.url, "wrong-token-9911", "echo", {"text": "x"})
    finally:
        await pool.aclose()
    assert caplog.records, "nothing was logged: the check proves nothing"
    for record in caplog.records:
        assert TOKEN not in record.getMessage()
        assert "wrong-token-9911" not in record.getMessage()


@pytest.mark.anyio
async def test_idle_connections_are_closed_and_reopened_on_use(server: McpServerInfo) -> None:
    pool = McpPool(idle_timeout_s=0.3)
    try:
        await pool.call_tool(server.url, TOKEN, "add", {"a": 1, "b": 2})
        assert pool.stats()["connections"] == 1
        with anyio.fail_after(30):  # only turns a hang into a failure
            while pool.stats()["connections"]:
                await anyio.sleep(0.05)
        assert pool.stats()["closed_idle"] == 1
        assert text(await pool.call_tool(server.url, TOKEN, "add", {"a": 2, "b": 2})) == "4"
        assert pool.stats()["connects"] == 2
    finally:
        await pool.aclose()


@pytest.mark.anyio
async def test_a_connection_in_use_is_not_reaped(server: McpServerInfo) -> None:
    pool = McpPool(idle_timeout_s=0.2)
    try:
        result = await pool.call_tool(server.url, TOKEN, "sleep", {"seconds": 1.0})
        assert not result.is_error, text(result)
        assert pool.stats()["closed_idle"] == 0
    finally:
        await pool.aclose()


@pytest.mark.anyio
async def test_the_pool_is_bounded(server: McpServerInfo) -> None:
    # A request picks URLs and tokens: varying them must not open connections without end.
    pool = McpPool(max_connections=2)
    urls = [f"{server.url}?n={n}" for n in range(4)]
    try:
        await pool.list_tools(urls[0], TOKEN)
        await pool.list_tools(urls[1], TOKEN)
        await pool.list_tools(urls[2], TOKEN)  # the least recently used (n=0) makes room
        assert (pool.stats()["connections"], pool.stats()["evicted"]) == (2, 1)
        async with anyio.create_task_group() as group:  # both connections busy now
            for url in urls[1:3]:
                group.start_soon(pool.call_tool, url, TOKEN, "sleep", {"seconds": 1.0})
            # Both calls hold their connections (waited for, not slept on); they stay held for
            # the 1 s the server sleeps, while the checks below need no network.
            with anyio.fail_after(30):
                while pool.stats()["in_flight"] < 2:
                    await anyio.sleep(0.001)
            with pytest.raises(McpPoolFull, match="in use"):
                await pool.list_tools(urls[3], TOKEN)
            refused = await pool.call_tool(urls[3], TOKEN, "add", {"a": 1, "b": 1})
            assert refused.is_error and "in use" in text(refused)
        assert text(await pool.call_tool(urls[3], TOKEN, "add", {"a": 1, "b": 1})) == "2"
        assert pool.stats()["connections"] == 2
    finally:
        await pool.aclose()


# Servers that die, break or never answer


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("transport", "options"),
    [
        ("streamable-http", {}),
        ("streamable-http", {"json_response": True}),
        ("streamable-http", {"legacy": True}),
        ("sse", {}),
    ],
)
async def test_server_dying_mid_call_is_an_error_result_then_reconnects(
    transport: Transport, options: dict[str, bool]
) -> None:
    pool = McpPool(call_timeout_s=20)
    try:
        # Restarted below on the port this server bound itself (a port probed free before the
        # server started could be taken meanwhile).
        with running_mcp_server(transport, **options) as info:
            assert text(await pool.call_tool(info.url, None, "add", {"a": 1, "b": 2})) == "3"
            started = time.monotonic()
            died = await pool.call_tool(info.url, None, "die", {})
            assert died.is_error
            took = time.monotonic() - started
            assert took < 15, "a dead server must not wait for the 20 s timeout"
            info.process.wait(timeout=10)
        down = await pool.call_tool(info.url, None, "add", {"a": 1, "b": 2})
        assert down.is_error
        assert info.url in text(down)
        with running_mcp_server(transport, port=info.port, **options) as again:
            assert again.url == info.url
            back = await pool.call_tool(again.url, None, "add", {"a": 20, "b": 3})
            assert text(back) == "23"
        assert pool.stats()["connects"] == 2
    finally:
        await pool.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("transport", "options"),
    [("streamable-http", {}), ("streamable-http", {"legacy": True}), ("sse", {})],
)
async def test_server_restarted_between_calls_is_reconnected_transparently(
    transport: Transport, options: dict[str, bool]
) -> None:
    """A pooled session the server lost (restarted, or expired it) costs no failed call."""
    pool = McpPool()
    try:
        with running_mcp_server(transport, **options) as info:
            assert text(await pool.call_tool(info.url, None, "add", {"a": 1, "b": 2})) == "3"
        if transport == "sse":
            # Over SSE the client learns that its server went from the end of the event
            # stream, read when the loop runs (the fixture blocked it): waited for here, not
            # slept on. A call made before that read fails once ("Connection closed"), a gap
            # of the pool's left open. Streamable HTTP needs no wait: its stale session is
            # refused (HTTP 404) and opened afresh.
            stale = pool._connections[(info.url, "")]
            with anyio.fail_after(30):
                while stale.usable(pool.idle_timeout_s):
                    await anyio.sleep(0.01)
        with running_mcp_server(transport, port=info.port, **options) as again:
            result = await pool.call_tool(again.url, None, "add", {"a": 2, "b": 3})
            assert not result.is_error, text(result)
            assert text(result) == "5"
    finally:
        await pool.aclose()


@pytest.mark.anyio
async def test_malformed_answers_are_error_results() -> None:
    pool = McpPool()
    try:
        with running_mcp_server("streamable-http") as info:
            for name in ("garbled", "misshapen"):
                result = await pool.call_tool(info.url, None, name, {})
                assert result.is_error, name
                assert info.url in text(result)
            assert text(await pool.call_tool(info.url, None, "add", {"a": 1, "b": 2})) == "3"
    finally:
        await pool.aclose()


@pytest.mark.anyio
async def test_sse_only_server_is_found_after_streamable_http_is_refused() -> None:
    """A URL not ending in /sse tries streamable HTTP first; a 405 falls back to SSE."""
    pool = McpPool()
    try:
        with running_mcp_server("sse", sse_path="/events") as info:
            assert info.url.endswith("/events")
            assert {tool.name for tool in await pool.list_tools(info.url, None)} == TOOLS
            assert text(await pool.call_tool(info.url, None, "add", {"a": 1, "b": 2})) == "3"
            assert pool._connections[(info.url, "")].transport == "sse"
    finally:
        await pool.aclose()


@pytest.mark.anyio
async def test_closed_port_fails_fast() -> None:
    with refused_port() as port:
        await closed_port_fails_fast(f"http://127.0.0.1:{port}/mcp")


async def closed_port_fails_fast(url: str) -> None:
    pool = McpPool(connect_timeout_s=10)
    try:
        started = time.monotonic()
        with pytest.raises(McpError) as caught:
            await pool.list_tools(url, TOKEN)
        assert time.monotonic() - started < 8  # refused at once, not the 10 s timeout
        assert url in str(caught.value)
        assert TOKEN not in str(caught.value)
        result = await pool.call_tool(url, TOKEN, "add", {"a": 1, "b": 2})
        assert result.is_error
        assert pool.stats()["connections"] == 0
    finally:
        await pool.aclose()


@pytest.mark.anyio
async def test_silent_server_times_out_connecting() -> None:
    with socket.socket() as silent:  # accepts connections (in the backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/mcp?key=hidden"
        pool = McpPool(connect_timeout_s=0.5)
        try:
            started = time.monotonic()
            with pytest.raises(McpError) as caught:
                await pool.list_tools(url, None)
            assert 0.4 < time.monotonic() - started < 8  # 0.5 s, not the default 10 s
            assert "Timed out" in str(caught.value)
            assert "hidden" not in str(caught.value)
            assert "/mcp" in str(caught.value)
        finally:
            await pool.aclose()


@pytest.mark.anyio
async def test_refused_urls_raise_before_any_connection() -> None:
    pool = McpPool(policy=UrlPolicy(allow_loopback=False))
    try:
        with pytest.raises(McpUrlRefused):
            await pool.list_tools("http://127.0.0.1:1/mcp", None)
        with pytest.raises(McpUrlRefused):
            await pool.call_tool("http://127.0.0.1:1/mcp", None, "add", {})
        assert pool.stats()["connections"] == 0
    finally:
        await pool.aclose()


@pytest.mark.anyio
async def test_closed_pool_refuses_work() -> None:
    pool = McpPool()
    await pool.aclose()
    with pytest.raises(McpError):
        await pool.list_tools("http://127.0.0.1:1/mcp", None)
    assert (await pool.call_tool("http://127.0.0.1:1/mcp", None, "add", {})).is_error


# UrlPolicy, without a network


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/mcp",
        "https://127.5.6.7/sse",
        "http://localhost:3000/",
        "http://[::1]:8080/mcp",
    ],
)
def test_loopback_is_allowed_by_default(url: str) -> None:
    UrlPolicy().check(url)


def test_loopback_can_be_refused() -> None:
    with pytest.raises(McpUrlRefused, match="not on this server's list"):
        UrlPolicy(allow_loopback=False).check("http://127.0.0.1:8000/mcp")


@pytest.mark.parametrize(
    "url",
    [
        "https://mcp.example.com/sse",
        "http://10.0.0.5/mcp",  # private, not listed
        "http://169.254.169.254/latest/meta-data",  # cloud metadata
        "http://2130706433/mcp",  # 127.0.0.1 as a number: not treated as loopback
        "http://localhost.evil.net/mcp",
    ],
)
def test_unlisted_urls_are_refused_by_default(url: str) -> None:
    with pytest.raises(McpUrlRefused):
        UrlPolicy().check(url)


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://127.0.0.1/x", "ws://127.0.0.1/mcp", "127.0.0.1:80/mcp"]
)
def test_only_http_schemes(url: str) -> None:
    with pytest.raises(McpUrlRefused, match="http"):
        UrlPolicy(allowed=("*",)).check(url)


@pytest.mark.parametrize(
    "path", ["/public/../admin/mcp", "/public/%2e%2e/admin", "/public/./x", "/public/%2E/x"]
)
def test_dot_segments_cannot_leave_an_allowed_path(path: str) -> None:
    # The HTTP client resolves them before it sends, so the path checked must be the path sent.
    policy = UrlPolicy(allowed=("https://mcp.example.com/public/",), allow_loopback=False)
    with pytest.raises(McpUrlRefused, match=r"'\.' or '\.\.'"):
        policy.check("https://mcp.example.com" + path)
    policy.check("https://mcp.example.com/public/..hidden/mcp")  # a name, not a segment


def test_prefixes_match_scheme_host_port_and_path() -> None:
    policy = UrlPolicy(
        allowed=("https://mcp.example.com/", "https://tools.example.org/team/mcp"),
        allow_loopback=False,
    )
    policy.check("https://mcp.example.com/sse")
    policy.check("https://MCP.example.com:443/a/b?x=1")
    policy.check("https://tools.example.org/team/mcp")
    policy.check("https://tools.example.org/team/mcp/sse")
    for refused in [
        "http://mcp.example.com/sse",  # scheme
        "https://mcp.example.com:8443/sse",  # port
        "https://mcp.example.com.evil.net/sse",  # a longer host
        "https://evil.net/https://mcp.example.com/",
        "https://tools.example.org/team/mcpevil",  # a sibling path
        "https://tools.example.org/other",
    ]:
        with pytest.raises(McpUrlRefused):
            policy.check(refused)


def test_credentials_in_the_url_are_refused_and_not_echoed() -> None:
    with pytest.raises(McpUrlRefused) as caught:
        UrlPolicy(allowed=("https://mcp.example.com/",)).check(
            "https://mcp.example.com@evil.net/sse"
        )
    with pytest.raises(McpUrlRefused) as caught:
        UrlPolicy(allowed=("*",)).check("https://user:pa55word@mcp.example.com/sse?k=v")
    assert "pa55word" not in str(caught.value)
    assert "k=v" not in str(caught.value)


def test_star_allows_any_http_url() -> None:
    policy = UrlPolicy(allowed=("*",), allow_loopback=False)
    policy.check("https://anything.example/sse")
    policy.check("http://10.1.2.3:9000/mcp")


# Content rendering, without a network


def test_non_text_content_is_described_in_text() -> None:
    result = CallToolResult(
        content=[
            TextContent(text="plain"),
            ImageContent(data="aGVsbG8=", mime_type="image/png"),
            ResourceLink(uri="file:///notes.md", name="notes"),
            EmbeddedResource(resource=TextResource(uri="file:///a.txt", text="inside")),
        ]
    )
    assert render_content(result) == [
        {"type": "text", "text": "plain"},
        {"type": "text", "text": "[image: image/png, 5 bytes]"},
        {"type": "text", "text": "[resource link: file:///notes.md (notes)]"},
        {"type": "text", "text": "inside"},
    ]


def test_structured_content_alone_is_rendered_as_json() -> None:
    result = CallToolResult(content=[], structured_content={"answer": 42})
    assert render_content(result) == [{"type": "text", "text": '{"answer": 42}'}]
