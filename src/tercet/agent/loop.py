"""The agent loop: ask the model, run the tools it calls, repeat until it answers.

    agent = Agent(model, AgentConfig(tools=[BashTool(), TextEditorTool()]))
    async for event in agent.run("Fix the failing test"):   # deltas, tool calls, ..., a Result
        ...
    result = await agent.run_until_done("Fix the failing test")   # just the Result

Every way out (the model answered, a budget ran out, an interrupt, a hook, an error) is a
`Stop` raised to the one `try` in `_loop`, which turns it into the final `Result`. Every event
is saved to the session's trajectory as it happens, so `resume` continues where a run ended.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import re
import time
from collections.abc import AsyncGenerator, Mapping, Sequence
from contextlib import aclosing
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from tercet.agent.budget import PRICES, Budget, ModelPrice, cost_of
from tercet.agent.checkpoints import Checkpoints
from tercet.agent.compaction import (
    DEFAULT_CONTEXT_WINDOW,
    CompactionConfig,
    compacted_messages,
    loop_message,
    needs_compaction,
    summary_messages,
)
from tercet.agent.events import (
    AssistantMessage,
    Compacted,
    Event,
    PermissionDecided,
    RequestSent,
    Result,
    ResultReason,
    RunStarted,
    TextDelta,
    ThinkingDelta,
    ToolCall,
    ToolFinished,
    Usage,
    UserMessage,
    message_text,
)
from tercet.agent.hooks import (
    AskCallback,
    Hooks,
    PermissionRequest,
    PostToolUseInput,
    PreCompactInput,
    PreToolUseInput,
    StopInput,
)
from tercet.agent.instructions import load_instructions
from tercet.agent.model import (
    EPHEMERAL,
    Model,
    ModelError,
    ModelReply,
    ModelRequest,
    ReplyProgress,
    with_cache_breakpoints,
)
from tercet.agent.permissions import Permissions
from tercet.agent.tools.base import AgentTool, ToolContext, ToolInputError, ToolResult, resolve_path
from tercet.agent.tools.editor import TextEditorTool
from tercet.agent.tools.mcp import McpServerTool
from tercet.agent.trajectory import Header, Session, SessionStore, Trajectory, add_message
from tercet.guard import Guard, Source

log = logging.getLogger("tercet.agent")
_SURROGATE = re.compile("[\ud800-\udfff]")
DEFAULT_SYSTEM_PROMPT = """\
You are a coding agent working in the user's project through the tools you are given. Read \
the relevant code before you change it, make small and precise edits, and check your work \
(run the tests, or the program) before you finish. When the task is done, reply with a short \
summary of what you changed and how you checked it, without calling a tool."""
CONTINUE_PROMPT = "Your reply was cut off at the max_tokens limit. Continue where you stopped."
INTERRUPTED = "The run was interrupted before this call finished; it may or may not have run."


class Stop(Exception):
    """Ends the run: `reason` and `message` become the `Result`'s."""

    def __init__(self, reason: ResultReason, message: str = "") -> None:
        super().__init__(message or reason)
        self.reason: ResultReason = reason
        self.message = message


@dataclass
class AgentConfig:
    """How an agent runs. Every field has a working default."""

    model: str = "claude-sonnet-4-6"  # the name requests ask for
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    cwd: Path = field(default_factory=Path.cwd)  # where tools run and instructions are found
    load_instructions: bool = True  # add AGENTS.md / CLAUDE.md from cwd up to the system prompt
    tools: Sequence[AgentTool] = ()
    permissions: Permissions | None = None  # None: default mode, no rules (in `cwd`)
    ask: AskCallback | None = None  # answers "ask" decisions; None: they are denied
    hooks: Hooks = field(default_factory=Hooks)
    budget: Budget = field(default_factory=Budget)
    max_tokens: int = 8192  # per model call
    thinking: bool = False
    thinking_budget_tokens: int = 4096  # with thinking on; at least 1024, below max_tokens
    max_continuations: int = 3  # replies cut at max_tokens continued in a row, then stop
    compaction: CompactionConfig = field(default_factory=CompactionConfig)
    prices: Mapping[str, ModelPrice] = field(default_factory=lambda: dict(PRICES))
    sessions_dir: Path | None = None  # None: the user data folder's sessions/
    checkpoints: bool = True  # record editor and memory writes so `rewind` can undo them
    # Prompt-injection defence (tercet.guard): sees the task and every tool result (with where
    # it came from) before the model does, and judges each call after the permission rules.
    guard: Guard | None = None

    def summary(self) -> dict[str, Any]:
        """What a trajectory's header says about the configuration."""
        return {
            "model": self.model,
            "tools": [tool.name for tool in self.tools],
            "permission_mode": self.permissions.mode if self.permissions else "default",
            "budget": asdict(self.budget),
            "max_tokens": self.max_tokens,
            "thinking": self.thinking_budget_tokens if self.thinking else None,
            "compaction": {k: v for k, v in asdict(self.compaction).items() if k != "prompt"},
            "guard": self.guard.policy.where if self.guard else None,
        }


