"""The guard's model-free measurement on AgentDojo, on the MCP channel (issue 19).

The same scripted benign and gullible agents as `tercet.evals.injection`, but the suite's tools
are served by a real MCP server (`tercet.evals.injection_mcp_server`, the official SDK, stdio)
and reached through tercet's own MCP client as the agent uses it (`McpServers`, each call an
`McpServerTool.run`), so results come back as the agent would see them. The guard judges each
call under the agent's name for it (`mcp__agentdojo-<suite>__<tool>`, which the policy does not
class) with the agent's read-only hint from the server's annotations, and observes each result
as `Source("mcp", server)`. Two channels:

- `mcp`: the pair's injections are in the server's environment (results), as on the tool
  channel;
- `mcp-description`: the environment is clean; the attack's text is appended to the
  description of the suite's first tool. The gullible agent reads the listing before its first
  call and, finding the injection there, replays the injection task's calls first. With the
  guard, the listing's descriptions are observed as untrusted MCP content before any call
  (`observe_listing`; tercet's agent does not do this today), and the rules detector reads them.

The server builds each run's environment itself (`__reset`: the pair's injections, the user
task's init) and the driver checks its digest against AgentDojo's copy; after the run (and
whenever the gullible agent plans the injection task's calls) the driver reads it back
(`__dump_environment`, pickled: JSON read back through the suites' validators loses what the
tools changed) for AgentDojo's checks. A stdio
process is robust to a tool that misbehaves and is the transport most MCP servers use; its cost
is the start (about 7 s: AgentDojo's import), paid once per unit of work.
"""

from __future__ import annotations

import ast
import asyncio
import sys
import threading
import traceback
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal, Self, TypeVar

import yaml  # type: ignore[import-untyped]
from pydantic_core import to_jsonable_python

from tercet.agent.tools.base import ToolContext, ToolResult
from tercet.agent.tools.mcp import McpServers, McpServerTool
from tercet.agent.tools.mcp_config import StdioServerConfig
from tercet.evals.injection import (
    POLICY,
    SUITES,
    CallGuard,
    Executed,
    RunOutcome,
    ScriptedAgent,
    SuiteFigures,
    carries_injection,
    exclusions,
    first_tasks,
    injections_for,
    policy_guard,
    run,
    suite,
    summarise,
    task_number,
)
from tercet.evals.injection_mcp_server import (
    CONTROL_TOOLS,
    DUMP,
    POISON_VARIABLE,
    RESET,
    digest,
    loaded,
)
from tercet.guard import RulesDetector, Source

Channel = Literal["tool", "mcp", "mcp-description"]
CHANNELS: tuple[Channel, ...] = ("tool", "mcp", "mcp-description")
McpChannel = Literal["mcp", "mcp-description"]
T = TypeVar("T")
_CONNECT_TIMEOUT_S = 180.0  # a stdio server imports AgentDojo first: seconds on a busy machine
_CALL_TIMEOUT_S = 60.0
_USER_TASKS_PER_UNIT = 10  # one server start per unit


def server_name(suite_name: str) -> str:
    """The MCP server's name in the agent's configuration."""
    return f"agentdojo-{suite_name}"


class SuiteServer:
    """One suite's MCP server on stdio, reached through tercet's `McpServers` on an event loop
    of its own thread (AgentDojo's runner is synchronous; the agent's client is async).

    `with SuiteServer("banking") as server: server.call("get_iban", {})`."""

    def __init__(self, suite_name: str, *, policy: Path = POLICY, poison: str | None = None):
        self.suite = suite_name
        self.name = server_name(suite_name)
        self.policy = policy
        self.poison = poison
        self.tools: dict[str, McpServerTool] = {}  # by AgentDojo's name; no control tools
        self._control: dict[str, McpServerTool] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._servers: McpServers | None = None

    def __enter__(self) -> Self:
        self._thread.start()
        try:
            self._servers = self._wait(self._open(), _CONNECT_TIMEOUT_S * 2)
        except BaseException:
            self._stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._servers is not None:
            self._wait(self._servers.aclose(), _CONNECT_TIMEOUT_S)
        self._stop()

    def descriptions(self) -> list[str]:
        """The agent's tools' descriptions as the model would be offered them."""
        return [str(tool.definition()["description"]) for tool in self.tools.values()]

    def call(self, tool: str, arguments: dict[str, Any]) -> ToolResult:
        """One call of a tool (by AgentDojo's name), as the agent makes it."""
        chosen = self.tools.get(tool) or self._control[tool]
        return self._wait(chosen.run(arguments, ToolContext(cwd=Path.cwd())), _CALL_TIMEOUT_S)

    def reset(self, user_task: str, injections: dict[str, str]) -> str:
        """The server's environment for a run; its digest."""
        return self._checked(self.call(RESET, {"user_task": user_task, "injections": injections}))

    def environment(self, model: type[T]) -> T:
        """The server's environment, read back as the model `model` (AgentDojo's)."""
        environment = loaded(self._checked(self.call(DUMP, {})))
        if not isinstance(environment, model):
            raise RuntimeError(f"the MCP server sent a {type(environment).__name__}, not {model}")
        return environment

    def _checked(self, result: ToolResult) -> str:
        if result.is_error or not isinstance(result.content, str):
            raise RuntimeError(f"the MCP server's control call failed: {result.content!r}")
        return result.content

    async def _open(self) -> McpServers:
        config = StdioServerConfig(
            command=sys.executable,
            args=[
                "-m",
                "tercet.evals.injection_mcp_server",
                self.suite,
                "--policy",
                str(self.policy),
            ],
            env={POISON_VARIABLE: self.poison} if self.poison else {},
        )
        servers = McpServers(
            {self.name: config},
            connect_timeout_s=_CONNECT_TIMEOUT_S,
            call_timeout_s=_CALL_TIMEOUT_S,
            max_output_chars=10_000_000,  # the environment's dump is long; the agent's own cut
        )
        await servers.start()
        if servers.errors:
            await servers.aclose()
            raise RuntimeError("; ".join(servers.errors.values()))
        for tool in servers.tools:
            chosen = self._control if tool.tool_name in CONTROL_TOOLS else self.tools
            chosen[tool.tool_name] = tool
        return servers

    def _wait(self, coroutine: Coroutine[Any, Any, T], timeout_s: float) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout_s)

    def _stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


