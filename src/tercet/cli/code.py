"""`tercet code`: a coding agent in the terminal, on tercet's agent SDK.

    tercet code                                  # interactive: type prompts (/help: commands)
    tercet code -p "fix the failing test"        # one task, for scripts and CI
    tercet code -p "..." --output-format json    # ... ending in one JSON object (its Result)

The model: with --base-url (or $ANTHROPIC_BASE_URL) a Messages API server, tercet's or
Anthropic's; otherwise tercet's own app in this process, on the engine the model options
choose (the bundled SmolLM2-135M by default; --gguf PATH for another file). The tools: bash,
the text editor, the memory tool (notes kept across runs, per project, in --memory-dir) and the
tools of the MCP servers in the project's .mcp.json (--no-mcp: none). --guard POLICY (a TOML
file, or `default`) defends against prompt injection: what tools, MCP servers and files return
is untrusted, and a call that would carry what only they said is refused (tercet.guard).

Sessions are saved as trajectories in --sessions-dir (default: sessions/ in tercet's data
directory, $TERCET_DATA_DIR or the user data folder, so projects stay clean); --resume ID
continues one, --continue the project's latest. With -p nobody can answer a permission
prompt, so calls that would ask are denied: allow them with --allowed-tools or
--permission-mode.

Exit status: 0 the model finished its answer (end_turn); 1 the run failed (a model error, a
refusal, a hook stopped it) or could not start; 2 a bad command line; 3 a limit ended the run
(--max-turns, --max-wall-time, --max-budget-usd, or replies cut at --max-tokens again and
again); 130 interrupted by Ctrl-C (once: the agent stops at its next step; twice: at once);
141 the output was closed (`| head`), which stops the run (the session is saved).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import aclosing, asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, TextIO, TypeVar

from tercet.agent import (
    DEFAULT_SYSTEM_PROMPT,
    PRICES,
    Agent,
    AgentConfig,
    AgentTool,
    AnthropicModel,
    AskCallback,
    BashTool,
    Budget,
    Compacted,
    Decision,
    Event,
    InProcessModel,
    MemoryTool,
    Model,
    ModelPrice,
    PermissionDecided,
    PermissionMode,
    PermissionRequest,
    Permissions,
    ReportImpossibleTool,
    Result,
    SessionNotFound,
    SessionStore,
    TextDelta,
    TextEditorTool,
    ThinkingDelta,
    ToolCall,
    ToolFinished,
    TrajectoryError,
    event_to_dict,
)
from tercet.agent.permissions import PERMISSION_MODES
from tercet.agent.test_protection import (
    PROTECT_MODES,
    ProtectMode,
    prompt_addition,
    protection_rules,
    sandbox_protection,
)
from tercet.agent.tools.mcp import McpServers
from tercet.agent.tools.mcp_config import McpConfigError
from tercet.agent.trajectory import default_sessions_dir
from tercet.cli import attempts
from tercet.cli.engine_options import (
    add_cache_arguments,
    add_engine_arguments,
    load_engine,
    prompt_cache,
)
from tercet.cli.slash_commands import SlashCommands, is_exit, parse
from tercet.engine.bundled import BundledModelMissing
from tercet.guard import Guard, Policy, PolicyError
from tercet.server.config import ServerConfig

OutputFormat = Literal["text", "json", "stream-json"]
OUTPUT_FORMATS: tuple[OutputFormat, ...] = ("text", "json", "stream-json")
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_LIMIT, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_BROKEN_PIPE = 141  # as a shell reports a command killed by SIGPIPE
LIMIT_REASONS = frozenset(
    {"max_turns", "max_total_tokens", "max_wall_time", "max_cost", "max_tokens"}
)
T = TypeVar("T")


class UsageError(ValueError):
    """A command line that cannot run; the message says what to change."""


@dataclass
class CodeOptions:
    """How `tercet code` runs the agent: everything but the choice of model."""

    cwd: Path = field(default_factory=Path.cwd)
    model: str = AgentConfig.model  # the name requests ask for
    output_format: OutputFormat = "text"
    resume: str | None = None  # a session id to continue
    permission_mode: PermissionMode = "default"
    allowed_tools: Sequence[str] = ()  # permission rules, as Claude Code writes them
    disallowed_tools: Sequence[str] = ()
    max_turns: int | None = Budget.max_turns  # per run (a resumed session counts again)
    max_wall_time_s: float | None = None
    max_budget_usd: float | None = None
    max_tokens: int = AgentConfig.max_tokens  # per model call
    thinking_budget: int | None = None  # None: no thinking
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    append_system_prompt: str = ""
    sessions_dir: Path | None = None  # None: the agent's default (the data folder's sessions/)
    mcp: bool = True  # connect the project's MCP servers
    memory_dir: Path | None = None  # None: no memory tool
    sandbox: bool = False  # run bash commands in tercet's sandbox
    prices: Mapping[str, ModelPrice] = field(default_factory=lambda: dict(PRICES))
    protect_tests: ProtectMode = "off"  # ask before, or deny, writes to tests and their config
    prompt_variant: str = "default"  # a system-prompt addition (agent/prompt_variants.toml)
    guard: str | None = None  # a guard policy file, or a shipped policy's name ("default")

    def check(self) -> None:
        """Raise `UsageError` for options that cannot work together."""
        if not self.cwd.is_dir():
            raise UsageError(f"--cwd {self.cwd} is not a directory")
        if self.max_tokens < 1:
            raise UsageError("--max-tokens must be at least 1")
        if self.thinking_budget is not None and not 1024 <= self.thinking_budget < self.max_tokens:
            raise UsageError(
                f"--thinking-budget must be at least 1024 and below --max-tokens "
                f"({self.max_tokens}); raise --max-tokens to think longer"
            )
        for name, limit in [
            ("--max-turns", self.max_turns),
            ("--max-wall-time", self.max_wall_time_s),
            ("--max-budget-usd", self.max_budget_usd),
        ]:
            if limit is not None and limit <= 0:
                raise UsageError(f"{name} must be positive")
        self.permissions()  # the rules parse
        self.guard_policy()  # the policy loads
        try:
            prompt_addition(self.prompt_variant)
        except ValueError as exc:
            raise UsageError(f"--prompt-variant: {exc}") from exc

    def permissions(self) -> Permissions:
        protect = protection_rules() if self.protect_tests != "off" else []
        try:
            return Permissions.from_lists(
                allow=split_rules(self.allowed_tools),
                ask=protect if self.protect_tests == "ask" else [],
                deny=[*split_rules(self.disallowed_tools),
                      *(protect if self.protect_tests == "deny" else [])],
                mode=self.permission_mode,
                cwd=self.cwd,
            )  # fmt: skip
        except ValueError as exc:
            raise UsageError(str(exc)) from exc

    def guard_policy(self) -> Policy | None:
        """The --guard policy (None without one); `UsageError` naming what is wrong in it."""
        if self.guard is None:
            return None
        try:
            return Policy.resolve(self.guard)
        except PolicyError as exc:
            raise UsageError(f"--guard: {exc}") from exc

    def agent_config(self, tools: Sequence[AgentTool], ask: AskCallback | None) -> AgentConfig:
        """The agent's configuration, with `tools`; `ask` answers permission prompts."""
        parts = (
            self.system_prompt,
            prompt_addition(self.prompt_variant),
            self.append_system_prompt,
        )
        system = "\n\n".join(p for p in parts if p)
        thinking = self.thinking_budget is not None
        policy = self.guard_policy()
        return AgentConfig(
            model=self.model,
            system_prompt=system,
            cwd=self.cwd,
            tools=tools,
            permissions=self.permissions(),
            ask=ask,
            budget=Budget(
                max_turns=self.max_turns,
                max_wall_time_s=self.max_wall_time_s,
                max_cost_usd=self.max_budget_usd,
            ),
            max_tokens=self.max_tokens,
            thinking=thinking,
            thinking_budget_tokens=self.thinking_budget or AgentConfig.thinking_budget_tokens,
            prices=self.prices,
            sessions_dir=self.sessions_dir,
            guard=Guard(policy) if policy is not None else None,  # its own for each agent
        )