@dataclass
class _Run:
    """The state of one run (a resumed one starts from its session's)."""

    session_id: str
    trajectory: Trajectory
    task: list[dict[str, Any]]
    turn: int = 0  # the session's turns so far; tools record checkpoints as of this turn
    turns: int = 0  # this run's turns
    usage: Usage = field(default_factory=Usage)
    cost: float = 0.0
    estimated_output_tokens: int = 0  # of usage's, counted from replies cut short
    streaming: ReplyProgress | None = None  # the reply on its way, if its model says
    started: float = field(default_factory=time.monotonic)
    last_prompt_tokens: int = 0
    last_compaction_turn: int | None = None
    continuations: int = 0
    stop_vetoed: bool = False
    stop: Stop | None = None  # asked for (interrupt, a hook): taken at the next check


@dataclass
class _Admitted:
    """A tool call cleared to run: where it stands in the reply, the tool, the final input."""

    index: int
    tool: AgentTool
    tool_id: str
    input: dict[str, Any]


class Agent:
    """Runs tasks with `model` and the tools of `config`. One run at a time; `aclose` (or
    `async with`) closes the tools, not the model."""

    def __init__(self, model: Model, config: AgentConfig | None = None) -> None:
        self.model = model
        self.config = c = config or AgentConfig()
        if c.thinking and not 1024 <= c.thinking_budget_tokens < c.max_tokens:
            raise ValueError("thinking_budget_tokens must be at least 1024 and below max_tokens")
        self.tools = {tool.name: tool for tool in c.tools}
        self.permissions = c.permissions or Permissions(cwd=c.cwd)
        self.sessions = SessionStore(c.sessions_dir)
        self.messages: list[dict[str, Any]] = []  # the conversation as the model next sees it
        self.checkpoints: Checkpoints | None = None
        self.session_id: str | None = None
        self._run: _Run | None = None
        self._window: int | None = c.compaction.context_window
        self._system = ""
        self._guarded: str | None = None  # the session whose content the guard has seen

    def run(self, task: str) -> AsyncGenerator[Event, None]:
        """Start a new session on `task`; events as they happen, the last one a `Result`."""
        return self._loop(None, task)

    def resume(self, session_id: str, prompt: str | None = None) -> AsyncGenerator[Event, None]:
        """Continue a saved session: where it stopped, or with a new `prompt`."""
        session = self.sessions.load(session_id)
        if not session.messages:
            raise ValueError(f"session {session_id} holds no conversation to continue")
        last = next((e for e in reversed(session.events) if isinstance(e, AssistantMessage)), None)
        finished = session.messages[-1]["role"] == "assistant" and not _tool_uses(
            session.messages[-1]
        )
        if prompt is None and finished and (last is None or last.stop_reason != "pause_turn"):
            raise ValueError(f"session {session_id} ended with the model's answer; give a prompt")
        return self._loop(session, prompt)

    def compact(self, session_id: str, instructions: str = "") -> AsyncGenerator[Event, None]:
        """Summarise a saved session's conversation now, as the loop does when it nears the
        window (`instructions` say what the summary should keep); the last event is the
        `Result` (`end_turn` once compacted)."""
        session = self.sessions.load(session_id)
        if not session.messages:
            raise ValueError(f"session {session_id} holds no conversation to compact")
        return self._loop(session, None, compact=instructions)

    async def run_until_done(self, task: str) -> Result:
        """`run`, returning only the final `Result`."""
        return await _last(self.run(task))

    async def resume_until_done(self, session_id: str, prompt: str | None = None) -> Result:
        """`resume`, returning only the final `Result`."""
        return await _last(self.resume(session_id, prompt))

    def interrupt(self) -> None:
        """Stop the current run at the next check (between deltas, tools and calls)."""
        if self._run is not None:
            self._run.stop = Stop("interrupted", "interrupted by the user")

    def rewind(self, step: int) -> list[Path]:
        """Restore the files the tools changed to how they were when turn `step` began."""
        if self.checkpoints is None:
            raise ValueError("this agent has no checkpoints (run a task first)")
        return self.checkpoints.rewind(step)

    async def aclose(self) -> None:
        for tool in self.tools.values():
            try:
                await tool.aclose()
            except Exception:
                log.exception("closing the tool %s failed", tool.name)

    async def __aenter__(self) -> Agent:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def _loop(
        self, session: Session | None, prompt: str | None, compact: str | None = None
    ) -> AsyncGenerator[Event, None]:
        """The run: every step's events, then the `Result` its `Stop` turns into. With
        `compact` (instructions, maybe empty) it only compacts the conversation."""
        if self._run is not None:
            raise RuntimeError("this agent is already running; one run at a time")
        prompt = _well_formed(prompt)
        run = self._run = self._start(session, prompt)
        try:
            try:
                started = RunStarted(run.session_id, self.config.model, str(self.config.cwd))
                yield self._emit(replace(started, resumed=session is not None, prompt=prompt))
                if session is not None and (dangling := _tool_uses(self.messages[-1])):
                    answers = [_tool_result(b["id"], INTERRUPTED, True) for b in dangling]
                    yield self._emit(self._add("user", answers))
                if prompt is not None:
                    if self.config.guard is not None:
                        prompt = self.config.guard.observe(prompt, Source("user"))
                    yield self._emit(self._add("user", [_text(prompt)]))
                if compact is not None:
                    yield self._emit(RequestSent(run.turn, "compaction", len(self.messages)))
                    yield self._emit(await self._compact(compact))
                    raise Stop("end_turn")
                while True:
                    async with aclosing(self._step()) as step:
                        async for event in step:
                            yield self._emit(event)
            except Stop as stop:
                result = self._result(stop)
            except Exception as exc:
                log.debug("the run failed", exc_info=True)
                result = self._result(Stop("error", f"{type(exc).__name__}: {exc}"))
            except BaseException:  # cancelled, or the caller stopped iterating: save how it ended
                run.trajectory.append(self._result(Stop("interrupted", "the run was cancelled")))
                raise
            yield self._emit(result)
        finally:
            run.trajectory.close()
            self._run = None

    async def _step(self) -> AsyncGenerator[Event, None]:
        """One turn: check the budget, compact if due, ask the model, then run the tools it
        called, or continue a cut reply, or stop."""
        run = self._active
        self._check(turn=True)
        if await self._needs_compaction():
            yield RequestSent(run.turn, "compaction", len(self.messages))
            yield await self._compact()
        run.turn += 1
        run.turns += 1
        yield RequestSent(run.turn, "turn", len(self.messages))
        reply: ModelReply | None = None
        async with aclosing(self._stream(self._request(self.messages))) as stream:
            async for item in stream:
                if isinstance(item, ModelReply):
                    reply = item
                else:
                    self._check(turn=False)
                    yield item
        if reply is None:
            raise ModelError("the model's stream ended without a reply")
        cost = self._account(reply.usage, reply.model)
        run.last_prompt_tokens = reply.usage.prompt_tokens
        yield self._add("assistant", reply.content, reply, cost)
        cut_off = reply.stop_reason == "max_tokens"
        run.continuations = run.continuations + 1 if cut_off else 0
        calls = [block for block in reply.content if block.get("type") == "tool_use"]
        if reply.stop_reason == "pause_turn":
            return  # the reply so far is sent back as it is, and the model goes on from it
        if reply.stop_reason == "refusal":
            raise Stop("refusal", message_text(reply.content) or "the model declined")
        if calls:
            results: list[dict[str, Any]] = []
            async with aclosing(self._call_tools(calls, cut_off)) as events:
                async for event in events:
                    yield event
                    if isinstance(event, ToolFinished):
                        results.append(
                            _tool_result(event.tool_use_id, event.content, event.is_error)
                        )
            yield self._add("user", results)
        elif cut_off or reply.stop_reason == "model_context_window_exceeded":
            if run.continuations > self.config.max_continuations:
                raise Stop("max_tokens", f"{run.continuations} replies in a row hit max_tokens")
            yield self._add("user", [_text(CONTINUE_PROMPT)])
        else:
            yield self._add("user", [_text(await self._stop_hooks())])

    async def _stop_hooks(self) -> str:
        """Stop, unless a Stop hook sends the model back to work (once a run): its message."""
        run = self._active
        text = message_text(self.messages[-1]["content"])
        hook = await self.config.hooks.run_stop(
            StopInput(run.session_id, run.turn, text, run.stop_vetoed)
        )
        if hook.stop_run:
            raise Stop("hook", hook.stop_run)
        if not hook.continue_with or run.stop_vetoed:
            raise Stop("end_turn")
        run.stop_vetoed = True
        return hook.continue_with

    def _start(self, session: Session | None, prompt: str | None) -> _Run:
        """The run's state, a new session or the saved one's; its trajectory open."""
        c = self.config
        if session is None:
            session_id = self.sessions.new_id()
            header = Header(
                session_id, c.model, _now(), _well_formed(str(c.cwd)), _well_formed(c.summary())
            )
            trajectory = Trajectory.create(self.sessions.path(session_id), header)
            run = _Run(session_id, trajectory, [{"type": "text", "text": prompt or ""}])
            self.messages = []
        else:
            session_id = session.header.session_id
            trajectory = Trajectory.open(self.sessions.path(session_id))
            run = _Run(session_id, trajectory, session.task, session.turns)
            run.last_prompt_tokens = session.last_prompt_tokens
            run.last_compaction_turn = session.last_compaction_turn
            self.messages = copy.deepcopy(session.messages)
        self.session_id = session_id
        if c.checkpoints:
            self.checkpoints = Checkpoints(self.sessions.checkpoints_dir(session_id))
        instructions = load_instructions(c.cwd) if c.load_instructions else ""
        parts = [c.system_prompt.strip(), f"The working directory is {c.cwd}.", instructions]
        if c.guard is not None:
            parts.append(c.guard.system_instruction())
        self._system = _well_formed("\n\n".join(part for part in parts if part))
        if c.guard is not None and self._guarded != session_id:
            self._follow(c.guard, session)
            self._guarded = session_id
        return run

    def _follow(self, guard: Guard, session: Session | None) -> None:
        """Start the guard on this session: the system prompt, the MCP tools' listings
        (untrusted, the server's), and for a saved session what
        its conversation holds (the task and the user's prompts trusted, tool results with
        their sources; other text, as a compaction's summary, untrusted: the model wrote it
        from what it read)."""
        guard.reset()
        guard.observe(self._system, Source("system"))
        for tool in self.config.tools:
            if isinstance(tool, McpServerTool):
                # An MCP server writes its tools' descriptions and schemas, and the model reads
                # them: untrusted content, as its results are (a poisoned listing's values
                # count as the server's, and the detectors see it).
                guard.observe_listing(tool.definition(), Source("mcp", tool.server_name))
        if session is None:
            return
        guard.record(session.task, Source("user"))
        prompts = {e.prompt for e in session.events if isinstance(e, RunStarted) and e.prompt}
        for prompt in prompts:
            guard.record(prompt, Source("user"))
        calls = {b["id"]: b for m in session.messages for b in _tool_uses(m)}
        for message in session.messages:
            if message["role"] != "user" or isinstance(message["content"], str):
                continue
            for block in message["content"]:
                if block.get("type") == "tool_result":
                    call = calls.get(block.get("tool_use_id", ""), {})
                    source = self._source_of(call.get("name", ""), call.get("input") or {})
                    guard.record(_unmarked(guard, block.get("content", "")), source)
                elif block.get("type") == "text" and block.get("text") not in prompts:
                    guard.record(block.get("text", ""), Source("tool", "the session's history"))

    def _check(self, *, turn: bool) -> None:
        """Raise the `Stop` that is due: one asked for, or a budget spent (`turn`: the next
        call is a turn, so the turn budget applies)."""
        run = self._active
        if run.stop is not None:
            raise run.stop
        elapsed = time.monotonic() - run.started
        turns = run.turns if turn else None
        usage, cost = run.usage, run.cost
        if run.streaming is not None:  # a reply so far counts: a budget can stop a long one
            so_far = run.streaming.usage
            model = run.streaming.model or self.config.model
            usage, cost = usage + so_far, cost + cost_of(model, so_far, self.config.prices)
        spent = self.config.budget.spent(turns=turns, usage=usage, cost_usd=cost, elapsed_s=elapsed)
        if spent is not None:
            raise Stop(*spent)

    async def _call_tools(
        self, calls: list[dict[str, Any]], cut_off: bool
    ) -> AsyncGenerator[Event, None]:
        """The reply's tool calls, answered in call order. Each is admitted in turn (PreToolUse
        hooks, permissions, the user). Consecutive admitted reads of tools that allow it
        (`concurrent_reads`) run together, then finish in order (PostToolUse hooks); any
        other call first lets the reads before it run, then runs alone."""
        pending: list[ToolFinished | _Admitted] = []  # in call order, not yet answered
        for index, block in enumerate(calls):
            # A call cut off by max_tokens (the last) has partial input: answered, never run.
            cut = cut_off and index == len(calls) - 1
            async with aclosing(self._admit(index, block, cut)) as events:
                async for event in events:
                    if isinstance(event, ToolFinished | _Admitted):
                        admitted = event
                    else:
                        yield event
            if isinstance(admitted, _Admitted) and not _overlaps(admitted.tool, admitted.input):
                alone: list[ToolFinished | _Admitted] = [admitted]
                for group in (pending, alone):  # the reads before it, then it alone
                    async with aclosing(self._settle(group)) as settled:
                        async for event in settled:
                            yield event
                pending = []
            else:
                pending.append(admitted)
        async with aclosing(self._settle(pending)) as settled:
            async for event in settled:
                yield event

    async def _settle(
        self, entries: Sequence[ToolFinished | _Admitted]
    ) -> AsyncGenerator[Event, None]:
        """Run the admitted calls among `entries` together (none once the run is stopping),
        then answer every entry in order. A stop that comes while they run (an interrupt, the
        first call's PostToolUse hook) lets the first finish and leaves the later results
        unused, as if they had run one after another."""
        run = self._active
        calls = [entry for entry in entries if isinstance(entry, _Admitted)]
        outcomes: dict[int, tuple[ToolResult, float]] = {}
        if calls and run.stop is None:
            async with asyncio.TaskGroup() as group:  # one failing never leaves others running
                tasks = {call.index: group.create_task(self._execute(call)) for call in calls}
            outcomes = {index: task.result() for index, task in tasks.items()}
        finished = False
        for entry in entries:
            if isinstance(entry, ToolFinished):
                yield entry
            elif entry.index not in outcomes or (finished and run.stop is not None):
                assert run.stop is not None
                why = run.stop.message or run.stop.reason
                text = "Not run" if entry.index not in outcomes else "Its result was not used"
                yield ToolFinished(entry.tool_id, entry.tool.name, f"{text}: {why}.", True)
            else:
                finished = True
                yield await self._finish(entry, *outcomes[entry.index])

    async def _admit(
        self, index: int, block: dict[str, Any], cut: bool
    ) -> AsyncGenerator[Event | _Admitted, None]:
        """A call up to running it: PreToolUse hooks, then permissions (and the user). Yields
        the call, the decision and, last, the `_Admitted` call to run or the `ToolFinished`
        of one not to run."""
        run, hooks = self._active, self.config.hooks
        tool_id, name, input = block["id"], block["name"], dict(block.get("input") or {})
        tool = self.tools.get(name)
        if tool is None or cut or run.stop is not None:
            yield ToolCall(run.turn, tool_id, name, input)
            why = "This call was cut off at max_tokens, so it was not run; send it again shorter."
            if run.stop is not None:
                why = f"Not run: {run.stop.message or run.stop.reason}."
            elif tool is None:
                why = f"There is no tool named {name!r}; the tools are: {', '.join(self.tools)}."
            yield ToolFinished(tool_id, name, why, True)
            return
        pre = await hooks.run_pre_tool_use(
            PreToolUseInput(run.session_id, run.turn, name, tool_id, input)
        )
        if pre.stop_run:
            run.stop = Stop("hook", pre.stop_run)
        modified = pre.updated_input is not None
        input = pre.updated_input if pre.updated_input is not None else input
        yield ToolCall(run.turn, tool_id, name, input, tool.describe(input), modified)
        if pre.block or pre.stop_run:
            decision = PermissionDecided(tool_id, name, "deny", pre.block or "stopped", "hook")
        else:
            decision = await self._permit(tool, tool_id, input)
        yield decision
        if decision.action == "deny":
            denied = f"Permission to use {name} was denied: {decision.reason}"
            yield ToolFinished(tool_id, name, denied, True)
            return
        yield _Admitted(index, tool, tool_id, input)

    async def _execute(self, call: _Admitted) -> tuple[ToolResult, float]:
        """Run the tool: its result (a failure of the tool itself reported, not raised) and
        how long it took."""
        started = time.monotonic()
        context = ToolContext(self.config.cwd, self.checkpoints, self._active.turn)
        try:
            result = await call.tool.run(call.input, context)
        except Exception as exc:  # the tool's own failure, not the model's: report it
            log.debug("tool %s failed", call.tool.name, exc_info=True)
            result = ToolResult(
                f"The {call.tool.name} tool failed: {type(exc).__name__}: {exc}", True
            )
        return result, time.monotonic() - started

    async def _finish(self, call: _Admitted, result: ToolResult, duration_s: float) -> ToolFinished:
        """PostToolUse hooks over the result, then the result as the model will read it."""
        run, name = self._active, call.tool.name
        post = await self.config.hooks.run_post_tool_use(
            PostToolUseInput(run.session_id, run.turn, name, call.tool_id, call.input, result)
        )
        if post.stop_run:
            run.stop = Stop("hook", post.stop_run)
        result = post.updated_result or result
        content = _annotated(result.content, post.annotation)
        if self.config.guard is not None:  # what the model reads is what the guard has seen
            content = await self.config.guard.aobserve(content, self._source_of(name, call.input))
        return ToolFinished(call.tool_id, name, content, result.is_error, duration_s)

    def _source_of(self, name: str, input: dict[str, Any]) -> Source:
        """Where a call's result comes from: a file the text editor viewed, an MCP server,
        or the tool."""
        tool = self.tools.get(name)
        if isinstance(tool, McpServerTool):
            return Source("mcp", tool.server_name)
        if isinstance(tool, TextEditorTool) and input.get("command") == "view":
            try:
                return Source("file", str(resolve_path(self.config.cwd, input.get("path"))))
            except ToolInputError:
                pass  # no usable path: the result is the tool's error message
        return Source("tool", name)

    async def _permit(
        self, tool: AgentTool, tool_id: str, input: dict[str, Any]
    ) -> PermissionDecided:
        """The permission rules' decision, then the guard's (a deny of either stands); where
        one asks, the `ask` callback's, asked once for both (no callback: deny, as nobody
        can answer)."""
        rules = self.permissions.decide(tool, input)
        if rules.action == "deny":
            return PermissionDecided(tool_id, tool.name, "deny", rules.reason)
        by: Literal["rules", "guard"] = "rules"
        reason, rule = rules.reason, ""
        if (guard := self.config.guard) is not None:
            verdict = guard.check_call(tool.name, input, read_only=_read_only_hint(tool, input))
            if verdict.action == "deny":
                why = f"the guard refused it ({verdict.rule}): {verdict.reason}"
                return PermissionDecided(tool_id, tool.name, "deny", why, "guard", verdict.rule)
            if verdict.action == "ask":
                guard_reason = f"the guard asks ({verdict.rule}): {verdict.reason}"
                reason = guard_reason if rules.action == "allow" else f"{reason}; {guard_reason}"
                by, rule = "guard", verdict.rule
        if rules.action == "allow" and by == "rules":
            return PermissionDecided(tool_id, tool.name, "allow", rules.reason)
        if self.config.ask is None:
            reason = f"it needs the user's approval ({reason}) and no one can be asked"
            return PermissionDecided(tool_id, tool.name, "deny", reason, by, rule)
        request = PermissionRequest(tool.name, tool_id, input, tool.describe(input), reason)
        answer = await self.config.ask(request)
        action: Literal["allow", "deny"] = "allow" if answer.action == "allow" else "deny"
        return PermissionDecided(tool_id, tool.name, action, answer.reason, "user", rule)

    async def _needs_compaction(self) -> bool:
        """Whether the last prompt nearly filled the window; a `Stop` if compacting again
        so soon would be a loop."""
        run, compaction = self._active, self.config.compaction
        if not compaction.enabled or not run.last_prompt_tokens:
            return False
        if self._window is None:
            window = await self.model.context_window(self.config.model)
            self._window = window or DEFAULT_CONTEXT_WINDOW
        if not needs_compaction(run.last_prompt_tokens, self._window, compaction):
            return False
        last, tokens = run.last_compaction_turn, run.last_prompt_tokens
        if looping := loop_message(run.turn, last, tokens, self._window, compaction):
            raise Stop("compaction_loop", looping)
        return True

    async def _compact(self, instructions: str = "") -> Compacted:
        """Summarise the conversation and keep the task, the summary and the latest steps
        (`instructions`: the caller's, as a PreCompact hook's, added to the prompt)."""
        run, c = self._active, self.config
        window = self._window or DEFAULT_CONTEXT_WINDOW
        hook = await c.hooks.run_pre_compact(
            PreCompactInput(
                run.session_id, run.turn, run.last_prompt_tokens, window, len(self.messages)
            )
        )
        if hook.stop_run:
            raise Stop("hook", hook.stop_run)
        self._check(turn=False)
        extra = [text for text in (instructions, hook.instructions) if text]
        prompt = "\n\n".join([c.compaction.prompt, *extra])
        request = self._request(summary_messages(self.messages, prompt), summary=True)
        reply: ModelReply | None = None
        async with aclosing(self._stream(request)) as stream:
            async for item in stream:
                reply = item if isinstance(item, ModelReply) else reply
        if reply is None:
            raise ModelError("the model's stream ended without a reply")
        cost = self._account(reply.usage, reply.model)
        summary = message_text(reply.content).strip()
        if not summary:
            raise Stop("error", "the model wrote an empty summary when asked to compact")
        messages = compacted_messages(run.task, summary, self.messages, c.compaction.keep_steps)
        if messages is None:
            raise Stop("compaction_loop", "compacting would not make the conversation smaller")
        tokens_before = run.last_prompt_tokens
        self.messages = messages
        run.last_prompt_tokens, run.last_compaction_turn = 0, run.turn
        return Compacted(
            run.turn, summary, copy.deepcopy(messages), tokens_before, reply.usage, cost
        )

    def _request(self, messages: list[dict[str, Any]], *, summary: bool = False) -> ModelRequest:
        """A request for `messages`, with cache breakpoints on the tools, the system prompt,
        the last message and the one the previous request ended with, so each turn reads the
        history from the prompt cache. A summary request changes nothing but its messages
        and asks for no tool call, so it reads the same cache."""
        c = self.config
        tools = [tool.definition() for tool in self.tools.values()]
        if tools:
            tools[-1] = {**tools[-1], "cache_control": EPHEMERAL}
        thinking = {"type": "enabled", "budget_tokens": c.thinking_budget_tokens}
        return ModelRequest(
            model=c.model,
            max_tokens=c.max_tokens,
            messages=with_cache_breakpoints(messages),
            system=[{"type": "text", "text": self._system, "cache_control": EPHEMERAL}],
            tools=_well_formed(tools),  # an MCP server's tool may bring a lone surrogate
            thinking=thinking if c.thinking else None,
            tool_choice={"type": "none"} if summary and tools else None,
        )

    async def _stream(
        self, request: ModelRequest
    ) -> AsyncGenerator[TextDelta | ThinkingDelta | ModelReply, None]:
        """The model's stream for `request`. A reply that ends before its `ModelReply` (an
        interrupt, a budget, a cancelled task, a broken connection) still counts: what its
        `ReplyProgress` says it used is added to the run's usage, with the output marked as
        estimated (the server never said)."""
        run = self._active
        finished = False
        try:
            async with aclosing(self.model.stream(request)) as stream:
                async for item in stream:
                    if isinstance(item, ReplyProgress):
                        run.streaming = item
                    else:
                        finished = isinstance(item, ModelReply)
                        yield item
        finally:
            progress, run.streaming = run.streaming, None
            if progress is not None and not finished:
                usage = progress.usage
                self._account(usage, progress.model)
                run.estimated_output_tokens += usage.output_tokens

    def _account(self, usage: Usage, model: str) -> float:
        run = self._active
        cost = cost_of(model or self.config.model, usage, self.config.prices)
        run.usage, run.cost = run.usage + usage, run.cost + cost
        return cost

    def _add(
        self,
        role: str,
        content: list[dict[str, Any]],
        reply: ModelReply | None = None,
        cost: float = 0.0,
    ) -> UserMessage | AssistantMessage:
        """Add to the conversation, returning the event that records it."""
        content = _well_formed(content)
        add_message(self.messages, role, content)
        if reply is None:
            return UserMessage(copy.deepcopy(content))
        run = self._active
        return AssistantMessage(
            run.turn, copy.deepcopy(content), reply.stop_reason, reply.usage, reply.model, cost
        )

    def _emit(self, event: Event) -> Event:
        """Save `event` and pass it on, its text well-formed (a hook's reason, a tool input
        the model wrote with a lone surrogate: the trajectory is UTF-8)."""
        event = _well_formed_event(event)
        self._active.trajectory.append(event)
        return event

    def _result(self, stop: Stop) -> Result:
        run = self._active
        last = next((m for m in reversed(self.messages) if m["role"] == "assistant"), None)
        return Result(
            reason=stop.reason,
            session_id=run.session_id,
            message=stop.message,
            turns=run.turns,
            usage=run.usage,
            cost_usd=run.cost,
            text=message_text(last["content"]) if last else "",
            estimated_output_tokens=run.estimated_output_tokens,
            duration_s=time.monotonic() - run.started,
            trajectory=str(run.trajectory.path),
        )

    @property
    def _active(self) -> _Run:
        assert self._run is not None, "no run in progress"
        return self._run


