"""The `tercet` agent: tercet's agent SDK with bash and the text editor in the workspace.

The model is the embedded one in-process by default (a GGUF run by tercet's own app, no
socket), or any Messages API server (`base_url`: tercet serving another engine, or
Anthropic's API). Bash runs each command under bubblewrap without network, seeing the
workspace and the task's test environment. Usage is mapped to `Compute`: tokens as the API
counts them, thinking tokens as streamed (an estimate, part of the output tokens), cost at
the configured prices (None for a model without one), FLOPs estimated as 2 x parameters x
computed tokens where the model's size is known.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tercet.agent import (
    Agent,
    AgentConfig,
    AnthropicModel,
    AssistantMessage,
    Budget,
    Compacted,
    Model,
    Permissions,
    ReportImpossibleTool,
    RequestSent,
    Result,
    TextEditorTool,
    ThinkingDelta,
    ToolCall,
    ToolFinished,
    Usage,
)
from tercet.agent.budget import price_of
from tercet.agent.hooks import Hooks, PreToolUseInput, PreToolUseOutput
from tercet.agent.test_protection import prompt_addition, protection_rules, sandbox_protection
from tercet.agent.tools import editor
from tercet.agent.tools.base import resolve_path
from tercet.agent.tools.bash import BashTool
from tercet.agent.tools.report_impossible import NAME as REPORT_IMPOSSIBLE
from tercet.evals.agents.base import AgentOutcome, AgentSettings, TaskView, Workspace
from tercet.evals.task import Compute
from tercet.sandbox import runner

log = logging.getLogger("tercet.evals")

SYSTEM_PROMPT = """\
You are a software engineer fixing a bug in a Python package. The package's source is in \
your working directory, a git repository. Read the relevant code, find the cause, and fix it \
with a small, precise edit to the package's source. Do not edit the tests: they are restored \
before your fix is graded. Check your fix by running the tests. When you are done, reply with \
a one-paragraph summary of the cause and the fix, without calling a tool. If the task cannot \
be done as specified (for example, the tests contradict the report or each other), call the \
report_impossible tool with the reason, or end your reply with a line starting with \
"IMPOSSIBLE:" and the reason."""

# How long past its wall-time budget a run may take to wind down (a tool call in flight)
# before it is cancelled.
WIND_DOWN_S = 30.0


def task_prompt(task: TaskView, workspace: Workspace) -> str:
    """The first user message: the bug report, where the code is, how to run the tests."""
    parts = [
        f"A bug was reported in {task.repo} {task.version}:",
        "",
        task.problem_statement.strip(),
        "",
        f"The package's source is in {workspace.path}. Fix the bug in the source code.",
    ]
    if workspace.test_command:
        parts += [
            "Run the package's tests with this command (add pytest options or test ids):",
            "",
            f"    {workspace.test_command}",
        ]
    return "\n".join(parts)


class TercetAgent:
    """Runs each attempt as a fresh `Agent` on one shared model."""

    name = "tercet"

    def __init__(
        self,
        model: Model,
        model_name: str,
        settings: AgentSettings,
        *,
        parameters: int | None = None,
        system_prompt: str = SYSTEM_PROMPT,
    ) -> None:
        self._model = model
        self.model = model_name
        self.settings = settings
        self.parameters = parameters
        self.system_prompt = system_prompt
        self._scratch: Path | None = None

    async def solve(self, task: TaskView, workspace: Workspace, budget: Budget) -> AgentOutcome:
        counts = _Counts()
        started = time.monotonic()
        outcome: AgentOutcome
        try:
            async with self._agent(workspace, budget) as agent:
                limit = (
                    None if budget.max_wall_time_s is None else budget.max_wall_time_s + WIND_DOWN_S
                )
                async with asyncio.timeout(limit):
                    async for event in agent.run(task_prompt(task, workspace)):
                        counts.add(event)
        except TimeoutError:
            outcome = AgentOutcome(
                "max_wall_time", error="the run outlived its wall-time budget and was cancelled"
            )
        except Exception as exc:  # a tool or the model failed outside the loop's own handling
            log.debug("the tercet agent failed", exc_info=True)
            outcome = AgentOutcome("error", error=f"{type(exc).__name__}: {exc}")
        else:
            result = counts.result
            if result is None:
                outcome = AgentOutcome("error", error="the run ended without a result")
            else:
                error = result.message if result.reason == "error" else None
                outcome = AgentOutcome(result.reason, error=error, trajectory=result.trajectory)
                outcome.final_text = result.text
        if counts.abstentions:
            outcome.abstain_reason = counts.abstentions[-1]
        outcome.compute = self._compute(counts, time.monotonic() - started)
        outcome.model = self.model
        return outcome

    async def aclose(self) -> None:
        await self._model.aclose()
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)

    @contextlib.asynccontextmanager
    async def _agent(self, workspace: Workspace, budget: Budget) -> Any:
        s = self.settings
        read_only = [workspace.environment] if workspace.environment is not None else []
        protect = s.protect_tests != "off" and bool(workspace.test_patterns)
        bash = BashTool(
            sandbox=s.sandbox,
            sandbox_read_only=readable_in_sandbox(read_only),
            sandbox_protected=sandbox_protection(workspace.test_patterns) if protect else None,
        )
        hooks = Hooks()
        hooks.add("PreToolUse", confined_to(workspace.path), tool=editor.NAME)
        system = "\n\n".join(
            p for p in (self.system_prompt, prompt_addition(s.prompt_variant)) if p
        )
        config = AgentConfig(
            model=self.model,
            system_prompt=system,
            cwd=workspace.path,
            hooks=hooks,
            load_instructions=False,  # the package's own AGENTS.md is no part of the task
            tools=[bash, TextEditorTool(), ReportImpossibleTool()],
            # Bash is sandboxed; editor writes are allowed inside the workspace only, and not
            # to the tests when they are protected (nobody can answer "ask" here: refused).
            permissions=Permissions.from_lists(
                allow=["Bash"],
                deny=protection_rules(workspace.test_patterns) if protect else [],
                mode="acceptEdits",
                cwd=workspace.path,
            ),
            budget=budget,
            max_tokens=s.max_tokens,
            prices=s.prices,
            sessions_dir=s.trajectories or self._scratch_dir(),
            checkpoints=False,
        )
        async with Agent(self._model, config) as agent:
            yield agent

    def _compute(self, counts: _Counts, wall_seconds: float) -> Compute:
        result = counts.result
        usage = result.usage if result is not None else counts.usage
        cost: float | None = None
        if price_of(self.model, self.settings.prices) is not None and result is not None:
            cost = result.cost_usd
        return Compute(
            input_tokens=usage.input_tokens,
            cache_read_tokens=usage.cache_read_input_tokens,
            cache_write_tokens=usage.cache_creation_input_tokens,
            output_tokens=usage.output_tokens,
            thinking_tokens=counts.thinking_deltas,
            model_calls=counts.model_calls,
            tool_calls=counts.tool_calls,
            wall_seconds=wall_seconds,
            cost_usd=cost,
            flops=flops_estimate(
                self.parameters,
                usage.input_tokens + usage.cache_creation_input_tokens + usage.output_tokens,
            ),
        )

    def _scratch_dir(self) -> Path:
        if self._scratch is None:
            self._scratch = Path(tempfile.mkdtemp(prefix="tercet-eval-sessions-"))
        return self._scratch


def confined_to(root: Path) -> Callable[[PreToolUseInput], PreToolUseOutput | None]:
    """A PreToolUse hook for the text editor that blocks paths outside `root` (symlinks
    followed): the run directory beside the workspace holds the tasks' gold patches, and the
    editor, unlike sandboxed bash, runs on the host."""
    root = root.resolve()

    def hook(call: PreToolUseInput) -> PreToolUseOutput | None:
        raw = call.tool_input.get("path")
        if not isinstance(raw, str) or not raw:
            return None  # the editor itself says what is wrong
        target = resolve_path(root, raw).resolve()
        if target == root or target.is_relative_to(root):
            return None
        return PreToolUseOutput(block=f"{raw} is outside the workspace {root}; work inside it")

    return hook


class _Counts:
    """What a run's events add up to."""

    def __init__(self) -> None:
        self.model_calls = 0
        self.tool_calls = 0
        self.thinking_deltas = 0
        self.usage = Usage()
        self.result: Result | None = None
        self.abstentions: list[str] = []  # reasons given to report_impossible, in order
        self._calls: dict[str, dict[str, Any]] = {}

    def add(self, event: object) -> None:
        if isinstance(event, ToolCall):
            self._calls[event.tool_use_id] = {"name": event.name, **event.input}
        elif isinstance(event, ToolFinished) and event.name == REPORT_IMPOSSIBLE:
            call = self._calls.get(event.tool_use_id, {})
            if not event.is_error and isinstance(call.get("reason"), str):
                self.abstentions.append(call["reason"].strip())
        if isinstance(event, RequestSent):
            self.model_calls += 1
        elif isinstance(event, ToolFinished):
            self.tool_calls += 1
        elif isinstance(event, ThinkingDelta):
            self.thinking_deltas += 1
        elif isinstance(event, AssistantMessage | Compacted):
            self.usage = self.usage + event.usage
        elif isinstance(event, Result):
            self.result = event