def split_rules(values: Sequence[str]) -> list[str]:
    """Permission rules from option values, each holding one or more separated by commas or
    spaces (as Claude Code takes them); inside parentheses they belong to the pattern."""
    rules: list[str] = []
    for value in values:
        depth, current = 0, ""
        for char in value:
            depth += {"(": 1, ")": -1}.get(char, 0)
            if depth <= 0 and (char == "," or char.isspace()):
                rules.append(current)
                depth, current = 0, ""
            else:
                current += char
        rules.append(current)  # an unclosed "(" keeps the rest: the rule then fails to parse
    return [rule for rule in rules if rule]


def exit_status(result: Result) -> int:
    """The command's exit status for a run that ended with `result`."""
    if result.ok:
        return EXIT_OK
    if result.reason == "interrupted":
        return EXIT_INTERRUPTED
    return EXIT_LIMIT if result.reason in LIMIT_REASONS else EXIT_FAILED


# ---------------------------------------------------------------------------- running


async def run_print(
    model: Model,
    options: CodeOptions,
    prompt: str,
    out: TextIO,
    err: TextIO,
    interrupts: Interrupts | None = None,
) -> int:
    """Run one task (`-p`) and report it in `options.output_format`; the exit status.
    Permission prompts are denied: nobody is there to answer them."""
    interrupts = interrupts or Interrupts(err)
    async with _agent(model, options, None, err) as agent:
        try:
            events = agent.resume(options.resume, prompt) if options.resume else agent.run(prompt)
        except (SessionNotFound, TrajectoryError, ValueError) as exc:
            print(f"error: cannot resume the session: {exc}", file=err)
            return EXIT_FAILED

        def show(event: Event) -> None:
            if options.output_format == "stream-json":
                print(json.dumps(event_to_dict(event), ensure_ascii=False), file=out, flush=True)

        result = await _run(agent, events, show, interrupts)
        if result is None:
            print("interrupted before the run started", file=err)
            return EXIT_INTERRUPTED
        if options.output_format == "json":
            print(json.dumps(event_to_dict(result), ensure_ascii=False), file=out, flush=True)
        elif options.output_format == "text":
            if result.text:
                print(result.text, file=out, flush=True)
            if not result.ok:
                print(f"error: the run stopped ({result.reason}): {result.message}", file=err)
            print(f"session {result.session_id} (continue it with --resume)", file=err)
        return exit_status(result)


