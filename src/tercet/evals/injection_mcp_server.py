"""One AgentDojo suite's tools as a real MCP server on stdio (the official SDK's low-level
`Server`), for the guard's measurement on the MCP channel (`tercet.evals.injection_mcp`).

    python -m tercet.evals.injection_mcp_server banking [--policy agentdojo.toml]

Each call runs the suite's function through AgentDojo's `FunctionsRuntime` on the server's
environment and answers the text AgentDojo's own tool channel shows the model
(`tool_result_to_str`: YAML, or `str()`), `isError` with AgentDojo's message when the function
failed. Every tool carries MCP annotations from the policy's classes (read-only:
`readOnlyHint`; side-effecting: `destructiveHint` when it deletes, cancels, removes or updates).

Two control tools, for the driver and never for the agent: `__reset` (a user task's
environment with the pair's injections, built here as AgentDojo builds it; answers its digest)
and `__dump_environment` (the environment, pickled: for AgentDojo's checks after the run). A
pickle, not JSON: the suites' models rebuild state in validators (a calendar's events from its
initial events), so JSON read back would lose what the tools changed. The driver unpickles only
what this module, started by it, sends.
With the variable TERCET_AGENTDOJO_POISON set, its text is appended to the description of the
suite's first tool (tool-description poisoning, read at listing time).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import pickle
from pathlib import Path
from typing import Any

import anyio
from agentdojo.agent_pipeline.tool_execution import (  # type: ignore[import-untyped]
    tool_result_to_str,
)
from agentdojo.functions_runtime import FunctionsRuntime  # type: ignore[import-untyped]
from agentdojo.task_suite.load_suites import get_suite  # type: ignore[import-untyped]
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server
from mcp_types import (
    CallToolRequestParams,
    CallToolResult,
    ListToolsResult,
    PaginatedRequestParams,
    TextContent,
    Tool,
    ToolAnnotations,
)

from tercet.guard import Policy

BENCHMARK_VERSION = "v1.2.2"
POLICY = Path(__file__).resolve().parents[1] / "guard" / "policies" / "agentdojo.toml"
POISON_VARIABLE = "TERCET_AGENTDOJO_POISON"
RESET = "__reset"
DUMP = "__dump_environment"
CONTROL_TOOLS = (RESET, DUMP)
_DESTRUCTIVE = ("delete", "cancel", "remove", "update", "reschedule")


def tool_annotations(tool: str, read_only: set[str]) -> ToolAnnotations:
    """The MCP hints for a tool of the policy's classes."""
    if tool in read_only:
        return ToolAnnotations(read_only_hint=True)
    return ToolAnnotations(read_only_hint=False, destructive_hint=tool.startswith(_DESTRUCTIVE))


def digest(environment: Any) -> str:
    """The environment's sha256 over its JSON: the driver compares it with its own copy."""
    return hashlib.sha256(environment.model_dump_json().encode()).hexdigest()


def dumped(environment: Any) -> str:
    """The environment as `__dump_environment` answers it (a pickle, base64)."""
    return base64.b64encode(pickle.dumps(environment)).decode("ascii")


def loaded(text: str) -> Any:
    """An environment `dumped` (from this harness's own server only: it is a pickle)."""
    return pickle.loads(base64.b64decode(text))  # our own server's answer


def read_only_tools(policy: Path) -> set[str]:
    """The tools `policy` classes read-only (the policy it `extends` followed)."""
    return set(Policy.load(policy).read_only_tools)


def build_server(suite_name: str, policy: Path = POLICY, poison: str | None = None) -> Server:
    """The suite's server; its environment starts as the suite's default, uninjected."""
    suite = get_suite(BENCHMARK_VERSION, suite_name)
    runtime = FunctionsRuntime(suite.tools)
    read_only = read_only_tools(policy)
    state: dict[str, Any] = {"environment": suite.load_and_inject_default_environment({})}
    tools = [
        Tool(
            name=function.name,
            description=function.description + (f"\n\n{poison}" if poison and index == 0 else ""),
            input_schema=function.parameters.model_json_schema(),
            annotations=tool_annotations(function.name, read_only),
        )
        for index, function in enumerate(suite.tools)
    ]
    tools += [
        Tool(
            name=RESET,
            description="Control (not for the agent): a user task's environment, injected.",
            input_schema={
                "type": "object",
                "properties": {
                    "user_task": {"type": "string"},
                    "injections": {"type": "object", "additionalProperties": {"type": "string"}},
                },
                "required": ["user_task", "injections"],
            },
        ),
        Tool(
            name=DUMP,
            description="Control (not for the agent): the environment, pickled.",
            input_schema={"type": "object", "properties": {}},
        ),
    ]

    async def list_tools(context: Any, params: PaginatedRequestParams | None) -> ListToolsResult:
        return ListToolsResult(tools=tools)

    async def call_tool(context: Any, params: CallToolRequestParams) -> CallToolResult:
        arguments = dict(params.arguments or {})
        if params.name == RESET:
            environment = suite.load_and_inject_default_environment(arguments["injections"])
            user_task = suite.user_tasks[arguments["user_task"]]
            state["environment"] = user_task.init_environment(environment)
            return _text(digest(state["environment"]))
        if params.name == DUMP:
            return _text(dumped(state["environment"]))
        result, error = runtime.run_function(state["environment"], params.name, arguments)
        if error is not None:
            return _text(str(error), is_error=True)
        return _text(tool_result_to_str(result))

    return Server(
        f"agentdojo-{suite_name}", version="1", on_list_tools=list_tools, on_call_tool=call_tool
    )


def _text(text: str, *, is_error: bool = False) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=text)], is_error=is_error)


async def serve(server: Server) -> None:
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite")
    parser.add_argument("--policy", type=Path, default=POLICY)
    args = parser.parse_args()
    poison = os.environ.get(POISON_VARIABLE) or None
    anyio.run(serve, build_server(args.suite, args.policy, poison))


if __name__ == "__main__":
    main()
