"""MCP connector overhead: a tool call through McpPool against the SDK's own open session.

Starts an MCP server (the SDK's MCPServer, streamable HTTP) in a subprocess on loopback and
times N calls of its `echo` tool, alternating call by call: over a `ClientSession` that is
already open (the floor), and through `McpPool.call_tool` on its pooled connection (lookup,
health check, timeout scope, result conversion). Prints p50 and p95 of each and their ratio,
and what opening a connection costs (connect, handshake and tool list, on a fresh pool).
Target: a pooled call within 1.2x the floor.

    .venv/bin/python bench/mcp_pool.py [--calls 200]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--connects", type=int, default=20)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
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