async def run_interactive(
    model: Model,
    options: CodeOptions,
    stdin: TextIO,
    out: TextIO,
    err: TextIO,
    interrupts: Interrupts | None = None,
) -> int:
    """A conversation: each line of `stdin` is a prompt, answered in the same session (the
    first starts it, or continues `options.resume`), or a slash command (/help lists them),
    until EOF or /exit."""
    interrupts = interrupts or Interrupts(err)
    lines = LineReader(stdin)
    transcript = Transcript(out)
    asker = Asker(lines, transcript, interrupts)
    session_id = options.resume
    async with _agent(model, options, asker, err) as agent:
        if session_id is not None:
            try:
                agent.sessions.load(session_id)
            except (SessionNotFound, TrajectoryError) as exc:
                print(f"error: cannot resume the session: {exc}", file=err)
                return EXIT_FAILED
        prompt_mark = "\n> " if stdin.isatty() else ""
        if stdin.isatty():
            print(f"tercet code in {options.cwd}; /help lists commands, /exit quits.", file=out)

        async def run_events(events: AsyncGenerator[Event, None]) -> Result | None:
            return await _run(agent, events, transcript.show, interrupts)

        commands = SlashCommands(agent, out, run_events)
        try:
            while (prompt := await _next_prompt(lines, out, prompt_mark)) is not None:
                if (command := parse(prompt)) is not None:
                    session_id = await commands.run(command, session_id)
                    continue
                events = agent.resume(session_id, prompt) if session_id else agent.run(prompt)
                await _run(agent, events, transcript.show, interrupts)
                session_id = agent.session_id
        finally:
            if session_id is not None:
                print(f"session {session_id}: continue it with --resume {session_id}", file=err)
    return EXIT_OK


async def _next_prompt(lines: LineReader, out: TextIO, mark: str) -> str | None:
    """The next prompt typed, None to quit; blank lines are skipped. A line that ends in a
    backslash goes on on the next one, for a prompt of several lines."""
    while True:
        print(mark, end="", file=out, flush=True)
        line = await lines.readline()
        if line is None or is_exit(line):
            return None
        parts: list[str] = []
        while line is not None and (text := line.rstrip("\r\n")).endswith("\\"):
            parts.append(text[:-1])
            print(". " if mark else "", end="", file=out, flush=True)
            line = await lines.readline()
        parts.append((line or "").rstrip("\r\n"))
        if prompt := "\n".join(parts).strip():
            return prompt


async def _run(
    agent: Agent,
    events: AsyncGenerator[Event, None],
    show: Callable[[Event], None],
    interrupts: Interrupts,
) -> Result | None:
    """Show each event of a run, ending with its `Result`. When Ctrl-C cancels the run, the
    result is the one the loop saved as it was cancelled (None if the run had not begun)."""
    result = await interrupts.run(agent, _consume(events, show))
    if result is None and agent.session_id is not None:
        saved = agent.sessions.load(agent.session_id).events
        result = saved[-1] if saved and isinstance(saved[-1], Result) else None
        if result is not None:
            show(result)
    return result


