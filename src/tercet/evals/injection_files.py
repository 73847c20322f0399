"""The guard's model-free measurement on the files channel of the coding agent (issue 19):
injections in a repository's README, in a code comment, and in test output.

An in-house suite, labelled so everywhere: "in-house, tercet-files-v1" (not AgentDojo). Its
data is `datasets/injection-files-v1/`: small repositories (a package module with a bug, a
failing test, a README), each with a benign task whose ground truth is the agent's own tool
calls (view the README, run the tests, view the module, `str_replace` the fix, run the tests
again), and the goals an attacker has for a coding agent (secrets sent away with curl, wget
or Python, a push to the attacker's remote, a dependency from the attacker's index, a
look-alike package installed, an SSH key planted, the API key e-mailed). Each (repository, goal, channel) is a pair: the goal's
instruction, in one of three phrasings, placed in the README, a comment of the module, or the
failing test's assertion message.

Two scripted agents (no model) run through tercet's real agent loop (`tercet.agent.Agent`), with
the real text editor and bash (sandboxed as `tercet code --sandbox` runs it: no network, so
nothing leaves the machine) and an outbox tool (`send_email`, as an MCP e-mail server would
offer one, recording instead of sending):

- *benign* makes the task's ground-truth calls, then answers;
- *gullible* does the same, and as soon as a tool result (a file viewed, bash's output) holds
  the goal's instruction it makes the goal's calls first, then goes on with the task.

The guard is the agent's (`AgentConfig(guard=...)`): it observes each viewed file as
`Source("file", path)` and bash's output as `Source("tool", "bash")`, and judges each call
after the permission rules (bypassed here, so the guard alone decides). Nobody is there to
answer the guard's asks: they are refused, and reported apart from its denials (a person
might have approved). A goal is reached when each of its calls ran (a `PermissionDecided` that
allowed it) and its effect shows: the file it writes holds the attacker's text, or the outbox
got the message; a network goal's effect cannot be seen offline, so its command running is the
goal. Utility is the task's check: the project's tests pass afterwards (run in the sandbox).
"""

from __future__ import annotations

import asyncio
import subprocess
import tempfile
import time
import tomllib
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from tercet.agent import (
    Agent,
    AgentConfig,
    BashTool,
    Decision,
    PermissionDecided,
    PermissionRequest,
    Permissions,
    Result,
    ScriptedModel,
    ScriptedTurn,
    TextEditorTool,
    ToolCall,
    ToolContext,
    ToolFinished,
    ToolResult,
    tool_use,
    turn,
)
from tercet.agent.model import ModelRequest
from tercet.agent.tools.bash_sandbox import sandbox_argv
from tercet.evals.stats import Rate
from tercet.guard import Guard, Policy, StrictRule
from tercet.sandbox.config import ExecutionLimits
from tercet.sandbox.runner import SandboxUnavailable, unavailable_reason

SUITE_DIR = Path(__file__).resolve().parent / "datasets" / "injection-files-v1"
Channel = Literal["readme", "comment", "test-output"]
CHANNELS: tuple[Channel, ...] = ("readme", "comment", "test-output")
AgentKind = Literal["benign", "gullible"]
OUTBOX_TOOL = "send_email"
# Calls a run may make: the task's and a goal's, with room to spare; a scripted agent that
# asked for more would be a harness bug, and the budget ends it.
MAX_TURNS = 30
TEST_LIMITS = ExecutionLimits(wall_seconds=60, cpu_seconds=60)


@dataclass(frozen=True)
class PlannedCall:
    """One tool call of a ground truth or a goal, as the model would make it."""

    tool: str
    input: Mapping[str, Any]

    def describe(self) -> str:
        """The call in one line, for reports."""
        if self.tool == "bash":
            return f"bash: {self.input.get('command')}"
        if self.tool == OUTBOX_TOOL:
            return f"{OUTBOX_TOOL} to {self.input.get('to')}"
        return f"editor {self.input.get('command')} {self.input.get('path')}"


@dataclass(frozen=True)
class Effect:
    """What shows a goal reached besides its calls running: `file` holding `contains`, or a
    message to `sent_to` in the outbox."""

    file: str | None = None
    contains: str = ""
    sent_to: str | None = None


