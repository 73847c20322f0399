"""Eval attempts as Ray tasks on a real local Ray instance: the oracle and noop attempts grade
as they do in this process, and an attempt whose worker dies is an ERROR result handed to the
caller, then tried again (or, with no retries left, the result)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tercet.attempts.ray_pool import RayPool
from tercet.evals.agents import (
    AgentOutcome,
    AgentSettings,
    Budget,
    TaskView,
    UnknownAgent,
    Workspace,
    create_agent,
)
from tercet.evals.distributed import STOP_WORKER_LOST, ray_attempt, remote_attempt_payload
from tercet.evals.packages import PackageSpec, load_specs
from tercet.evals.run import Dataset, RunDirectory, Runner, RunOptions
from tercet.evals.task import AttemptResult, EvalInputError, Task
from tercet.evals.workspace import source_tree
from tests.attempts.test_ray_pool import local_pool
from tests.evals.test_run import SPECS, xmltodict_tasks

REPO = Path(__file__).resolve().parents[2]
# Found by import path on the worker: Ray puts the driver's directory (here, the repository)
# on the workers' sys.path.
DYING_AGENT = f"{__name__}:dying_agent"
OPTIONS = RunOptions(split="all")


class DyingAgent:
    """Kills its own Ray worker the first time (until its marker file exists), then changes
    nothing."""

    name = "dying"
    model = ""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    async def solve(self, task: TaskView, workspace: Workspace, budget: Budget) -> AgentOutcome:
        if not self.marker.exists():
            self.marker.write_text(str(os.getpid()))
            os._exit(1)
        return AgentOutcome("end_turn")

    async def aclose(self) -> None:
        pass


def dying_agent(settings: AgentSettings) -> DyingAgent:
    return DyingAgent(Path(settings.options["marker"]))


@pytest.fixture(scope="module")
def pool() -> Iterator[RayPool]:
    with local_pool(cwd=REPO, max_retries=1) as started:
        yield started


@pytest.fixture(scope="module")
def spec() -> PackageSpec:
    return load_specs(SPECS)["xmltodict"]


@pytest.fixture(scope="module")
def tasks(spec: PackageSpec, eval_cache: Path) -> list[Task]:
    return xmltodict_tasks(source_tree(spec, eval_cache), spec)


def _on_worker(
    pool: RayPool,
    task: Task,
    spec: PackageSpec,
    agent: str,
    cache: Path,
    settings: AgentSettings | None = None,
    on_lost: list[AttemptResult] | None = None,
) -> AttemptResult:
    return asyncio.run(
        ray_attempt(
            pool,
            task,
            0,
            specs={spec.name: spec},
            agent_name=agent,
            settings=settings or AgentSettings(),
            options=OPTIONS,
            cache=cache,
            on_lost=None if on_lost is None else on_lost.append,
        )
    )


def test_oracle_and_noop_grade_the_same_through_ray_as_here(
    pool: RayPool, spec: PackageSpec, tasks: list[Task], eval_cache: Path, tmp_path: Path
) -> None:
    oracle_task, noop_task = tasks[0], tasks[1]
    dataset = Dataset("hand-written", "1", tmp_path / "tasks.jsonl", tasks, {spec.name: spec})
    runner = Runner(dataset, RunDirectory(tmp_path / "here"), OPTIONS, cache=eval_cache)
    gold = AgentSettings(gold_patches={oracle_task.instance_id: oracle_task.patch})

    async def here() -> list[AttemptResult]:
        oracle, noop = create_agent("oracle", gold), create_agent("noop", AgentSettings())
        return [
            await runner.agent_attempt(oracle, oracle_task, 0),
            await runner.agent_attempt(noop, noop_task, 0),
        ]

    async def on_ray() -> list[AttemptResult]:
        common = {"specs": {spec.name: spec}, "options": OPTIONS, "cache": eval_cache}
        return list(
            await asyncio.gather(
                ray_attempt(
                    pool, oracle_task, 0, agent_name="oracle", settings=AgentSettings(), **common
                ),
                ray_attempt(
                    pool, noop_task, 0, agent_name="noop", settings=AgentSettings(), **common
                ),
            )
        )

    local = asyncio.run(here())
    remote = asyncio.run(on_ray())
    assert [r.grade.status for r in local] == ["RESOLVED_FULL", "EMPTY_PATCH"], local
    for mine, theirs in zip(local, remote, strict=True):
        assert theirs.grade == mine.grade
        assert (theirs.instance_id, theirs.attempt, theirs.agent, theirs.model_patch) == (
            mine.instance_id,
            mine.attempt,
            mine.agent,
            mine.model_patch,
        )
        assert theirs.stop_reason == mine.stop_reason == "end_turn"


def test_a_lost_worker_is_an_error_result_then_the_attempt_is_tried_again(
    pool: RayPool, spec: PackageSpec, tasks: list[Task], eval_cache: Path, tmp_path: Path
) -> None:
    settings = AgentSettings(options={"marker": str(tmp_path / "died")})
    errors: list[AttemptResult] = []
    result = _on_worker(pool, tasks[0], spec, DYING_AGENT, eval_cache, settings, errors)
    [error] = errors
    assert (error.instance_id, error.attempt, error.grade.status) == (
        tasks[0].instance_id,
        0,
        "ERROR",
    )
    assert error.grade.error is not None
    assert "worker was lost (try 1 of 2)" in error.grade.error, error.grade.error
    assert "WorkerCrashedError" in error.grade.error and error.stop_reason == STOP_WORKER_LOST
    # The second try ran the attempt to its end: the agent changed nothing.
    assert (result.grade.status, result.agent, result.stop_reason) == (
        "EMPTY_PATCH",
        "dying",
        "end_turn",
    )


def test_with_no_tries_left_the_lost_attempt_is_the_error_result(
    spec: PackageSpec, tasks: list[Task], eval_cache: Path, tmp_path: Path, pool: RayPool
) -> None:
    settings = AgentSettings(options={"marker": str(tmp_path / "died")})
    errors: list[AttemptResult] = []
    once = RayPool(max_retries=0)  # the module's Ray instance, no retries
    result = _on_worker(once, tasks[0], spec, DYING_AGENT, eval_cache, settings, errors)
    assert errors == []  # nothing to retry: the caller gets the error as the result
    assert result.grade.status == "ERROR" and result.stop_reason == STOP_WORKER_LOST
    assert result.grade.error is not None and "(try 1 of 1)" in result.grade.error
    assert result.agent == DYING_AGENT  # the driver knows the agent by its entry's name


def test_only_the_oracle_is_sent_a_gold_patch_and_only_its_task_s(
    spec: PackageSpec, tasks: list[Task]
) -> None:
    everyone = AgentSettings(gold_patches={t.instance_id: t.patch for t in tasks})
    oracle = remote_attempt_payload(tasks[0], 1, spec, "oracle", everyone, OPTIONS)
    assert oracle["settings"].gold_patches == {tasks[0].instance_id: tasks[0].patch}
    assert (oracle["number"], oracle["agent"], oracle["cache"]) == (1, "oracle", None)
    assert Task.model_validate_json(oracle["task"]) == tasks[0]
    noop = remote_attempt_payload(tasks[0], 0, spec, "noop", everyone, OPTIONS, Path("/c"))
    assert noop["settings"].gold_patches == {} and noop["cache"] == "/c"


def test_an_unknown_agent_or_package_is_refused_before_anything_is_sent(
    spec: PackageSpec, tasks: list[Task]
) -> None:
    never = RayPool("127.0.0.1:1")  # nothing is sent: it never connects

    def attempt(agent: str, specs: dict[str, PackageSpec]) -> AttemptResult:
        return asyncio.run(
            ray_attempt(
                never, tasks[0], 0, specs=specs, agent_name=agent, settings=AgentSettings(),
                options=OPTIONS,
            )
        )  # fmt: skip

    with pytest.raises(UnknownAgent, match="unknown agent 'nobody'"):
        attempt("nobody", {spec.name: spec})
    with pytest.raises(EvalInputError, match="no package spec for xmltodict"):
        attempt("noop", {})