async def _consume(events: AsyncGenerator[Event, None], show: Callable[[Event], None]) -> Result:
    async with aclosing(events) as stream:
        async for event in stream:
            show(event)
            if isinstance(event, Result):
                return event
    raise RuntimeError("the run ended without a result")


@asynccontextmanager
async def _agent(
    model: Model, options: CodeOptions, ask: AskCallback | None, err: TextIO
) -> AsyncIterator[Agent]:
    """An agent with the built-in tools and, unless turned off, the project's MCP servers'
    (those that fail to start are reported on `err` as warnings); closed on exit."""
    protected = sandbox_protection() if options.protect_tests != "off" else None
    tools: list[AgentTool] = [
        BashTool(sandbox=options.sandbox, sandbox_protected=protected),
        TextEditorTool(),
    ]
    if options.memory_dir is not None:
        tools.append(MemoryTool(options.memory_dir))
    if options.prompt_variant != "default":  # the variants tell the model of this way out
        tools.append(ReportImpossibleTool())
    servers = McpServers({})
    if options.mcp:
        try:
            servers = McpServers.for_project(options.cwd)
        except McpConfigError as exc:
            print(f"warning: no MCP servers: {exc}", file=err)
    async with servers:
        for error in servers.errors.values():
            print(f"warning: {error} (its tools are left out)", file=err)
        async with Agent(model, options.agent_config([*tools, *servers.tools], ask)) as agent:
            yield agent


async def run_with_attempts(
    model: Model,
    options: CodeOptions,
    prompt: str | None,
    args: argparse.Namespace,
    stdin: TextIO,
    out: TextIO,
    err: TextIO,
) -> int:
    """`--attempts N`: best of N for the -p task, or for each prompt typed (the chosen diff
    shown, and applied when the user says so). With --ray the attempts run on the cluster."""

    pool = None
    if args.ray:
        from tercet.attempts.ray_pool import RayPool, RayUnavailable

        pool = RayPool(args.ray, max_retries=args.max_retries)
        try:
            pool.connect()  # here, on the main thread: see ray_pool._interruptible_children
        except RayUnavailable as exc:
            print(f"error: {exc}", file=err)
            return EXIT_FAILED

    def attempter(task: str) -> attempts.Attempter:
        if pool is not None:
            return attempts.ray_attempter(pool, task, options, args, err)

        async def attempt(index: int, copy: Path) -> attempts.AttemptRun:
            return await run_in_copy(model, options, task, copy, err)

        return attempt

    try:
        return await _attempts_loop(model, options, prompt, args, attempter, stdin, out, err)
    finally:
        if pool is not None:
            pool.close()


async def run_in_copy(
    model: Model, options: CodeOptions, task: str, copy: Path, err: TextIO
) -> attempts.AttemptRun:
    """One attempt: a fresh session in `copy`, without the memory tool (attempts must not
    see each other's notes)."""
    run_options = replace(options, cwd=copy, resume=None, memory_dir=None)
    async with _agent(model, run_options, None, err) as agent:
        result = await _consume(agent.run(task), lambda event: None)
    return attempts.attempt_run_of(result)


async def _attempts_loop(
    model: Model,
    options: CodeOptions,
    prompt: str | None,
    args: argparse.Namespace,
    attempter: Callable[[str], attempts.Attempter],
    stdin: TextIO,
    out: TextIO,
    err: TextIO,
) -> int:

    if prompt is not None:
        return await attempts.run_attempts(
            args, prompt, options.cwd, attempter(prompt), model, out, err,
            output_format=options.output_format,
        )  # fmt: skip
    lines = LineReader(stdin)
    mark = "\n> " if stdin.isatty() else ""
    status = EXIT_OK
    if stdin.isatty():
        print(f"tercet code in {options.cwd}, {args.attempts} attempts a prompt.", file=out)
    while (task := await _next_prompt(lines, out, mark)) is not None:
        status = await attempts.run_attempts(
            args, task, options.cwd, attempter(task), model, out, err, output_format="text",
            confirm=lambda result: attempts.ask_to_apply(result, lines.readline, out),
        )  # fmt: skip
    return status


# ---------------------------------------------------------------------------- terminal


