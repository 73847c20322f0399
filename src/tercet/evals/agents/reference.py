"""The reference agents, which check the harness rather than a model: `oracle` applies the
task's gold patch (a run of it must resolve every task), `noop` changes nothing (it must
resolve none)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from pathlib import Path

from tercet.evals.agents.base import AgentOutcome, AgentSettings, Budget, TaskView, Workspace
from tercet.evals.task import Compute


class OracleAgent:
    """Applies the gold patch with `git apply`. The only agent given the gold patches."""

    name = "oracle"
    model = ""

    def __init__(self, gold_patches: Mapping[str, str]) -> None:
        self._patches = dict(gold_patches)

    async def solve(self, task: TaskView, workspace: Workspace, budget: Budget) -> AgentOutcome:
        started = time.monotonic()
        patch = self._patches.get(task.instance_id)
        if patch is None:
            return AgentOutcome("error", error=f"no gold patch for {task.instance_id}")
        error = await apply_patch(workspace.path, patch)
        compute = Compute(wall_seconds=time.monotonic() - started)
        return AgentOutcome("error" if error else "end_turn", compute, error)

    async def aclose(self) -> None:
        pass


class NoopAgent:
    """Leaves the workspace as it is: the baseline every task must fail."""

    name = "noop"
    model = ""

    async def solve(self, task: TaskView, workspace: Workspace, budget: Budget) -> AgentOutcome:
        return AgentOutcome("end_turn")

    async def aclose(self) -> None:
        pass


async def apply_patch(tree: Path, patch: str) -> str | None:
    """Apply `patch` to the git repository at `tree`; None, or git's complaint."""
    process = await asyncio.create_subprocess_exec(
        "git", "apply", "--whitespace=nowarn", "-",
        cwd=tree,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await process.communicate(patch.encode())
    if process.returncode:
        return f"git apply failed: {output.decode(errors='replace').strip()}"
    return None


def oracle(settings: AgentSettings) -> OracleAgent:
    return OracleAgent(settings.gold_patches)


def noop(settings: AgentSettings) -> NoopAgent:
    return NoopAgent()
