"""Eval attempts as Ray tasks: the runner's own `Runner.agent_attempt`, on whichever node Ray
picks (docs/ray.md).

The driver sends plain data (`remote_attempt_payload`: the task as JSON, its package spec,
the agent's name and settings, the run's options, a cache directory or None for the node's
default); the worker (`attempt_on_worker`) makes a one-task runner in a temporary run
directory, creates the agent, runs the attempt and returns the `AttemptResult` as JSON. Results
are appended on the driver, so a finished one is never lost with a node. `ray_attempt` turns a
lost worker into an ERROR result, handed to the caller before the attempt is tried again.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import inspect
import logging
import re
import tempfile
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tercet.attempts.ray_pool import RayPool, WorkerLost
from tercet.evals.agents import AgentSettings, agent_entry, create_agent
from tercet.evals.packages import PackageSpec, spec_for
from tercet.evals.task import AttemptResult, Compute, Grade, Task

if TYPE_CHECKING:  # run.py may import this module: no import of it at load time
    from tercet.evals.run import Runner, RunOptions

log = logging.getLogger("tercet.evals")

# What one attempt asks of Ray: an agent's turns are mostly waiting on the model; its tests
# and the grading run one pytest at a time.
ATTEMPT_CPUS = 1.0
STOP_WORKER_LOST = "worker_lost"

OnLostResult = Callable[[AttemptResult], Awaitable[None] | None]


def remote_attempt_payload(
    task: Task,
    number: int,
    spec: PackageSpec,
    agent_name: str,
    settings: AgentSettings,
    options: RunOptions,
    cache: Path | None = None,
) -> dict[str, Any]:
    """What a worker needs for attempt `number` at `task`. `cache` must hold on every node (a
    shared file system, or the same path everywhere); None is each node's default cache.
    An agent entitled to gold patches gets this task's only; `settings` and `options` are
    frozen dataclasses (tercet is installed on every node)."""
    gold = {task.instance_id: task.patch} if agent_entry(agent_name).sees_gold else {}
    return {
        "task": task.model_dump_json(),
        "number": number,
        "spec": spec.model_dump_json(),
        "agent": agent_name,
        "settings": replace(settings, gold_patches=gold),
        "options": options,
        "cache": None if cache is None else str(cache),
    }


def attempt_on_worker(payload: Mapping[str, Any]) -> str:
    """On a Ray worker: the attempt `payload` describes, run by `Runner.agent_attempt` in a
    temporary run directory; the `AttemptResult` as JSON."""
    from tercet.evals.run import Dataset, RunDirectory, Runner
    from tercet.evals.sources import default_cache_dir

    task = Task.model_validate_json(payload["task"])
    spec = PackageSpec.model_validate_json(payload["spec"])
    settings: AgentSettings = payload["settings"]
    options: RunOptions = payload["options"]
    cache = default_cache_dir() if payload["cache"] is None else Path(payload["cache"])
    _prepare_on_node(task, spec, cache)
    with tempfile.TemporaryDirectory(prefix="tercet-attempt-") as scratch:
        root = Path(scratch)
        if settings.trajectories is not None:
            settings = replace(settings, trajectories=_writable(settings.trajectories, root))
        dataset = Dataset("remote", "remote", root / "tasks.jsonl", [task], {spec.name: spec})
        runner = Runner(dataset, RunDirectory(root), options, cache=cache)
        result = asyncio.run(_attempt(runner, payload["agent"], settings, task, payload["number"]))
    return result.model_dump_json()


async def _attempt(
    runner: Runner, agent_name: str, settings: AgentSettings, task: Task, number: int
) -> AttemptResult:
    agent = create_agent(agent_name, settings)
    try:
        return await runner.agent_attempt(agent, task, number)
    finally:
        await agent.aclose()


def _writable(directory: Path, fallback: Path) -> Path:
    """The run's trajectory directory where this node can write it (the same path on every
    node; a shared file system gathers them), else one that goes with the attempt."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        return directory
    except OSError as exc:
        log.warning("cannot write trajectories to %s on this node (%s)", directory, exc)
        return fallback / "trajectories"


def _prepare_on_node(task: Task, spec: PackageSpec, cache: Path) -> None:
    """Build the task's test environment and buggy tree under lock files in the cache, so
    that the attempts on one node build each once (the runner's locks hold within one
    process; each Ray task is a process). A failure is left for the runner to report."""
    from tercet.evals.environments import test_environment
    from tercet.evals.workspace import buggy_tree

    try:
        locks = cache / "locks"
        locks.mkdir(parents=True, exist_ok=True)
        with _locked(locks / f"env-{spec.name}.lock"):
            test_environment(spec, cache)
        name = re.sub(r"[^A-Za-z0-9._-]", "_", task.instance_id)[:120]
        with _locked(locks / f"tree-{name}.lock"):
            buggy_tree(task, spec, cache)
    except Exception:
        log.debug("preparing %s on this node failed", task.instance_id, exc_info=True)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield  # closing the file releases the lock


def lost_result(
    task: Task,
    number: int,
    agent_name: str,
    settings: AgentSettings,
    started_at: str,
    reason: str,
    try_number: int,
    tries: int,
) -> AttemptResult:
    """The ERROR result of an attempt whose Ray worker was lost (try `try_number` of `tries`)."""
    from tercet.evals.run import now

    return AttemptResult(
        instance_id=task.instance_id,
        attempt=number,
        agent=agent_entry(agent_name).name,
        model=settings.model or "",
        model_patch="",
        grade=Grade(
            status="ERROR",
            error=f"the Ray worker was lost (try {try_number} of {tries}): {reason}",
        ),
        compute=Compute(),
        stop_reason=STOP_WORKER_LOST,
        started_at=started_at,
        ended_at=now(),
    )


async def ray_attempt(
    pool: RayPool,
    task: Task,
    number: int,
    *,
    specs: Mapping[str, PackageSpec],
    agent_name: str,
    settings: AgentSettings,
    options: RunOptions,
    cache: Path | None = None,
    on_lost: OnLostResult | None = None,
) -> AttemptResult:
    """Attempt `number` at `task` on the cluster: the worker's result. Each lost worker that
    is followed by another try is an ERROR result given to `on_lost` (for the caller to
    append); when the pool's retries are spent, the last such ERROR result is returned.
    `specs` are the dataset's; an exception raised on the worker is raised here."""
    from tercet.evals.run import now

    payload = remote_attempt_payload(
        task, number, spec_for(task.source, dict(specs)), agent_name, settings, options, cache
    )
    tries = pool.max_retries + 1
    started_at = now()
    last: AttemptResult | None = None

    async def lost(try_number: int, reason: str) -> None:
        nonlocal started_at, last
        last = lost_result(
            task, number, agent_name, settings, started_at, reason, try_number, tries
        )
        log.warning("%s #%d: %s", task.instance_id, number, last.grade.error)
        started_at = now()
        if try_number < tries and on_lost is not None:
            reported = on_lost(last)
            if inspect.isawaitable(reported):
                await reported

    try:
        value = await pool.call_with_retries(attempt_on_worker, payload, on_lost=lost)
    except WorkerLost:
        assert last is not None  # `lost` saw every loss
        return last
    return AttemptResult.model_validate_json(value)