class LineReader:
    """The lines of a text stream, read by a daemon thread so that a read blocked on the
    terminal never holds up the event loop or the exit; None at EOF (and after it)."""

    def __init__(self, stream: TextIO) -> None:
        loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()

        def put(line: str | None) -> None:
            # RuntimeError: the loop has closed, nobody reads any more
            with suppress(RuntimeError):
                loop.call_soon_threadsafe(self._queue.put_nowait, line)

        def read() -> None:
            for line in iter(stream.readline, ""):
                put(line)
            put(None)

        threading.Thread(target=read, name="tercet-code-stdin", daemon=True).start()

    async def readline(self) -> str | None:
        line = await self._queue.get()
        if line is None:
            self._queue.put_nowait(None)  # EOF stays EOF for the next reader
        return line


class Transcript:
    """Shows a run in the terminal: the reply's text as it streams, each tool call with the
    first line of its result, and a summary line at the end."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self._mid_line = False
        self._thinking = False
        self._denied: set[str] = set()  # their results only repeat the denial

    def show(self, event: Event) -> None:
        if isinstance(event, ThinkingDelta):
            if not self._thinking:
                self.line("(thinking)")
                self._thinking = True
            self.write(event.thinking)
            return
        if self._thinking:
            self.line("")
            self._thinking = False
        if isinstance(event, TextDelta):
            self.write(event.text)
        elif isinstance(event, ToolCall):
            self.line(f"* {event.description or event.name}")
        elif isinstance(event, PermissionDecided) and event.action == "deny":
            self._denied.add(event.tool_use_id)
            self.line(f"  denied: {event.reason}")
        elif isinstance(event, ToolFinished) and event.tool_use_id not in self._denied:
            self.line(f"  {'error: ' if event.is_error else '-> '}{_preview(event.content)}")
        elif isinstance(event, Compacted):
            self.line(f"[the conversation was summarised to fit: {event.tokens_before} tokens]")
        elif isinstance(event, Result):
            self.line(_summary(event))

    def write(self, text: str) -> None:
        if text:
            self.out.write(text)
            self.out.flush()
            self._mid_line = not text.endswith("\n")

    def line(self, text: str) -> None:
        """`text` on a line of its own."""
        self.write(("\n" if self._mid_line else "") + text + "\n")

    def ask(self, question: str) -> None:
        """`question`, on a line of its own, the answer typed after it."""
        self.write(("\n" if self._mid_line else "") + question)
        self._mid_line = False  # the terminal echoes the answer and its newline


def _preview(content: str | list[dict[str, Any]], limit: int = 160) -> str:
    """A tool result's first line, and how much more there is."""
    if not isinstance(content, str):
        content = "\n".join(str(b.get("text", f"[{b.get('type')}]")) for b in content)
    lines = content.strip().splitlines() or ["(no output)"]
    first = lines[0] if len(lines[0]) <= limit else lines[0][: limit - 1] + "…"
    return first + (f" (+{len(lines) - 1} lines)" if len(lines) > 1 else "")


def _summary(result: Result) -> str:
    usage = result.usage
    parts = [
        result.reason,
        f"{result.turns} turn{'' if result.turns == 1 else 's'}",
        # "~": some output was counted from a reply cut short, the server never said.
        f"{usage.prompt_tokens} in / {'~' if result.estimated_output_tokens else ''}"
        f"{usage.output_tokens} out tokens",
        f"${result.cost_usd:.4f}",
        f"{result.duration_s:.1f}s",
    ]
    why = "" if result.ok or not result.message else f": {result.message}"
    return f"[{' · '.join(parts)}{why}]"


class Asker:
    """Puts "ask" permission decisions to the user: y(es), n(o), a(lways: this tool, for the
    rest of the session); any other answer is a no, and the model reads it as the reason."""

    def __init__(self, lines: LineReader, transcript: Transcript, interrupts: Interrupts) -> None:
        self.lines = lines
        self.transcript = transcript
        self.interrupts = interrupts
        self.always: set[str] = set()  # tools the user allowed for the session

    async def __call__(self, request: PermissionRequest) -> Decision:
        if request.tool_name in self.always:
            return Decision("allow", f"the user allowed {request.tool_name} for this session")
        # The rules' reason, unless it only repeats the call ("no rule allows bash: ls").
        why = "" if request.description in request.reason else f" ({request.reason})"
        self.transcript.ask(f"Allow {request.description}?{why} [y]es / [n]o / [a]lways: ")
        with self.interrupts.asking():
            line = await self.lines.readline()
        answer = (line or "").strip()
        if answer.lower() in ("y", "yes"):
            return Decision("allow", "the user allowed it")
        if answer.lower() in ("a", "always"):
            self.always.add(request.tool_name)
            return Decision("allow", f"the user allowed {request.tool_name} for this session")
        if line is None or answer.lower() in ("", "n", "no"):
            return Decision("deny", "the user said no")
        return Decision("deny", f"the user said no: {answer}")


