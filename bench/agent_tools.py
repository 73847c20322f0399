"""The agent's read-only tool calls, one after another vs side by side.

A real stdio MCP server (the SDK's MCPServer, started by the agent as Claude Code would) offers
`lookup`, annotated read-only, which waits `--wait-ms` as a slow search or fetch would. A
scripted model replies once with `--calls` lookups and then answers; the agent runs them.
Runs alternate between the tools as they are (`concurrent_reads`: the calls overlap) and the
same tools with it turned off (one call at a time, as before), and the wall time of the whole
run is compared.

    .venv/bin/python bench/agent_tools.py [--calls 4] [--wait-ms 200] [--runs 10]
    .venv/bin/python bench/agent_tools.py --quick   # 2 calls of 50 ms, 1 run: the script works
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from tercet.agent import Agent, AgentConfig, Permissions, ScriptedModel, tool_use, turn
from tercet.agent.tools.mcp import McpServers
from tercet.agent.tools.mcp_config import parse_mcp_config

SERVER = """
import anyio
from mcp.server.mcpserver import MCPServer
from mcp_types import ToolAnnotations

server = MCPServer("bench-lookup", log_level="WARNING")

@server.tool(annotations=ToolAnnotations(read_only_hint=True))
async def lookup(key: str, wait_ms: int) -> str:
    \"\"\"Look a key up, slowly.\"\"\"
    await anyio.sleep(wait_ms / 1000)
    return f"value of {key}"

server.run("stdio")
"""


async def one_run(servers: McpServers, work: Path, calls: int, wait_ms: int) -> float:
    lookups = [
        tool_use("mcp__bench__lookup", {"key": f"k{n}", "wait_ms": wait_ms}) for n in range(calls)
    ]
    model = ScriptedModel([turn(*lookups), turn("found them")])
    config = AgentConfig(
        tools=servers.tools,
        cwd=work,
        sessions_dir=work / "sessions",
        load_instructions=False,
        permissions=Permissions(mode="bypassPermissions", cwd=work),
    )
    started = time.perf_counter()
    result = await Agent(model, config).run_until_done("look them up")
    elapsed = time.perf_counter() - started
    assert result.ok, result
    answers = [b["content"] for b in model.requests[1].messages[-1]["content"]]
    assert answers == [f"value of k{n}" for n in range(calls)], answers
    return elapsed


async def main(calls: int, wait_ms: int, runs: int) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        (work / "server.py").write_text(SERVER)
        server = {"command": sys.executable, "args": [str(work / "server.py")]}
        config = parse_mcp_config({"mcpServers": {"bench": server}})
        async with McpServers(config, cwd=work) as servers:
            assert not servers.errors, servers.errors
            times: dict[bool, list[float]] = {True: [], False: []}
            for _ in range(runs):
                for together in (True, False):
                    for tool in servers.tools:
                        tool.concurrent_reads = together
                    times[together].append(await one_run(servers, work, calls, wait_ms))
    one_by_one = statistics.median(times[False]) * 1000
    side_by_side = statistics.median(times[True]) * 1000
    print(f"{runs} runs of one reply with {calls} read-only MCP calls of {wait_ms} ms each")
    print(f"  one call at a time      {one_by_one:8.1f} ms (median run)")
    print(f"  side by side            {side_by_side:8.1f} ms (median run)")
    print(
        f"  speed-up: {one_by_one / side_by_side:.2f}x (ideal: {calls}x less the loop's own time)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=4)
    parser.add_argument("--wait-ms", type=int, default=200)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="the smallest run: the script works")
    args = parser.parse_args()
    if args.quick:
        args.calls, args.wait_ms, args.runs = 2, 50, 1
    asyncio.run(main(args.calls, args.wait_ms, args.runs))
