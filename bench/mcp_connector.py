"""MCP connector overhead: what an MCP call costs through tercet over a direct call with the
`mcp` client.

Starts an MCP server (the SDK's MCPServer, streamable HTTP) in a subprocess on loopback, then:

1. The pool: N calls of its `echo` tool, alternating call by call, over a `ClientSession` that
   is already open (the floor) and through `McpPool.call_tool` on its pooled connection
   (lookup, health check, timeout scope, result conversion). Target: within 1.2x the floor.
2. The connector, end to end: a tercet server on a scripted engine (so no model time is
   measured), asked through the `anthropic` SDK with `mcp_servers`. Requests whose reply is one
   `echo` call and then a word alternate with requests whose reply is the word alone; the
   difference is what one call adds to a request (the call, its blocks, the second engine
   pass, tools listed on a pooled connection). Printed next to the direct call.
3. What opening a connection costs (connect, handshake and tool list, on a fresh pool).

    .venv/bin/python bench/mcp_connector.py [--calls 200]
    .venv/bin/python bench/mcp_connector.py --quick   # 5 calls, 2 connections: the script works
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import time

import anyio
from mcp.client import Client

from tercet.mcp import McpPool

TEXT = "the quick brown fox jumps over the lazy dog"


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def serve() -> None:
    """The server side (a subprocess): `echo` over streamable HTTP on a free loopback port."""
    import uvicorn
    from mcp.server.mcpserver import MCPServer

    server = MCPServer("bench", log_level="WARNING")

    @server.tool()
    def echo(text: str) -> str:
        """Return the text unchanged."""
        return text

    # IPPROTO_TCP, not the default 0: asyncio sets TCP_NODELAY only on sockets that say they
    # are TCP, and without it a response written in two parts waits for a delayed ACK (40 ms).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(server.streamable_http_app(), log_level="warning")
    uvicorn.Server(config).run(sockets=[sock])


def end_to_end(url: str, calls: int) -> tuple[list[float], list[float]]:
    """Request times with one MCP call, and without, through a tercet server (scripted)."""
    import tempfile

    import anthropic

    from tercet.engine.scripted import ScriptedCall, ScriptedEngine
    from tercet.server.app import create_app
    from tercet.server.config import ServerConfig
    from tercet.server.runner import BackgroundServer

    engines = {
        "call": ScriptedEngine([ScriptedCall("echo", {"text": TEXT}), "done"], model_id="call"),
        "plain": ScriptedEngine(["done"], model_id="plain"),
    }
    config = ServerConfig(data_dir=tempfile.mkdtemp(prefix="tercet-bench-"), api_keys=[])
    times: dict[str, list[float]] = {"call": [], "plain": []}
    with BackgroundServer(create_app(config, list(engines.values()))) as running:
        client = anthropic.Anthropic(base_url=running.base_url, api_key="k", max_retries=0)
        for index in range(calls + 5):  # the first few warm up connections and the pool
            for model in ("call", "plain"):
                started = time.perf_counter()
                message = client.beta.messages.create(
                    model=model,
                    max_tokens=50,
                    messages=[{"role": "user", "content": "Go."}],
                    mcp_servers=[{"type": "url", "url": url, "name": "bench"}],
                    tools=[{"type": "mcp_toolset", "mcp_server_name": "bench"}],
                    betas=["mcp-client-2025-11-20"],
                )
                took = time.perf_counter() - started
                expected = 3 if model == "call" else 1
                assert len(message.content) == expected, message.content
                if index >= 5:
                    times[model].append(took)
    return times["call"], times["plain"]


async def measure(url: str, calls: int, connects: int) -> None:
    pool = McpPool()
    floor: list[float] = []
    pooled: list[float] = []
    async with Client(url, cache=None) as client:
        version = client.protocol_version
        session = client.session
        await session.call_tool("echo", {"text": TEXT})  # warm both paths once
        await pool.call_tool(url, None, "echo", {"text": TEXT})
        for _ in range(calls):
            started = time.perf_counter()
            direct = await session.call_tool("echo", {"text": TEXT})
            floor.append(time.perf_counter() - started)
            started = time.perf_counter()
            result = await pool.call_tool(url, None, "echo", {"text": TEXT})
            pooled.append(time.perf_counter() - started)
            assert not direct.is_error and not result.is_error, result
    await pool.aclose()

    opening: list[float] = []
    for _ in range(connects):
        fresh = McpPool()
        started = time.perf_counter()
        await fresh.list_tools(url, None)
        opening.append(time.perf_counter() - started)
        await fresh.aclose()

    floor50, floor95 = statistics.median(floor), percentile(floor, 0.95)
    print(f"{calls} calls of echo over streamable HTTP on loopback (protocol {version})")
    print(f"  {'':34}{'p50 ms':>9}{'p95 ms':>9}{'p50/floor':>11}{'p95/floor':>11}")
    for label, values in [("ClientSession, open (floor)", floor), ("McpPool.call_tool", pooled)]:
        p50, p95 = statistics.median(values), percentile(values, 0.95)
        print(
            f"  {label:34}{p50 * 1000:>9.2f}{p95 * 1000:>9.2f}"
            f"{p50 / floor50:>11.2f}{p95 / floor95:>11.2f}"
        )
    p50, p95 = statistics.median(opening), percentile(opening, 0.95)
    print(f"  {'new connection + tools/list':34}{p50 * 1000:>9.2f}{p95 * 1000:>9.2f}")
    print("  target: a pooled call within 1.2x the floor")

    with_call, without = await anyio.to_thread.run_sync(end_to_end, url, calls)
    added50 = statistics.median(with_call) - statistics.median(without)
    added95 = percentile(with_call, 0.95) - percentile(without, 0.95)
    print(f"\n{calls} Messages API requests on a scripted engine, alternating")
    print(f"  {'':34}{'p50 ms':>9}{'p95 ms':>9}")
    for label, values in [("reply with one MCP call", with_call), ("reply without", without)]:
        p50, p95 = statistics.median(values), percentile(values, 0.95)
        print(f"  {label:34}{p50 * 1000:>9.2f}{p95 * 1000:>9.2f}")
    print(f"  {'added by the call':34}{added50 * 1000:>9.2f}{added95 * 1000:>9.2f}")
    print(
        f"  added / direct call: {added50 / floor50:.2f}x p50, {added95 / floor95:.2f}x p95 "
        "(includes the engine's second pass over the result)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--connects", type=int, default=20)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="the smallest run: the script works")
    args = parser.parse_args()
    if args.quick:
        args.calls, args.connects = 5, 2
    if args.serve:
        serve()
        return
    server = subprocess.Popen([sys.executable, __file__, "--serve"], stdout=subprocess.PIPE)
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline().split()[1])
        # The socket listens before the port is printed: early connections wait in its backlog.
        url = f"http://127.0.0.1:{port}/mcp"
        anyio.run(measure, url, args.calls, args.connects)
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