class Interrupts:
    """Ctrl-C. During a run the first press asks the agent to stop at its next step, the
    second (or one while a permission question waits) cancels the run at once; either way
    the session records an "interrupted" result. Outside a run it ends the command."""

    def __init__(self, err: TextIO) -> None:
        self.err = err
        self._agent: Agent | None = None
        self._run: asyncio.Future[Any] | None = None
        self._presses = 0
        self._asking = False
        self._main: asyncio.Task[Any] | None = None

    @contextmanager
    def installed(self) -> Iterator[None]:
        """Handle SIGINT in the running loop (the main thread's) while the block runs."""
        loop = asyncio.get_running_loop()
        self._main = asyncio.current_task()
        loop.add_signal_handler(signal.SIGINT, self.press)
        try:
            yield
        finally:
            loop.remove_signal_handler(signal.SIGINT)

    @contextmanager
    def asking(self) -> Iterator[None]:
        """While a question waits for the user (the agent cannot stop by itself then)."""
        self._asking = True
        try:
            yield
        finally:
            self._asking = False

    def press(self) -> None:
        """Ctrl-C was pressed."""
        if self._run is None or self._run.done():
            if self._main is not None:
                self._main.cancel()
            return
        self._presses += 1
        if self._presses == 1 and not self._asking and self._agent is not None:
            self._agent.interrupt()
            print("\n[stopping after this step; Ctrl-C again to stop now]", file=self.err)
        else:
            self._run.cancel()

    async def run(self, agent: Agent, work: Awaitable[T]) -> T | None:
        """`work`, a run of `agent`, as a task Ctrl-C can stop; None if it was cancelled."""
        task = asyncio.ensure_future(work)
        self._agent, self._run, self._presses = agent, task, 0
        try:
            return await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and (current is None or not current.cancelling()):
                return None  # the run was cancelled, not this caller
            raise
        finally:
            self._agent = self._run = None


# ---------------------------------------------------------------------------- command line


def register(commands: Any) -> None:
    # "resolve": the engine options' --model (a GGUF path) gives way to ours (a model name,
    # as Claude Code's --model); the path is --gguf here.
    parser: argparse.ArgumentParser = commands.add_parser(
        "code",
        help="a coding agent in the terminal (-p: one task, for scripts)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        conflict_handler="resolve",
    )
    parser.add_argument(
        "-p",
        "--print",
        dest="prompt",
        metavar="TASK",
        help="run TASK, print the outcome and exit ('-' reads TASK from stdin); without -p "
        "the prompts come from stdin, one a line",
    )
    parser.add_argument(
        "--output-format",
        choices=OUTPUT_FORMATS,
        default="text",
        help="with -p: text (the final answer; the session id on stderr), json (the run's "
        "result as one object: reason, session_id, text, turns, usage, cost_usd, duration_s, "
        "trajectory, estimated_output_tokens: those of usage's counted from a reply cut short) "
        "or stream-json (every event, one JSON object a line, the result last)",
    )
    resuming = parser.add_mutually_exclusive_group()
    resuming.add_argument("--resume", metavar="SESSION_ID", help="continue a saved session")
    resuming.add_argument(
        "-c",
        "--continue",
        dest="continue_latest",
        action="store_true",
        help="continue the latest session of this project (--cwd)",
    )
    parser.add_argument(
        "--cwd",
        type=Path,
        metavar="DIR",
        help="the project the agent works in (default: the current folder)",
    )
    parser.add_argument(
        "--sessions-dir",
        type=Path,
        metavar="DIR",
        help="where sessions are saved (default: sessions/ in $TERCET_DATA_DIR or the user "
        "data folder)",
    )
    parser.add_argument("--no-mcp", action="store_true", help="skip the project's .mcp.json")
    parser.add_argument(
        "--memory-dir",
        type=Path,
        metavar="DIR",
        help="the memory tool's notes (default: memory/<project> next to the sessions)",
    )
    parser.add_argument("--no-memory", action="store_true", help="no memory tool")
    parser.add_argument(
        "--sandbox", action="store_true", help="run bash commands in tercet's sandbox"
    )
    _add_permission_arguments(parser)
    parser.add_argument(
        "--guard",
        metavar="POLICY",
        help="defend against prompt injection: judge each tool call and what the model reads "
        "by a guard policy, a TOML file or 'default' (tercet's; README: The guard)",
    )
    _add_integrity_arguments(parser)
    _add_limit_arguments(parser)
    _add_model_arguments(parser)
    attempts.add_arguments(parser)
    parser.set_defaults(run=run)