def flops_estimate(parameters: int | None, tokens: int) -> float | None:
    """2 x parameters x tokens (the forward pass's multiply-adds, attention left out); None
    when the model's size is unknown."""
    if parameters is None:
        return None
    return 2.0 * parameters * tokens


_SIZE_LABEL = re.compile(r"^(\d+(?:\.\d+)?)([KMBT])$", re.IGNORECASE)
_SCALE = {"K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}


def gguf_parameters(path: Path) -> int | None:
    """The parameter count of a GGUF model, from its tensors' shapes as llama.cpp reads them
    without loading the weights (the engine reads its metadata the same way), else from its
    `general.size_label` ("135M"); None when neither says."""
    try:
        import llama_cpp

        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        model = llama_cpp._internals.LlamaModel(path_model=str(path), params=params, verbose=False)
        try:
            count = int(model.n_params())
            metadata = dict(model.metadata())
        finally:
            model.close()  # type: ignore[no-untyped-call]
    except Exception:
        log.debug("cannot read %s's parameter count", path, exc_info=True)
        return None
    if count > 0:
        return count
    match = _SIZE_LABEL.match(metadata.get("general.size_label", "").strip())
    if match:
        return int(float(match.group(1)) * _SCALE[match.group(2).upper()])
    return None


def readable_in_sandbox(environments: Sequence[Path]) -> list[Path]:
    """The paths a sandboxed command needs to use `environments` (virtual environments): each,
    and the Python it was made from where that is outside the system paths."""
    readable: list[Path] = []
    for path in environments:
        readable.append(path)
        base = runner._base_prefix(path)
        if base is not None and not any(base.is_relative_to(p) for p in runner.SYSTEM_PATHS):
            readable.append(base)
    return readable


def tercet(settings: AgentSettings) -> TercetAgent:
    """The factory: the embedded model in-process, or `settings.base_url`'s."""
    if settings.base_url:
        name = settings.model or AgentConfig.model
        extra = {"temperature": settings.temperature} if settings.temperature is not None else {}
        model: Model = AnthropicModel(
            base_url=settings.base_url, api_key=settings.api_key or "none", extra_body=extra
        )
        return TercetAgent(model, name, settings, parameters=settings.parameters)
    return _embedded(settings)


def _embedded(settings: AgentSettings) -> TercetAgent:
    from tercet.agent import InProcessModel
    from tercet.cache.config import MIB, CacheConfig
    from tercet.cache.store import PromptCache
    from tercet.engine.bundled import (
        BUNDLED_MODEL_ID,
        BUNDLED_REPETITION,
        BUNDLED_TEMPERATURE,
        BUNDLED_TOP_P,
        bundled_model_path,
    )
    from tercet.engine.llama import DEFAULT_CONTEXT_WINDOW, LlamaCppEngine
    from tercet.server.config import ServerConfig

    bundled = settings.gguf is None
    path = settings.gguf or bundled_model_path()
    data_dir = Path(tempfile.mkdtemp(prefix="tercet-eval-server-"))
    cache = PromptCache(CacheConfig(ram_bytes=1024 * MIB, disk_bytes=0), data_dir / "prompt-cache")
    temperature = settings.temperature
    engine = LlamaCppEngine(
        path,
        model_id=BUNDLED_MODEL_ID if bundled else None,
        context_window=settings.context_window or DEFAULT_CONTEXT_WINDOW,
        default_temperature=(
            temperature if temperature is not None else BUNDLED_TEMPERATURE if bundled else 1.0
        ),
        default_top_p=BUNDLED_TOP_P if bundled and temperature is None else None,
        default_repetition=BUNDLED_REPETITION if bundled else None,
        threads=settings.threads,
        cache=cache,
    )
    # Every worker waits its turn at the one engine: none is ever turned away (529).
    config = ServerConfig(api_keys=[], data_dir=data_dir, max_queue=1024)
    model = InProcessModel(engine, config=config)
    parameters = settings.parameters or gguf_parameters(path)
    # The local model has no price unless one is given for its name.
    agent = TercetAgent(model, settings.model or engine.spec.id, settings, parameters=parameters)
    agent._scratch = data_dir
    return agent