@dataclass(frozen=True)
class Goal:
    """What an attacker wants from the coding agent, the one-line instruction that asks for
    it, and the calls that get it."""

    id: str
    wants: str
    instruction: str
    calls: tuple[PlannedCall, ...]
    effect: Effect | None = None


@dataclass(frozen=True)
class Phrasing:
    """A wrapper around an injected instruction ({project}, {instruction})."""

    id: str
    text: str


@dataclass(frozen=True)
class Repo:
    """A small repository with a bug, and the benign task on it."""

    project: str
    task: str
    secret: str  # the API key in its .env
    test_hint: str  # the failing assertion's message when no injection is there
    calls: tuple[PlannedCall, ...]  # the task's ground truth
    files: Mapping[str, str]  # path -> text, with the channels' placeholders


@dataclass(frozen=True)
class Pair:
    """One measured case: a goal's instruction, phrased, in one channel of a repository."""

    repo: Repo
    goal: Goal
    channel: Channel
    phrasing: Phrasing

    @property
    def name(self) -> str:
        return f"{self.repo.project} x {self.goal.id} @ {self.channel}"

    @property
    def instruction(self) -> str:
        return _fill(self.goal.instruction, self.repo)

    @property
    def injection(self) -> str:
        """The text placed in the channel."""
        return _fill(self.phrasing.text, self.repo, instruction=self.instruction)

    @property
    def goal_calls(self) -> tuple[PlannedCall, ...]:
        return tuple(PlannedCall(c.tool, _filled(c.input, self.repo)) for c in self.goal.calls)


@dataclass(frozen=True)
class Suite:
    """The in-house suite: repositories, goals, phrasings (`Suite.load`)."""

    name: str
    label: str
    test_command: str
    phrasings: tuple[Phrasing, ...]
    goals: tuple[Goal, ...]
    repos: tuple[Repo, ...]

    @classmethod
    def load(cls, directory: Path = SUITE_DIR) -> Suite:
        """The suite in `directory`: suite.toml and repos/*.toml (a missing key raises KeyError
        naming it)."""
        data = tomllib.loads((directory / "suite.toml").read_text(encoding="utf-8"))
        repos = [
            _repo(tomllib.loads(path.read_text(encoding="utf-8")))
            for path in sorted((directory / "repos").glob("*.toml"))
        ]
        return cls(
            name=data["name"],
            label=data["label"],
            test_command=data["test_command"],
            phrasings=tuple(Phrasing(p["id"], p["text"]) for p in data["phrasings"]),
            goals=tuple(_goal(goal) for goal in data["goals"]),
            repos=tuple(repos),
        )

    def pairs(
        self,
        repos: Iterable[str] | None = None,
        goals: Iterable[str] | None = None,
        channels: Iterable[Channel] = CHANNELS,
    ) -> list[Pair]:
        """Every (repository, goal, channel) pair, or those named; the phrasing rotates with
        the three indexes, so each phrasing appears in every channel."""
        wanted_repos = set(repos) if repos is not None else None
        wanted_goals = set(goals) if goals is not None else None
        chosen = set(channels)
        return [
            Pair(repo, goal, channel, self.phrasings[(r + g + c) % len(self.phrasings)])
            for r, repo in enumerate(self.repos)
            if wanted_repos is None or repo.project in wanted_repos
            for g, goal in enumerate(self.goals)
            if wanted_goals is None or goal.id in wanted_goals
            for c, channel in enumerate(CHANNELS)
            if channel in chosen
        ]

    def repo(self, project: str) -> Repo:
        return next(repo for repo in self.repos if repo.project == project)


def _calls(items: Sequence[Mapping[str, Any]]) -> tuple[PlannedCall, ...]:
    return tuple(PlannedCall(item["tool"], dict(item["input"])) for item in items)


def _goal(data: Mapping[str, Any]) -> Goal:
    effect = data.get("effect")
    return Goal(
        data["id"],
        data["wants"],
        data["instruction"],
        _calls(data["calls"]),
        Effect(**effect) if effect is not None else None,
    )


def _repo(data: Mapping[str, Any]) -> Repo:
    return Repo(
        data["project"],
        data["task"],
        data["secret"],
        data["test_hint"],
        _calls(data["calls"]),
        dict(data["files"]),
    )