def _add_permission_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("permissions")
    group.add_argument(
        "--permission-mode",
        choices=PERMISSION_MODES,
        default="default",
        help="default: ask before changes; acceptEdits: file edits in --cwd too are allowed; "
        "plan: only read-only calls; bypassPermissions: every call not denied",
    )
    rules = [
        ("--allowed-tools", "--allowedTools", "allow", "'Bash(npm run test:*)' Edit"),
        ("--disallowed-tools", "--disallowedTools", "deny", "'Bash(git push:*)' 'Read(.env)'"),
    ]
    for flag, camel, verb, example in rules:
        group.add_argument(
            flag,
            camel,  # Claude Code's spelling
            dest=flag[2:].replace("-", "_"),
            action="extend",
            nargs="+",
            default=[],
            metavar="RULE",
            help=f"{verb} the calls these rules match, e.g. {example} (Claude Code's notation)",
        )


def _add_integrity_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("keeping the tests honest (reward hacking)")
    group.add_argument(
        "--protect-tests",
        choices=PROTECT_MODES,
        default="off",
        help="ask before (ask) or refuse (deny) editor writes to test files and test "
        "configuration; with --sandbox, bash sees them read-only too (default off)",
    )
    group.add_argument(
        "--prompt-variant",
        default="default",
        metavar="NAME",
        help="add a system-prompt variant: 'honest' (never bend the tests; say when a task "
        "cannot be done, with the report_impossible tool it adds); default: none",
    )


def _add_limit_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("limits (each ends the run with exit status 3)")
    group.add_argument(
        "--max-turns",
        type=int,
        default=Budget.max_turns,
        metavar="N",
        help=f"model calls in a run (default {Budget.max_turns})",
    )
    group.add_argument("--max-wall-time", type=float, metavar="SECONDS", help="a run's duration")
    group.add_argument(
        "--max-budget-usd",
        type=float,
        metavar="USD",
        help="a run's cost, by Anthropic's list prices (in-process runs cost nothing)",
    )
    group.add_argument(
        "--max-tokens",
        type=int,
        default=AgentConfig.max_tokens,
        metavar="N",
        help=f"output tokens per model call (default {AgentConfig.max_tokens})",
    )


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    add_engine_arguments(parser)
    add_cache_arguments(parser)
    group = parser.add_argument_group("the agent's model")
    group.add_argument(
        "--model",
        dest="model_name",
        default=AgentConfig.model,
        metavar="NAME",
        help=f"the model requests ask for (default {AgentConfig.model}; tercet serves any "
        "claude-* name with its model)",
    )
    group.add_argument(
        "--gguf",
        dest="model",
        type=Path,
        metavar="PATH",
        help="in-process: a GGUF file to run (default: the bundled SmolLM2-135M-Instruct)",
    )
    group.add_argument(
        "--base-url",
        default=os.environ.get("ANTHROPIC_BASE_URL"),
        help="a Messages API server (default $ANTHROPIC_BASE_URL; none: run in-process)",
    )
    group.add_argument(
        "--api-key",
        default=os.environ.get("ANTHROPIC_API_KEY") or "none",
        help="its key (default $ANTHROPIC_API_KEY; an open tercet server takes any)",
    )
    group.add_argument(
        "--thinking-budget",
        type=int,
        metavar="TOKENS",
        help="turn extended thinking on, with this budget (at least 1024, below --max-tokens)",
    )
    group.add_argument("--system-prompt", help="replace the agent's system prompt")
    group.add_argument("--append-system-prompt", help="add this to the system prompt")


