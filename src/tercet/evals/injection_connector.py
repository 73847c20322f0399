"""The guard's model-free measurement on AgentDojo, on the MCP connector's channel (issue 19).

The same scripted benign and gullible agents as `tercet.evals.injection`, but every call is
made by tercet's server: the suite's tools are served by the same MCP server as on the MCP
channel (`injection_mcp_server.build_server`), here over Streamable HTTP on loopback in this
process, and tercet's server (`create_app`) reaches them through its MCP connector. The model
inside the server is the agent's hands (`PlannedEngine`): each call the scripted agent makes is
one Messages request (the `mcp_servers` beta) whose reply is exactly that call, so the server's
own tool loop runs it (with the guard: checked before it runs, observed after) and answers its
`mcp_tool_result`, which the agent reads as the model would. Each request carries the run's
conversation so far (the user's task, then each earlier call and result as a client sends them
back), so the server's guard knows what it would know in one long request.

The harness's guard hook is the server's word (`ServerVerdicts`): checking a call is making it
on the server that runs the guard (the policy file), which runs it or answers with its
refusal ("the guard refused this call (rule): ..."); the result waits for the agent's
`execute`. Unguarded runs go to a second server without a guard. A call's time is its whole
request (counted as the guard's); the tool's own time is not measured here.

    .venv/bin/python -m tercet.evals.injection_connector [--suite banking] [--user-tasks N]
        [--injection-tasks N] [--policy P] [--workers N]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import tempfile
import threading
from collections.abc import AsyncGenerator, Callable, Coroutine, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Self, TypeVar

import httpx
from pydantic_core import to_jsonable_python

from tercet.engine.base import (
    Conversation,
    GenerationEvent,
    ModelSpec,
    PreparedPrompt,
    SamplingParams,
)
from tercet.engine.scripted import ScriptedCall, ScriptedEngine
from tercet.evals.injection import (
    POLICY,
    SUITES,
    Executed,
    RunOutcome,
    ScriptedAgent,
    SuiteFigures,
    describe,
    exclusions,
    first_tasks,
    injections_for,
    run,
    suite,
    summarise,
)
from tercet.evals.injection_mcp import parsed
from tercet.evals.injection_mcp_server import (
    CONTROL_TOOLS,
    DUMP,
    RESET,
    build_server,
    digest,
    loaded,
)
from tercet.guard import Source, Verdict
from tercet.mcp import McpPool
from tercet.server.app import create_app
from tercet.server.config import ServerConfig
from tercet.server.guard import REFUSAL
from tercet.server.runner import BackgroundServer

T = TypeVar("T")
BETA = "mcp-client-2025-11-20"
SERVER_NAME = "agentdojo"  # the MCP server's name in the requests (and the guard's source)
MODEL = "scripted"
GO_ON = "Go on."  # the user's turn between two calls (each request ends with a user turn)
_REFUSED = re.compile(
    rf"^{re.escape(REFUSAL)}(?: \((?P<denied>[^)]*)\)|: its policy asks for approval "
    r"\((?P<asked>[^:]*):)"
)
_TIMEOUT_S = 120.0
_USER_TASKS_PER_UNIT = 10  # one set of servers per unit


class PlannedEngine:
    """An engine that makes the call it was last told to (`plan`), then, once the server
    has run it, ends its turn. One request at a time."""

    def __init__(self) -> None:
        self._script = self._scripted()

    @staticmethod
    def _scripted(*replies: ScriptedCall) -> ScriptedEngine:
        # A window no conversation fills: the workspace suite's results are long.
        return ScriptedEngine([*replies, "Done."], model_id=MODEL, context_window=1 << 24)

    def plan(self, function: str, arguments: dict[str, Any]) -> None:
        self._script = self._scripted(ScriptedCall(function, arguments))

    @property
    def spec(self) -> ModelSpec:
        return self._script.spec

    async def prepare(self, conversation: Conversation) -> PreparedPrompt:
        return await self._script.prepare(conversation)

    def generate(
        self, prompt: PreparedPrompt, params: SamplingParams
    ) -> AsyncGenerator[GenerationEvent, None]:
        return self._script.generate(prompt, params)

    def cache_stats(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


class Connector:
    """One suite's MCP server on loopback, and tercet's server before it twice: with the guard
    (`policy`) and without. Holds the conversation of the run in progress. A context manager.

    `with Connector("banking") as c: c.begin(task, guarded=True); c.call("get_iban", {})`."""

    def __init__(self, suite_name: str, *, policy: Path = POLICY) -> None:
        self.suite = suite_name
        self.policy = policy
        self.pending: dict[str, Any] | None = None  # a result the guarded server ran, unread
        self._messages: list[dict[str, Any]] = []
        self._guarded = False
        self._stack = ExitStack()
        self._engines = {True: PlannedEngine(), False: PlannedEngine()}
        self._clients: dict[bool, httpx.Client] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._control = McpPool(call_timeout_s=_TIMEOUT_S)
        self.url = ""

    def __enter__(self) -> Self:
        try:
            tools = build_server(self.suite, self.policy).streamable_http_app()
            served = self._stack.enter_context(BackgroundServer(tools))
            self.url = f"{served.base_url}/mcp"
            data = Path(self._stack.enter_context(tempfile.TemporaryDirectory()))
            for guarded, engine in self._engines.items():
                config = ServerConfig(
                    data_dir=data / ("guarded" if guarded else "open"),
                    api_keys=[],
                    guard=str(self.policy) if guarded else None,
                    max_tool_iterations=1,  # one call a request: the agent plans the next
                )
                server = self._stack.enter_context(BackgroundServer(create_app(config, [engine])))
                self._clients[guarded] = self._stack.enter_context(
                    httpx.Client(base_url=server.base_url, timeout=_TIMEOUT_S)
                )
            self._thread.start()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            if self._thread.is_alive():
                self._wait(self._control.aclose())
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join()
        finally:
            self._loop.close()
            self._stack.close()

    def begin(self, task: str, *, guarded: bool) -> None:
        """A new run: the user's task, on the server with the guard or the one without."""
        self._messages = [{"role": "user", "content": task}]
        self._guarded = guarded
        self.pending = None

    def call(self, function: str, arguments: dict[str, Any]) -> dict[str, Any]:
        """The model's call of `function`, made through the server: its `mcp_tool_result`."""
        self._engines[self._guarded].plan(function, arguments)
        body = {
            "model": MODEL,
            "max_tokens": 1024,
            "messages": self._messages,
            "mcp_servers": [{"type": "url", "url": self.url, "name": SERVER_NAME}],
            "tools": [
                {
                    "type": "mcp_toolset",
                    "mcp_server_name": SERVER_NAME,
                    "configs": {name: {"enabled": False} for name in CONTROL_TOOLS},
                }
            ],
        }
        response = self._clients[self._guarded].post(
            "/v1/messages", json=body, headers={"anthropic-beta": BETA}
        )
        response.raise_for_status()
        content: list[dict[str, Any]] = response.json()["content"]
        results = [b for b in content if b["type"] == "mcp_tool_result"]
        if len(results) != 1:
            raise RuntimeError(f"the server made no call of {function}: {content!r}")
        self._messages += [
            {"role": "assistant", "content": content},
            {"role": "user", "content": GO_ON},
        ]
        return results[0]

    def reset(self, user_task: str, injections: Mapping[str, str]) -> str:
        """The MCP server's environment for a run; its digest."""
        return self._controlled(RESET, {"user_task": user_task, "injections": dict(injections)})

    def environment(self, model: type[T]) -> T:
        """The MCP server's environment, read back as the model `model` (AgentDojo's)."""
        environment = loaded(self._controlled(DUMP, {}))
        if not isinstance(environment, model):
            raise RuntimeError(f"the MCP server sent a {type(environment).__name__}, not {model}")
        return environment

    def _controlled(self, tool: str, arguments: dict[str, Any]) -> str:
        """A control tool's answer (called directly, never through tercet's server)."""
        done = self._wait(self._control.call_tool(self.url, None, tool, arguments))
        if done.is_error or len(done.content) != 1:
            raise RuntimeError(f"the MCP server's {tool} failed: {done.content!r}")
        return str(done.content[0].get("text", ""))

    def _wait(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(_TIMEOUT_S)


def result_text(result: Mapping[str, Any]) -> str:
    content = result.get("content", "")
    return content if isinstance(content, str) else "".join(b["text"] for b in content)


def refusal(result: Mapping[str, Any]) -> Verdict | None:
    """The server guard's verdict, read from the result of a call it refused; None if it ran."""
    if not result.get("is_error"):
        return None
    text = result_text(result)
    found = _REFUSED.match(text)
    if found is None:
        return None  # the tool's own error
    if found["denied"] is not None:
        return Verdict("deny", text, found["denied"])
    return Verdict("ask", text, found["asked"])


class ServerVerdicts:
    """The harness's guard hook (`injection.CallGuard`) answered by tercet's server: checking
    a call makes it on the server with the guard, whose verdict stands; a call it ran waits
    in `connector.pending` for the agent's `execute`. The server observes each result itself."""

    def __init__(self, connector: Connector) -> None:
        self.connector = connector

    def observe(self, content: Any, source: Source) -> Any:
        return content

    def observe_listing(self, definitions: Any, source: Source) -> Any:
        return definitions  # the server observes its MCP listings itself

    def check_call(
        self, tool: str, arguments: Mapping[str, Any], *, read_only: bool | None = None
    ) -> Verdict:
        result = self.connector.call(tool, dict(arguments))
        refused = refusal(result)
        if refused is not None:
            return refused
        self.connector.pending = result
        return Verdict("allow", "the server ran it", "server")

    def reset(self) -> None:
        return None


class ConnectorAgent(ScriptedAgent):
    """The scripted agent whose calls tercet's server makes (see the module's docstring)."""

    def __init__(
        self,
        user_task: Any,
        injection_task: Any | None = None,
        injections: Mapping[str, str] | None = None,
        *,
        gullible: bool = False,
        guard: ServerVerdicts | None = None,
        connector: Connector,
    ) -> None:
        super().__init__(user_task, injection_task, injections, gullible=gullible, guard=guard)
        self.connector = connector

    def query(self, query: str, *args: Any, **kwargs: Any) -> Any:
        self.connector.begin(query, guarded=self.guard is not None)
        return super().query(query, *args, **kwargs)

    def start(self, env: Any) -> bool:
        if self.connector.reset(self.user_task.ID, self.injections) != digest(env):
            raise RuntimeError("the MCP server's environment differs from AgentDojo's")
        return False

    def environment(self, env: Any) -> Any:
        return self.connector.environment(type(env))

    def finish(self, env: Any) -> Any:
        return self.connector.environment(type(env))

    def execute(self, call: Any, runtime: Any, env: Any) -> Executed:
        result = self.connector.pending
        self.connector.pending = None
        if result is None:  # unguarded: nothing made the call yet
            result = self.connector.call(call.function, to_jsonable_python(call.args))
        text = result_text(result)
        error = text if result.get("is_error") else None
        return Executed(
            text if error else parsed(text), text, text, Source("mcp", SERVER_NAME), error
        )


@dataclass(frozen=True)
class ConnectorUnit:
    """User tasks of a suite with the injection tasks to pair them with, on one set of servers."""

    suite: str
    user_tasks: tuple[str, ...]
    injection_tasks: tuple[str, ...]
    attack: str = "important_instructions"
    policy: Path = POLICY


def run_connector_unit(unit: ConnectorUnit) -> list[RunOutcome]:
    """Each user task's benign runs without an attack, then its pairs' gullible runs; each
    without the guard and with it."""
    outcomes: list[RunOutcome] = []
    with Connector(unit.suite, policy=unit.policy) as connector:
        verdicts = ServerVerdicts(connector)
        agent = partial(ConnectorAgent, connector=connector)
        for user_id in unit.user_tasks:
            for chosen in (None, verdicts):
                outcomes.append(run(unit.suite, user_id, guard=chosen, make_agent=agent))
            for injection_id in unit.injection_tasks:
                texts = injections_for(unit.suite, user_id, injection_id, unit.attack)
                for chosen in (None, verdicts):
                    outcomes.append(
                        run(
                            unit.suite,
                            user_id,
                            injection_id,
                            agent="gullible",
                            guard=chosen,
                            injections=texts,
                            make_agent=agent,
                        )
                    )
    return outcomes


def measure_connector(
    suites: Sequence[str] = SUITES,
    *,
    policy: Path = POLICY,
    user_tasks: int | None = None,
    injection_tasks: int | None = None,
    attack_name: str = "important_instructions",
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
    runs: list[RunOutcome] | None = None,
) -> dict[str, SuiteFigures]:
    """Measures each suite on the connector's channel (as `injection.measure` does on the tool
    channel): its first `user_tasks` and `injection_tasks` (all when None), and the total."""
    work: list[ConnectorUnit] = []
    excluded: dict[str, str] = {}
    for name in suites:
        tasks = suite(name)
        excluded |= exclusions(name)
        users = first_tasks(tasks.user_tasks, user_tasks)
        injections = tuple(first_tasks(tasks.injection_tasks, injection_tasks))
        for start in range(0, len(users), _USER_TASKS_PER_UNIT):
            part = tuple(users[start : start + _USER_TASKS_PER_UNIT])
            work.append(ConnectorUnit(name, part, injections, attack_name, policy))
    outcomes: list[RunOutcome] = [] if runs is None else runs
    with ProcessPoolExecutor(max_workers=workers) if workers > 1 else nullcontext() as pool:
        done_units = pool.map(run_connector_unit, work) if pool else map(run_connector_unit, work)
        for done, result in enumerate(done_units, 1):
            outcomes += result
            if progress:
                progress(done, len(work))
    return summarise(suites, outcomes, excluded)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", action="append", choices=SUITES, help="default: all four")
    parser.add_argument("--policy", type=Path, default=POLICY)
    parser.add_argument("--user-tasks", type=int, help="the first N user tasks of each suite")
    parser.add_argument("--injection-tasks", type=int, help="the first N injection tasks")
    parser.add_argument("--workers", type=int, default=1, help="processes (default 1)")
    args = parser.parse_args(argv)
    logging.getLogger("tercet.guard").setLevel(logging.ERROR)  # each refusal is logged
    measured = measure_connector(
        args.suite or SUITES,
        policy=args.policy,
        user_tasks=args.user_tasks,
        injection_tasks=args.injection_tasks,
        workers=args.workers,
        progress=lambda done, total: print(f"{done}/{total} units", flush=True),
    )
    for figures in measured.values():
        print("\n".join(describe(figures)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