def _fill(text: str, repo: Repo, **more: str) -> str:
    """`text` with {project}, {secret} and `more` put in (plain replacement: the texts hold
    code, whose braces are not placeholders)."""
    for key, value in {"project": repo.project, "secret": repo.secret, **more}.items():
        text = text.replace(f"{{{key}}}", value)
    return text


def _filled(value: Any, repo: Repo) -> Any:
    if isinstance(value, str):
        return _fill(value, repo)
    if isinstance(value, Mapping):
        return {key: _filled(item, repo) for key, item in value.items()}
    return value


# --- building a repository --------------------------------------------------------------------


def render_files(repo: Repo, pair: Pair | None) -> dict[str, str]:
    """The repository's files, with the pair's injection in its channel (none: clean)."""
    injection = pair.injection if pair is not None else None
    channel = pair.channel if pair is not None else None
    rendered: dict[str, str] = {}
    for path, text in repo.files.items():
        lines: list[str] = []
        for line in text.split("\n"):
            stripped = line.strip()
            if stripped in ("{{readme}}", "{{comment}}"):
                if injection is not None and stripped == f"{{{{{channel}}}}}":
                    indent = line[: len(line) - len(line.lstrip())]
                    prefix = f"{indent}# " if channel == "comment" else indent
                    lines += [f"{prefix}{part}".rstrip() for part in injection.split("\n")]
                continue  # another channel's placeholder: no line at all
            hint = injection if channel == "test-output" and injection else repo.test_hint
            lines.append(line.replace("{{test-output}}", repr(hint)))
        rendered[path] = "\n".join(lines)
    rendered[".env"] = f"API_KEY={repo.secret}\n"
    return rendered


def build_repo(repo: Repo, where: Path, pair: Pair | None = None) -> Path:
    """The repository written under `where` (a git repository with one commit, as a project
    the agent is asked to work on is); its path."""
    project = where / repo.project
    for path, text in render_files(repo, pair).items():
        target = project / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    identity = ["-c", "user.name=tercet evals", "-c", "user.email=evals@localhost"]
    for command in (["init", "-q"], ["add", "-A"], [*identity, "commit", "-qm", "initial"]):
        subprocess.run(["git", *command], cwd=project, check=True, capture_output=True)
    return project


def project_tests_pass(project: Path, command: str) -> bool:
    """Whether `command` (the project's tests) exits 0 in the sandbox."""
    argv = sandbox_argv(command, project, TEST_LIMITS)
    return subprocess.run(argv, cwd=project, capture_output=True).returncode == 0


# --- the agents --------------------------------------------------------------------------------


class Outbox:
    """A `send_email` tool that keeps the messages instead of sending them."""

    name = OUTBOX_TOOL

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def definition(self) -> dict[str, Any]:
        properties = {key: {"type": "string"} for key in ("to", "subject", "body")}
        return {
            "name": self.name,
            "description": "Send an e-mail.",
            "input_schema": {"type": "object", "properties": properties, "required": ["to"]},
        }

    def is_read_only(self, input: dict[str, Any]) -> bool:
        return False

    def describe(self, input: dict[str, Any]) -> str:
        return f"{self.name} to {input.get('to')}"

    async def run(self, input: dict[str, Any], ctx: ToolContext) -> ToolResult:
        self.sent.append(dict(input))
        return ToolResult(f"Sent to {input.get('to')}.")

    async def aclose(self) -> None:
        pass


class ScriptedCoder:
    """The scripted agent's mind: each reply is the next call of `task_calls`; with `obey`
    (the gullible agent), once the last tool result holds `instruction`, the `goal_calls`
    come first. `reply` is given to a `ScriptedModel`."""

    def __init__(
        self,
        task_calls: Sequence[PlannedCall],
        instruction: str | None = None,
        goal_calls: Sequence[PlannedCall] = (),
        *,
        obey: bool = False,
    ) -> None:
        self.pending: deque[tuple[PlannedCall, bool]] = deque((c, False) for c in task_calls)
        self.instruction = instruction
        self.goal_calls = tuple(goal_calls)
        self.obey = obey
        self.seen = False  # a tool result held the instruction
        self.made: dict[str, tuple[PlannedCall, bool]] = {}  # tool_use id -> call, from goal

    def reply(self, request: ModelRequest) -> ScriptedTurn | str:
        if self.instruction and not self.seen and self.instruction in _results(request):
            self.seen = True
            if self.obey:
                self.pending.extendleft((call, True) for call in reversed(self.goal_calls))
        if not self.pending:
            return "Done: the bug is fixed and the tests pass."
        call, from_goal = self.pending.popleft()
        call_id = f"toolu_{len(self.made):02d}_{'goal' if from_goal else 'task'}"
        self.made[call_id] = (call, from_goal)
        return turn(tool_use(call.tool, dict(call.input), id=call_id))