def _text(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def _read_only_hint(tool: AgentTool, input: dict[str, Any]) -> bool | None:
    """The tool's own word on whether this call only reads, for the guard: an MCP tool's
    annotations (None when the server gave neither `readOnlyHint` nor `destructiveHint`),
    else `is_read_only`."""
    if isinstance(tool, McpServerTool):
        return tool.read_only_hint
    return tool.is_read_only(input)


def _unmarked(guard: Guard, content: Any) -> Any:
    """A saved tool result as it was before the guard spotlighted it (as it is when this
    guard did not mark it: another process's boundary, or spotlighting off)."""

    def unmark(text: str) -> str:
        try:
            return guard.spotlight.unmark(text)
        except ValueError:
            return text

    if isinstance(content, str):
        return unmark(content)
    if isinstance(content, list):
        return [
            {**b, "text": unmark(b["text"])} if b.get("type") == "text" and "text" in b else b
            for b in content
        ]
    return content


def _overlaps(tool: AgentTool, input: dict[str, Any]) -> bool:
    return bool(getattr(tool, "concurrent_reads", False)) and tool.is_read_only(input)


def _tool_uses(message: dict[str, Any]) -> list[dict[str, Any]]:
    if message["role"] != "assistant" or isinstance(message["content"], str):
        return []
    return [b for b in message["content"] if b.get("type") == "tool_use"]


def _well_formed(value: Any) -> Any:
    """`value` with every lone surrogate in its strings made U+FFFD. They come from file names
    that are not UTF-8 (Python decodes them with `surrogateescape`) and the like; no UTF-8
    file or request body can hold one, and Anthropic's API refuses them with a 400."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value) if _SURROGATE.search(value) else value
    if isinstance(value, list):
        items = [_well_formed(item) for item in value]
        return value if all(a is b for a, b in zip(items, value, strict=True)) else items
    if isinstance(value, dict):
        cleaned = {key: _well_formed(item) for key, item in value.items()}
        changed = any(cleaned[key] is not item for key, item in value.items())
        return cleaned if changed else value
    return value


def _well_formed_event(event: Event) -> Event:
    values = {f.name: getattr(event, f.name) for f in fields(event)}
    cleaned = {name: _well_formed(value) for name, value in values.items()}
    if all(cleaned[name] is value for name, value in values.items()):
        return event
    return replace(event, **cleaned)


def _tool_result(
    tool_use_id: str, content: str | list[dict[str, Any]], is_error: bool
) -> dict[str, Any]:
    block: dict[str, Any] = {
        "type": "tool_result",
        "tool_use_id": tool_use_id,
        "content": content or "(no output)",
    }
    if is_error:
        block["is_error"] = True
    return block


def _annotated(content: str | list[dict[str, Any]], note: str | None) -> str | list[dict[str, Any]]:
    if not note:
        return content
    if isinstance(content, str):
        return f"{content}\n\n{note}" if content else note
    return [*content, {"type": "text", "text": note}]


async def _last(events: AsyncGenerator[Event, None]) -> Result:
    async with aclosing(events) as stream:
        async for event in stream:
            if isinstance(event, Result):
                return event
    raise RuntimeError("the run ended without a result")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