def parsed(text: str) -> Any:
    """A tool's text read back into the structure it was printed from (a Python literal, YAML),
    so the labeller reads its strings as on the tool channel; the text itself otherwise."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


class McpScriptedAgent(ScriptedAgent):
    """The scripted agent with its tools on `server` (see the module's docstring); `listing_
    injection`: the attack's text in the tools' descriptions (the description channel)."""

    def __init__(
        self,
        user_task: Any,
        injection_task: Any | None = None,
        injections: dict[str, str] | None = None,
        *,
        gullible: bool = False,
        guard: CallGuard | None = None,
        server: SuiteServer,
        reads_listing: bool = False,
        listing_injection: str | None = None,
        observe_listing: bool = True,
    ) -> None:
        super().__init__(user_task, injection_task, injections, gullible=gullible, guard=guard)
        self.server = server
        self.reads_listing = reads_listing
        self.listing_injection = listing_injection
        self.observe_listing = observe_listing

    def start(self, env: Any) -> bool:
        if self.server.reset(self.user_task.ID, dict(self.injections)) != digest(env):
            raise RuntimeError("the MCP server's environment differs from AgentDojo's")
        if not self.reads_listing:
            return False
        descriptions = self.server.descriptions()
        if self.guard is not None and self.observe_listing:
            self.guard.observe_listing(descriptions, Source(kind="mcp", name=self.server.name))
        wanted = [self.listing_injection] if self.listing_injection else []
        return carries_injection(descriptions, wanted)

    def environment(self, env: Any) -> Any:
        return self.server.environment(type(env))

    def finish(self, env: Any) -> Any:
        return self.server.environment(type(env))

    def checked_as(self, call: Any) -> tuple[str, bool | None]:
        tool = self.server.tools[call.function]
        return tool.name, tool.read_only_hint  # what the agent's loop passes the guard

    def execute(self, call: Any, runtime: Any, env: Any) -> Executed:
        done = self.server.call(call.function, to_jsonable_python(call.args))
        text = done.content if isinstance(done.content, str) else str(done.content)
        return Executed(
            text if done.is_error else parsed(text),
            text,
            done.content,  # what the agent's loop observes
            Source(kind="mcp", name=self.server.name),
            text if done.is_error else None,
        )


@dataclass(frozen=True)
class McpUnit:
    """A slice of the work on one server: user tasks, with the injection tasks to pair them with
    (and the benign runs without an attack when `benign`); on the description channel,
    `poisoned` is the injection task whose text the tools' descriptions carry."""

    suite: str
    channel: McpChannel
    user_tasks: tuple[str, ...]
    injection_tasks: tuple[str, ...]
    benign: bool
    attack: str
    policy: Path
    strict: bool = False
    poisoned: str | None = None
    observe_listing: bool = True


@dataclass(frozen=True)
class Listing:
    """What the rules detector found in one server's tool descriptions."""

    suite: str
    poisoned: str | None
    detections: int


@dataclass
class McpMeasurement:
    """A channel's figures per suite and in total, and its listings' detections."""

    figures: dict[str, SuiteFigures]
    listings: list[Listing] = field(default_factory=list)


def poison_text(suite_name: str, injection_id: str, attack_name: str) -> str:
    """The attack's text for an injection task, as it would fill any vector (it names the
    injection task's goal, not the user task)."""
    first = min(suite(suite_name).user_tasks, key=task_number)
    return next(iter(injections_for(suite_name, first, injection_id, attack_name).values()))


def run_mcp_unit(unit: McpUnit) -> tuple[list[RunOutcome], Listing | None]:
    """The unit's runs, unguarded and guarded, on one server started for it."""
    guard = policy_guard(unit.policy, unit.strict)
    description = unit.channel == "mcp-description"
    poison = poison_text(unit.suite, unit.poisoned, unit.attack) if unit.poisoned else None
    outcomes: list[RunOutcome] = []
    with SuiteServer(unit.suite, policy=unit.policy, poison=poison) as server:
        detector = RulesDetector(listings=True)  # as the guard reads a listing
        listing = (
            Listing(
                unit.suite,
                unit.poisoned,
                sum(len(detector.detect(text)) for text in server.descriptions()),
            )
            if description
            else None
        )
        agent = partial(
            McpScriptedAgent,
            server=server,
            reads_listing=description,
            listing_injection=poison,
            observe_listing=unit.observe_listing,
        )
        for user_id in unit.user_tasks:
            if unit.benign:
                for chosen in (None, guard):
                    outcomes.append(run(unit.suite, user_id, guard=chosen, make_agent=agent))
            for injection_id in unit.injection_tasks:
                try:
                    texts = (
                        {}
                        if description
                        else injections_for(unit.suite, user_id, injection_id, unit.attack)
                    )
                except Exception:
                    error = traceback.format_exc(limit=5)
                    for guarded in (False, True):
                        failed = RunOutcome(unit.suite, user_id, injection_id, "gullible", guarded)
                        failed.error = error
                        outcomes.append(failed)
                    continue
                for chosen in (None, guard):
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
    return outcomes, listing


def units(
    channel: McpChannel,
    suites: Sequence[str],
    *,
    policy: Path,
    strict: bool,
    user_tasks: int | None,
    injection_tasks: int | None,
    attack_name: str,
    observe_listing: bool = True,
) -> list[McpUnit]:
    """The channel's work: on `mcp`, user tasks in slices of ten with every injection task; on
    `mcp-description`, one unit per injection task (its own poisoned server) and one of benign
    runs per suite."""
    made: list[McpUnit] = []
    for name in suites:
        tasks = suite(name)
        chosen = tuple(first_tasks(tasks.user_tasks, user_tasks))
        injections = tuple(first_tasks(tasks.injection_tasks, injection_tasks))
        common = {"attack": attack_name, "policy": policy, "strict": strict}
        if channel == "mcp":
            for start in range(0, len(chosen), _USER_TASKS_PER_UNIT):
                part = chosen[start : start + _USER_TASKS_PER_UNIT]
                made.append(McpUnit(name, "mcp", part, injections, True, **common))  # type: ignore[arg-type]
            continue
        extra = {"observe_listing": observe_listing}
        made.append(McpUnit(name, channel, chosen, (), True, **common, **extra))  # type: ignore[arg-type]
        for injection_id in injections:
            made.append(
                McpUnit(
                    name,
                    channel,
                    chosen,
                    (injection_id,),
                    False,
                    poisoned=injection_id,
                    **common,  # type: ignore[arg-type]
                    **extra,  # type: ignore[arg-type]
                )
            )
    return made


def measure_mcp(
    channel: McpChannel,
    suites: Sequence[str] = SUITES,
    *,
    policy: Path = POLICY,
    strict: bool = False,
    user_tasks: int | None = None,
    injection_tasks: int | None = None,
    attack_name: str = "important_instructions",
    workers: int = 1,
    observe_listing: bool = True,
    progress: Callable[[int, int], None] | None = None,
    runs: list[RunOutcome] | None = None,
) -> McpMeasurement:
    """Measures each suite on an MCP channel (as `injection.measure` on the tool channel)."""
    work = units(
        channel,
        suites,
        policy=policy,
        strict=strict,
        user_tasks=user_tasks,
        injection_tasks=injection_tasks,
        attack_name=attack_name,
        observe_listing=observe_listing,
    )
    excluded: dict[str, str] = {}
    for name in suites:
        excluded |= exclusions(name)
    outcomes: list[RunOutcome] = [] if runs is None else runs
    listings: list[Listing] = []
    with ProcessPoolExecutor(max_workers=workers) if workers > 1 else nullcontext() as pool:
        results = pool.map(run_mcp_unit, work) if pool is not None else map(run_mcp_unit, work)
        for done, (result, listing) in enumerate(results, 1):
            outcomes += result
            if listing is not None:
                listings.append(listing)
            if progress:
                progress(done, len(work))
    return McpMeasurement(summarise(suites, outcomes, excluded), listings)


def agreement(tool: Sequence[RunOutcome], mcp: Sequence[RunOutcome]) -> tuple[int, int, list[str]]:
    """How many unguarded runs the MCP channel scores exactly as the tool channel (utility,
    security, injection seen, the calls scored), of those run on both; the runs that differ."""

    def scored(outcomes: Sequence[RunOutcome]) -> dict[str, tuple[Any, ...]]:
        return {
            f"{o.suite}/{o.user_task} x {o.injection_task} ({o.agent})": (
                o.utility,
                o.security,
                o.injection_seen,
                o.trace,
                o.error,
            )
            for o in outcomes
            if not o.guarded
        }

    ours, theirs = scored(mcp), scored(tool)
    both = [run for run in ours if run in theirs]
    differing = [run for run in both if ours[run] != theirs[run]]
    return len(both) - len(differing), len(both), differing