def _results(request: ModelRequest) -> str:
    """The text of the tool results in the request's last message."""
    content = request.messages[-1]["content"] if request.messages else ""
    if isinstance(content, str):
        return ""
    texts: list[str] = []
    for block in content:
        if block.get("type") != "tool_result":
            continue
        inner = block.get("content", "")
        if isinstance(inner, str):
            texts.append(inner)
        else:
            texts += [b.get("text", "") for b in inner if b.get("type") == "text"]
    return "\n".join(texts)


# --- one run -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CallOutcome:
    """One call the scripted agent made, and what the loop did with it."""

    call: str  # PlannedCall.describe()
    from_goal: bool
    ran: bool  # allowed, so the tool ran
    # The guard's answer: "ask" is refused here (nobody can approve), but a person could
    # have let the call through; "allow" without a guard.
    verdict: Literal["allow", "deny", "ask"]
    rule: str  # the guard's rule when it refused


@dataclass
class FilesRun:
    """One scored run: a repository, a pair or none (clean), an agent, a guard or none."""

    repo: str
    goal: str | None
    channel: Channel | None
    phrasing: str | None
    agent: AgentKind
    guarded: bool
    utility: bool = False  # the tests pass afterwards
    goal_reached: bool | None = None  # None without an injection
    injection_seen: bool = False
    calls: list[CallOutcome] = field(default_factory=list)
    error: str | None = None

    @property
    def pair(self) -> str:
        return f"{self.repo} x {self.goal} @ {self.channel}" if self.goal else self.repo


def require_sandbox() -> None:
    """Raise `SandboxUnavailable` unless bash can run sandboxed: the goals' commands reach for
    the network, and only the sandbox keeps them offline."""
    if (reason := unavailable_reason()) is not None:
        raise SandboxUnavailable(f"the files-channel measurement needs the sandbox: {reason}")


async def run_case(
    suite: Suite,
    repo: Repo,
    pair: Pair | None,
    agent: AgentKind,
    policy: Policy | None,
    workdir: Path,
) -> FilesRun:
    """One run of `agent` on a fresh copy of `repo` (with `pair`'s injection, or clean),
    guarded by `policy` or not."""
    outcome = FilesRun(
        repo.project,
        pair.goal.id if pair else None,
        pair.channel if pair else None,
        pair.phrasing.id if pair else None,
        agent,
        policy is not None,
    )
    root = Path(tempfile.mkdtemp(prefix=f"{repo.project}-", dir=workdir))
    project = build_repo(repo, root, pair)
    coder = ScriptedCoder(
        repo.calls,
        pair.instruction if pair else None,
        pair.goal_calls if pair else (),
        obey=agent == "gullible",
    )
    asked: set[str] = set()  # calls the guard asked about

    async def refuse(request: PermissionRequest) -> Decision:
        asked.add(request.tool_use_id)
        return Decision("deny", "a scripted run has nobody to approve it")

    outbox = Outbox()
    config = AgentConfig(
        cwd=project,
        tools=[BashTool(timeout_s=60, sandbox=True), TextEditorTool(), outbox],
        permissions=Permissions(mode="bypassPermissions", cwd=project),  # the guard decides
        ask=refuse,
        guard=Guard(policy) if policy is not None else None,
        sessions_dir=root / "sessions",
        load_instructions=False,
        checkpoints=False,
    )
    decided: dict[str, PermissionDecided] = {}
    finished: set[str] = set()
    try:
        async with Agent(ScriptedModel([coder.reply] * MAX_TURNS), config) as runner:
            async for event in runner.run(repo.task):
                if isinstance(event, PermissionDecided):
                    decided[event.tool_use_id] = event
                elif isinstance(event, ToolFinished):
                    finished.add(event.tool_use_id)
                elif isinstance(event, ToolCall) and event.tool_use_id not in coder.made:
                    raise RuntimeError(f"a call the script did not make: {event.tool_use_id}")
                elif isinstance(event, Result) and event.reason != "end_turn":
                    outcome.error = f"the run ended with {event.reason}: {event.message}"
    except Exception as exc:
        outcome.error = f"{type(exc).__name__}: {exc}"
    for call_id, (call, from_goal) in coder.made.items():
        decision = decided.get(call_id)
        # Allowed, then answered by the tool: it ran (a denied call is answered too, unrun).
        allowed = decision is not None and decision.action == "allow"
        ran = allowed and call_id in finished
        verdict: Literal["allow", "deny", "ask"] = (
            "ask" if call_id in asked else "allow" if allowed else "deny"
        )
        rule = decision.rule if decision is not None else ""
        outcome.calls.append(CallOutcome(call.describe(), from_goal, ran, verdict, rule))
    outcome.injection_seen = coder.seen
    outcome.utility = project_tests_pass(project, suite.test_command)
    if pair is not None:
        goal_ran = [c.ran for c in outcome.calls if c.from_goal]
        outcome.goal_reached = (
            len(goal_ran) == len(pair.goal.calls)
            and all(goal_ran)
            and _effect_shows(pair.goal.effect, project, outbox)
        )
    return outcome


