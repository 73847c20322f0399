"""Parallel attempts: what running them at once buys, and what Ray costs per attempt.

A small real project (a bug, a test suite that takes about a second) and a scripted agent
that works as a model would: reads the file, runs the tests (bash in the sandbox), edits, runs
them again, answers. Side by side in one run:

  k attempts, k workers      best of k through `tercet.attempts.best_of_n` (worktrees, the
                             attempts at once, the regression check in the sandbox, choice)
  k attempts, one by one     the same with one worker
  local attempt              one attempt (unpack, agent, diff) in a thread of this process
  Ray attempt                the same function as a task on a local Ray instance

Prints the medians, the speed-up of the parallel run over the sequential one, and Ray's cost
per attempt over the local pool (Ray's start and each worker's first import are left out:
one warm-up call per worker first).

    .venv/bin/python bench/attempts.py [--attempts 4] [--rounds 3]
    .venv/bin/python bench/attempts.py --quick     # 2 attempts, 1 round
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tercet.agent import (
    Agent,
    AgentConfig,
    BashTool,
    Permissions,
    ScriptedModel,
    TextEditorTool,
    tool_use,
    turn,
)
from tercet.attempts import AttemptRun, BestOfNOptions, best_of_n
from tercet.attempts.workspaces import collect_diff, pack_tree, unpack_tree

EDITOR = "str_replace_based_edit_tool"
CALC = "def add(a, b):\n    return a - b\n"
# A suite with some real work in it: about a second of pytest.
TESTS = (
    "import pytest\nfrom calc import add\n\n\n"
    "@pytest.mark.parametrize('n', range(40))\n"
    "def test_sum(n):\n    assert sum(i * i for i in range(20000)) > 0\n    assert add(n, 1) == n + 1\n"
)
RUN_TESTS = ".venv/bin/python -m pytest -q -x -p no:cacheprovider"


def make_project(root: Path) -> Path:
    project = root / "project"
    (project / "tests").mkdir(parents=True)
    (project / "calc.py").write_text(CALC)
    (project / "tests" / "test_calc.py").write_text(TESTS)
    (project / "pyproject.toml").write_text('[tool.pytest.ini_options]\npythonpath = ["."]\n')
    (project / ".gitignore").write_text(".venv\n__pycache__/\n")
    os.symlink(sys.prefix, project / ".venv")
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "a bug"]):
        subprocess.run(["git", "-c", "user.name=b", "-c", "user.email=b@b", *args],
                       cwd=project, env=env, check=True)  # fmt: skip
    return project


def script() -> list[Any]:
    fix = {"command": "str_replace", "path": "calc.py", "old_str": "return a - b",
           "new_str": "return a + b"}  # fmt: skip
    return [
        turn(tool_use(EDITOR, {"command": "view", "path": "calc.py"})),
        turn(tool_use("bash", {"command": RUN_TESTS})),
        turn(tool_use(EDITOR, fix)),
        turn(tool_use("bash", {"command": RUN_TESTS})),
        turn("Fixed add."),
    ]


async def run_agent(copy: Path, sessions: Path) -> AttemptRun:
    config = AgentConfig(
        cwd=copy,
        tools=[BashTool(sandbox=True), TextEditorTool()],
        permissions=Permissions(mode="bypassPermissions", cwd=copy),
        sessions_dir=sessions,
        load_instructions=False,
    )
    async with Agent(ScriptedModel(script()), config) as agent:
        result = [event async for event in agent.run("Fix add.")][-1]
    return AttemptRun(result.reason, result.usage, result.cost_usd, result.session_id)


def attempt_in(archive: bytes) -> str:
    """One whole attempt from a packed copy: unpacked, the agent run, the diff read. The same
    function runs in a local thread and as a Ray task (this module is sent by value)."""
    with tempfile.TemporaryDirectory(prefix="tercet-bench-") as scratch:
        workspace = unpack_tree(archive, Path(scratch) / "project")
        asyncio.run(run_agent(workspace.path, Path(scratch) / "sessions"))
        return collect_diff(workspace)


async def best_of(project: Path, root: Path, attempts: int, workers: int) -> float:
    keep = Path(tempfile.mkdtemp(dir=root))
    started = time.perf_counter()
    result = await best_of_n(
        project,
        "Fix add.",
        lambda index, copy: run_agent(copy, keep / "sessions"),
        BestOfNOptions(attempts=attempts, keep_dir=keep / "kept", workers=workers),
    )
    took = time.perf_counter() - started
    assert result.selection.chosen is not None, result.to_dict()
    return took


def measure(label: str, values: list[float]) -> float:
    median = statistics.median(values)
    print(f"  {label:<26} {median * 1000:9.0f} ms (median of {len(values)})")
    return median


async def main_async(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="tercet-bench-attempts-") as scratch:
        root = Path(scratch)
        project = make_project(root)
        k = args.attempts
        await best_of(project, root, 1, 1)  # warm: imports, the sandbox's first start
        parallel, sequential = [], []
        for _ in range(args.rounds):
            parallel.append(await best_of(project, root, k, k))
            sequential.append(await best_of(project, root, k, 1))
        print(f"best of {k} on {os.cpu_count()} CPUs:")
        at_once = measure(f"{k} attempts, {k} workers", parallel)
        one_by_one = measure(f"{k} attempts, one by one", sequential)
        print(f"speed-up of {k} workers over one: {one_by_one / at_once:.2f}x")

        archive = pack_tree(project)
        print("one attempt, local pool against Ray:")
        # A private instance on loopback only (Ray otherwise listens on the machine's outward
        # address), sending no usage statistics, its auth token kept out of ~/.ray.
        os.environ.update(
            RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
            RAY_USAGE_STATS_ENABLED="0",
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN=secrets.token_hex(16),
        )
        try:
            import ray
            from ray import cloudpickle

            from tercet.attempts.ray_pool import RayPool
        except ImportError:
            print("ray: unavailable here: Ray is not installed (pip install 'tercet[ray]')")
            return 0
        cloudpickle.register_pickle_by_value(sys.modules[__name__])
        temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # Ray's socket paths must be short
        pool = RayPool("local", init_options={"num_cpus": os.cpu_count() or 1,
                                              "include_dashboard": False, "_temp_dir": temp})  # fmt: skip
        try:
            await asyncio.to_thread(pool.connect)
            await pool.call(attempt_in, archive)  # warm: the worker's first imports
            local, remote = [], []
            for _ in range(args.rounds * k):
                local.append(await timed(lambda: asyncio.to_thread(attempt_in, archive)))
                remote.append(await timed(lambda: pool.call(attempt_in, archive)))
            nodes = {node["NodeManagerAddress"] for node in ray.nodes()}
        finally:
            pool.close()
            shutil.rmtree(temp, ignore_errors=True)
        print(f"  (Ray's node on {', '.join(sorted(nodes))})")
        local_median = measure("local (a thread)", local)
        ray_median = measure("Ray task", remote)
        overhead_ms = (ray_median - local_median) * 1000
        print(f"Ray per attempt: {ray_median / local_median:.2f}x local ({overhead_ms:+.0f} ms)")
    return 0


async def timed(work: Callable[[], Any]) -> float:
    started = time.perf_counter()
    await work()
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--attempts", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="2 attempts, 1 round")
    args = parser.parse_args()
    if args.quick:
        args.attempts, args.rounds = 2, 1
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