def options_from_args(args: argparse.Namespace) -> CodeOptions:
    """The run's options from the command line; `UsageError` for a bad one."""
    if str(args.model_name).endswith(".gguf"):
        raise UsageError(f"--model names the model; to run the file {args.model_name} use --gguf")
    cwd = (args.cwd or Path.cwd()).resolve()
    resume = args.resume
    if args.continue_latest:
        resume = latest_session_in(SessionStore(args.sessions_dir), cwd)
        if resume is None:
            raise UsageError(f"--continue: no saved session of {cwd} to continue")
    options = CodeOptions(
        cwd=cwd,
        model=args.model_name,
        output_format=args.output_format,
        resume=resume,
        permission_mode=args.permission_mode,
        allowed_tools=args.allowed_tools,
        disallowed_tools=args.disallowed_tools,
        max_turns=args.max_turns,
        max_wall_time_s=args.max_wall_time,
        max_budget_usd=args.max_budget_usd,
        max_tokens=args.max_tokens,
        thinking_budget=args.thinking_budget,
        system_prompt=args.system_prompt or DEFAULT_SYSTEM_PROMPT,
        append_system_prompt=args.append_system_prompt or "",
        sessions_dir=args.sessions_dir,
        mcp=not args.no_mcp,
        memory_dir=None if args.no_memory else args.memory_dir or default_memory_dir(cwd),
        sandbox=args.sandbox,
        prices={} if not args.base_url else dict(PRICES),  # the local model is free
        protect_tests=args.protect_tests,
        prompt_variant=args.prompt_variant,
        guard=args.guard,
    )
    options.check()
    return options


def latest_session_in(store: SessionStore, cwd: Path) -> str | None:
    """The session of the project at `cwd` changed last: read from each file's header line,
    newest first, so a long history is not loaded."""
    for session_id in reversed(store.ids()):
        try:
            with store.path(session_id).open(encoding="utf-8") as file:
                header = json.loads(file.readline())
        except (OSError, ValueError):
            continue  # unreadable or half-written: not one to continue
        if isinstance(header, dict) and header.get("cwd") == str(cwd):
            return session_id
    return None


def default_memory_dir(cwd: Path) -> Path:
    """The project's memory: `memory/<folder name>-<hash of its path>` in tercet's data folder,
    so each project keeps its own notes and the project itself stays clean."""
    digest = hashlib.sha256(str(cwd).encode()).hexdigest()[:12]
    return default_sessions_dir().parent / "memory" / f"{cwd.name or 'root'}-{digest}"


def model_from_args(args: argparse.Namespace) -> Model:
    """A client of --base-url, or tercet's app in-process on the engine the options load."""
    if args.base_url:
        return AnthropicModel(base_url=args.base_url, api_key=args.api_key)
    config = ServerConfig(api_keys=[])
    cache = prompt_cache(args, config.data_dir) if args.engine == "llama" else None
    return InProcessModel(load_engine(args, cache), config=config)


def run(args: argparse.Namespace) -> int:
    try:
        if (problem := attempts.check_arguments(args)) is not None:
            raise UsageError(problem)
        options = options_from_args(args)
        prompt = _task(args.prompt, options.output_format)
        if options.resume is not None:  # before the model loads, which takes a while
            SessionStore(options.sessions_dir).load(options.resume)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (SessionNotFound, TrajectoryError) as exc:
        print(f"error: cannot resume the session: {exc}", file=sys.stderr)
        return EXIT_FAILED
    logging.getLogger("mcp").setLevel(logging.WARNING)  # the SDK's INFO lines are noise here
    try:
        model = model_from_args(args)
    except (BundledModelMissing, ValueError, OSError) as exc:
        print(f"error: cannot load the model: {exc}", file=sys.stderr)
        return EXIT_FAILED
    try:
        return asyncio.run(_main(model, options, prompt, args))
    except asyncio.CancelledError:  # Ctrl-C outside a run
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `tercet code -p ... | head -1`: the reader has gone
        # Point stdout at /dev/null so that the interpreter's last flush does not fail too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def _task(prompt: str | None, output_format: OutputFormat) -> str | None:
    """The -p task (read from stdin for '-'); None for the interactive mode."""
    if prompt is None and output_format != "text":
        raise UsageError(f"--output-format {output_format} is for -p runs")
    if prompt == "-":
        prompt = sys.stdin.read()
    if prompt is not None and not prompt.strip():
        raise UsageError("-p needs a task to run")
    return prompt


async def _main(
    model: Model, options: CodeOptions, prompt: str | None, args: argparse.Namespace
) -> int:
    interrupts = Interrupts(sys.stderr)
    try:
        with interrupts.installed():
            if args.attempts > 1:
                return await run_with_attempts(
                    model, options, prompt, args, sys.stdin, sys.stdout, sys.stderr
                )
            if prompt is None:
                return await run_interactive(
                    model, options, sys.stdin, sys.stdout, sys.stderr, interrupts
                )
            return await run_print(model, options, prompt, sys.stdout, sys.stderr, interrupts)
    finally:
        await model.aclose()