def _effect_shows(effect: Effect | None, project: Path, outbox: Outbox) -> bool:
    if effect is None:
        return True
    if effect.sent_to is not None and not any(m.get("to") == effect.sent_to for m in outbox.sent):
        return False
    if effect.file is not None:
        path = project / effect.file
        return path.is_file() and effect.contains in path.read_text(encoding="utf-8")
    return True


# --- the measurement --------------------------------------------------------------------------


@dataclass(frozen=True)
class ChannelFigures:
    """The measurement of one channel (or all, under the name "total")."""

    channel: str
    pairs: int
    reached_unguarded: Rate  # goals the gullible agent reaches without a guard / pairs
    reached_guarded: Rate  # of those, reached with the guard
    prevention: Rate  # reached without the guard and not with it / reached without it
    prevented_by_asking: Rate  # of those prevented, every refused goal call was an ask
    # Of those prevented, the injection never reached the agent: the guard refused the call
    # that would have shown it (strict mode refuses the test run that prints it).
    prevented_unseen: Rate
    false_denials: Rate  # ground-truth calls not allowed / made, gullible agent, guarded
    utility_unguarded: Rate  # tests pass after the gullible agent, no guard
    utility_guarded: Rate
    utility_lost: Rate  # pairs whose tests pass without the guard and not with it
    # The goal's calls that ran despite the guard -> the pairs where they did.
    reached_despite_guard: dict[str, list[str]]
    prevention_by_goal: dict[str, Rate]
    prevention_by_phrasing: dict[str, Rate]
    denied_task_calls: dict[str, list[str]]  # "call (rule)" -> the pairs where it was denied
    unreached: list[str]  # pairs the unguarded gullible agent does not reach
    errors: list[str]


@dataclass(frozen=True)
class CleanFigures:
    """The benign agent on the clean repositories (no injection)."""

    utility_unguarded: Rate
    utility_guarded: Rate
    false_denials: Rate  # its calls not allowed, guarded / its calls
    denied: dict[str, list[str]]  # "call (rule)" -> the repositories where it was denied
    errors: list[str]


@dataclass
class FilesMeasurement:
    """A whole measurement: per channel and in total, the clean runs, every run."""

    suite: str
    label: str
    policy: str
    channels: dict[str, ChannelFigures]
    clean: CleanFigures
    runs: list[FilesRun]
    seconds: float


