"""The seam between the runner and an agent scaffold: what an agent is given, what it returns.

An agent sees a `TaskView` (the bug report and the task's name, never the gold patch or the
tests that grade it), a `Workspace` (the buggy source as a git repository with one commit;
whatever the agent leaves changed there is its answer, collected by the runner with
`git diff`) and a `Budget`. It returns an `AgentOutcome`: why it stopped and what it used.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from tercet.agent.budget import PRICES, Budget, ModelPrice
from tercet.evals.task import Compute, Task

__all__ = ["AgentOutcome", "AgentSettings", "Budget", "EvalAgent", "TaskView", "Workspace"]


@dataclass(frozen=True)
class TaskView:
    """What an agent may know of a task: its name, its package and the bug report."""

    instance_id: str
    repo: str
    version: str
    problem_statement: str

    @classmethod
    def of(cls, task: Task) -> TaskView:
        return cls(task.instance_id, task.repo, task.version, task.problem_statement)


@dataclass(frozen=True)
class Workspace:
    """Where an attempt happens. `path` holds the buggy source as a git repository (one
    commit); `test_command` runs the package's test suite there (bash, from `path`), with the
    Python of the task's test `environment`, which a sandbox must let the agent read."""

    path: Path
    test_command: str | None = None
    environment: Path | None = None
    # The package's test files and test configuration, as permission patterns (relative to
    # `path`): what `protect_tests` keeps the agent from changing.
    test_patterns: tuple[str, ...] = ()


@dataclass
class AgentOutcome:
    """How an attempt's agent ended. `stop_reason` is the agent's own word (the tercet agent's
    `Result.reason`: end_turn, max_turns, ...; `error` when it failed, saying why in
    `error`). `model` is the model that answered, when the agent knows it."""

    stop_reason: str
    compute: Compute = field(default_factory=Compute)
    error: str | None = None
    model: str | None = None
    trajectory: str | None = None  # where the agent saved its steps, if it did
    final_text: str = ""  # the agent's last answer, where it has one
    abstain_reason: str | None = None  # set when it said the task cannot be done (a tool)


@dataclass(frozen=True)
class AgentSettings:
    """Everything the command line says about the agent, for the registry's factories. Each
    agent reads what it needs; `options` carries `--agent-option KEY=VALUE` pairs for agents
    plugged in from elsewhere."""

    model: str | None = None  # the name requests ask for; None: the agent's default
    base_url: str | None = None  # a Messages API server; None: the embedded model in-process
    api_key: str | None = None
    gguf: Path | None = None  # in-process: the GGUF to run (None: the bundled model)
    context_window: int | None = None  # in-process: the engine's context
    threads: int | None = None  # in-process: CPU threads for the engine
    max_tokens: int = 4096  # output tokens per model call
    temperature: float | None = None  # None: the server's default
    prices: Mapping[str, ModelPrice] = field(default_factory=lambda: dict(PRICES))
    parameters: int | None = None  # the model's size, for the FLOPs estimate, when known
    sandbox: bool = True  # run the agent's commands without network (where the agent can)
    claude_binary: Path | None = None  # the Claude Code CLI; None: found on PATH or in .cache
    trajectories: Path | None = None  # where agents that save their steps put them
    gold_patches: Mapping[str, str] = field(default_factory=dict)  # only for the oracle
    options: Mapping[str, str] = field(default_factory=dict)
    # Counter-measures to reward hacking (agent/test_protection.py): writes to the task's test
    # files refused ("deny"; "ask" is refused too, nobody being there to answer), and a
    # system-prompt variant by name.
    protect_tests: str = "off"
    prompt_variant: str = "default"


class EvalAgent(Protocol):
    """An agent scaffold the runner can drive. One instance serves every attempt of a run,
    several at once with `--workers`; `aclose` is called once at the end."""

    name: str  # the registry's name, recorded with each result
    model: str  # the model it runs, recorded with each result ("" for none)

    async def solve(self, task: TaskView, workspace: Workspace, budget: Budget) -> AgentOutcome:
        """Work on `task` in `workspace` within `budget`; the changes left there are the
        answer. Failures should come back as an outcome with `error`, not as exceptions
        (an exception is recorded the same way)."""
        ...

    async def aclose(self) -> None:
        """Release the model and anything else held for the run."""
        ...