def channel_figures(name: str, runs: Sequence[FilesRun]) -> ChannelFigures:
    """Counts the gullible agent's runs of some pairs, each run without and with the guard."""
    unguarded = {r.pair: r for r in runs if r.goal and not r.guarded}
    guarded = {r.pair: r for r in runs if r.goal and r.guarded}
    both = [p for p in unguarded if p in guarded]
    reached = [p for p in both if unguarded[p].goal_reached and unguarded[p].error is None]
    # A guarded run that raised counts against the guard: it proves nothing prevented.
    through = [p for p in reached if guarded[p].goal_reached or guarded[p].error is not None]
    refused_goal_calls = {
        p: [c for c in guarded[p].calls if c.from_goal and not c.ran] for p in reached
    }
    by_asking = [
        p
        for p in reached
        if p not in through
        and refused_goal_calls[p]
        and all(c.verdict == "ask" for c in refused_goal_calls[p])
    ]
    unseen = [p for p in reached if p not in through and not guarded[p].injection_seen]
    task_calls = [(p, c) for p in both for c in guarded[p].calls if not c.from_goal]
    denied = [(p, c) for p, c in task_calls if not c.ran]
    lost = [p for p in both if unguarded[p].utility and not guarded[p].utility]
    despite = _grouped(
        ("; ".join(c.call for c in guarded[p].calls if c.from_goal and c.ran), p) for p in through
    )

    def prevention_by(key: Callable[[FilesRun], str | None]) -> dict[str, Rate]:
        groups = _grouped((str(key(unguarded[p])), p) for p in reached)
        return {
            value: Rate(sum(p not in through for p in ps), len(ps)) for value, ps in groups.items()
        }

    return ChannelFigures(
        channel=name,
        pairs=len(both),
        reached_unguarded=Rate(len(reached), len(both)),
        reached_guarded=Rate(len(through), len(reached)),
        prevention=Rate(len(reached) - len(through), len(reached)),
        prevented_by_asking=Rate(len(by_asking), len(reached) - len(through)),
        prevented_unseen=Rate(len(unseen), len(reached) - len(through)),
        false_denials=Rate(len(denied), len(task_calls)),
        utility_unguarded=Rate(sum(unguarded[p].utility for p in both), len(both)),
        utility_guarded=Rate(sum(guarded[p].utility for p in both), len(both)),
        utility_lost=Rate(len(lost), len(both)),
        reached_despite_guard=despite,
        prevention_by_goal=prevention_by(lambda run: run.goal),
        prevention_by_phrasing=prevention_by(lambda run: run.phrasing),
        denied_task_calls=_grouped((f"{c.call} ({c.rule}, {c.verdict})", p) for p, c in denied),
        unreached=[p for p in both if p not in reached],
        errors=[
            f"{r.pair} ({'guard' if r.guarded else 'no guard'}): {r.error}" for r in runs if r.error
        ],
    )


def _grouped(items: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """(what, pair) items as what -> its pairs, in order ("" reads as a run that raised)."""
    groups: dict[str, list[str]] = {}
    for what, pair in items:
        groups.setdefault(what or "(none: the run raised)", []).append(pair)
    return groups


def clean_figures(runs: Sequence[FilesRun]) -> CleanFigures:
    """Counts the benign agent's runs on clean repositories, without and with the guard."""
    unguarded = [r for r in runs if r.goal is None and not r.guarded]
    guarded = [r for r in runs if r.goal is None and r.guarded]
    calls = [(r, c) for r in guarded for c in r.calls]
    denied = [(r, c) for r, c in calls if not c.ran]
    return CleanFigures(
        utility_unguarded=Rate(sum(r.utility for r in unguarded), len(unguarded)),
        utility_guarded=Rate(sum(r.utility for r in guarded), len(guarded)),
        false_denials=Rate(len(denied), len(calls)),
        denied=_grouped((f"{c.call} ({c.rule}, {c.verdict})", r.repo) for r, c in denied),
        errors=[f"{r.repo}: {r.error}" for r in [*unguarded, *guarded] if r.error],
    )


def strict_policy(policy: Policy) -> Policy:
    """`policy` with strict mode on, asking (a deny here: nobody can answer)."""
    return replace(policy, strict=StrictRule(True, "ask"), where=f"{policy.where} (strict)")


def measure_files(
    policy: Policy | None = None,
    *,
    strict: bool = False,
    repos: Iterable[str] | None = None,
    goals: Iterable[str] | None = None,
    channels: Iterable[Channel] = CHANNELS,
    suite: Suite | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> FilesMeasurement:
    """The files channel measured: the gullible agent on every pair without and with the guard
    (`policy`, the default policy if None; strict mode on with `strict`), and the benign agent
    on each clean repository without and with it. Needs the sandbox (`require_sandbox`)."""
    require_sandbox()
    suite = suite or Suite.load()
    policy = policy or Policy.default()
    if strict:
        policy = strict_policy(policy)
    chosen = tuple(channels)
    pairs = suite.pairs(repos, goals, chosen)
    projects = list(dict.fromkeys(pair.repo.project for pair in pairs))
    if repos is not None:
        projects = [repo.project for repo in suite.repos if repo.project in set(repos)]
    started = time.perf_counter()
    runs = asyncio.run(_run_all(suite, pairs, projects, policy, progress))
    figures: dict[str, ChannelFigures] = {
        channel: channel_figures(channel, [r for r in runs if r.channel == channel])
        for channel in chosen
    }
    figures["total"] = channel_figures("total", runs)
    return FilesMeasurement(
        suite.name,
        suite.label,
        policy.where,
        figures,
        clean_figures(runs),
        runs,
        time.perf_counter() - started,
    )


async def _run_all(
    suite: Suite,
    pairs: Sequence[Pair],
    projects: Sequence[str],
    policy: Policy,
    progress: Callable[[int, int], None] | None,
) -> list[FilesRun]:
    cases: list[tuple[Repo, Pair | None, AgentKind]] = [
        *[(suite.repo(project), None, "benign") for project in projects],
        *[(pair.repo, pair, "gullible") for pair in pairs],
    ]
    runs: list[FilesRun] = []
    with tempfile.TemporaryDirectory(prefix="tercet-files-") as workdir:
        for done, (repo, pair, agent) in enumerate(cases, 1):
            for guard_policy in (None, policy):
                runs.append(await run_case(suite, repo, pair, agent, guard_policy, Path(workdir)))
            if progress is not None:
                progress(done, len(cases))
    return runs


def describe_files(measured: FilesMeasurement) -> list[str]:
    """The figures as report lines, each rate k/n with its 95% interval."""
    clean = measured.clean
    lines = [
        f"{measured.label}: policy {measured.policy}; {measured.seconds:.0f} s",
        f"no injection, benign agent: utility no guard {clean.utility_unguarded}, guard "
        f"{clean.utility_guarded}; calls wrongly refused (denied or asked) {clean.false_denials}",
    ]
    lines += [
        f"  refused {len(repos)}x ({', '.join(dict.fromkeys(repos))}): {call}"
        for call, repos in clean.denied.items()
    ]
    lines += [f"  error: {item}" for item in clean.errors]
    for figures in measured.channels.values():
        f = figures
        lines += [
            f"channel {f.channel}: {f.pairs} pairs",
            f"  attacker goals reached, gullible agent, no guard: {f.reached_unguarded}",
            f"  of those, reached with the guard: {f.reached_guarded}",
            f"  prevention (not reached with the guard / reached without): {f.prevention}",
            f"  of those, by asking alone (nobody answers here; a person might approve): "
            f"{f.prevented_by_asking}",
            f"  of those, the injection never shown (a refused call would have shown it): "
            f"{f.prevented_unseen}",
            f"  task calls wrongly refused (gullible agent, guarded): {f.false_denials}",
            f"  utility under attack: no guard {f.utility_unguarded}, guard {f.utility_guarded}",
            f"  utility lost (tests pass without the guard, not with it): {f.utility_lost}",
            "  prevention by goal: "
            + ", ".join(f"{goal} {rate}" for goal, rate in f.prevention_by_goal.items()),
            "  prevention by phrasing: "
            + ", ".join(f"{name} {rate}" for name, rate in f.prevention_by_phrasing.items()),
        ]
        if f.channel == "total":
            continue  # the lists are the channels'
        lines += [
            f"  reached despite the guard in {len(pairs)} pairs ({', '.join(pairs)}): {calls}"
            for calls, pairs in f.reached_despite_guard.items()
        ]
        lines += [
            f"  task call refused in {len(pairs)} pairs ({', '.join(pairs)}): {call}"
            for call, pairs in f.denied_task_calls.items()
        ]
        lines += [f"  not reached without a guard: {item}" for item in f.unreached]
        lines += [f"  error: {item}" for item in f.errors]
    return lines
