"""The evaluation harness's cost per attempt, against running the same tests bare.

For each task of a sample, side by side in shuffled order each round:

  bare tests          the task's test files run by pytest as a plain subprocess on a tree that
                      already holds the fix (the floor: what any harness must pay)
  workspace           copy of the buggy tree, git init + commit, the harness's git directory
  agent (oracle)      `git apply` of the gold patch in the workspace
  diff                `git add` + `git diff` of the workspace
  grading             grade.grade: a pristine copy, the patch applied, test files restored,
                      the same tests in the sandbox with junit XML, parsed
  harness total       workspace + agent + diff + grading: what an attempt costs on top of
                      the agent's own time

Prints medians of each, the harness total as a multiple of the bare run (target: at most
1.3x), then the wall time of validating the whole dataset with the oracle agent through the
runner (`tercet eval run --agent oracle`: every task resolved).

    .venv/bin/python bench/eval_overhead.py [--dataset pypi-bugs-v1] [--sample 6] [--rounds 3]
    .venv/bin/python bench/eval_overhead.py --quick   # 2 tasks, 1 round, the oracle on them
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from tercet.evals.agents import AgentSettings, Budget, TaskView, Workspace
from tercet.evals.agents.reference import OracleAgent
from tercet.evals.environments import test_environment
from tercet.evals.grade import grade
from tercet.evals.packages import PackageSpec, spec_for
from tercet.evals.run import (
    Dataset,
    RunOptions,
    collect_diff,
    load_dataset,
    make_workspace,
    remove_workspace,
    run_eval,
)
from tercet.evals.sources import default_cache_dir
from tercet.evals.task import Task
from tercet.evals.testrun import files_of
from tercet.evals.workspace import apply_patch, buggy_tree, copy_tree

TARGET = 1.3
ROOT = Path(__file__).resolve().parents[1]
QUICK_PACKAGE = "xmltodict"  # 119 tests in about a second
ROWS = ("bare tests", "workspace", "agent (oracle)", "diff", "grading", "harness total")


def bare_argv(spec: PackageSpec, environment: Path, tree: Path, task: Task) -> list[str]:
    """pytest on the task's test files, as the grader selects them, without sandbox or report."""
    return [
        "env",
        *(f"{k}={v}" for k, v in spec.env.items()),
        f"PYTHONPATH={tree if spec.import_root in ('', '.') else tree / spec.import_root}",
        "PYTEST_DISABLE_PLUGIN_AUTOLOAD=1",
        "PYTHONDONTWRITEBYTECODE=1",
        str(environment / "bin" / "python"),
        "-m",
        "pytest",
        "-q",
        *(arg for plugin in spec.plugins for arg in ("-p", plugin)),
        "-p",
        "no:cacheprovider",
        *spec.pytest_args,
        *files_of([*task.FAIL_TO_PASS, *task.PASS_TO_PASS]),
    ]


def sample(dataset: Dataset, size: int, package: str | None = None) -> list[Task]:
    """`size` tasks spread over the packages (round robin, packages in name order), or of
    `package` alone."""
    by_package: dict[str, list[Task]] = defaultdict(list)
    for task in dataset.tasks:
        if package is None or task.source.name == package:
            by_package[task.source.name].append(task)
    chosen: list[Task] = []
    while len(chosen) < size and any(by_package.values()):
        for name in sorted(by_package):
            if by_package[name] and len(chosen) < size:
                chosen.append(by_package[name].pop(0))
    return chosen


def measure(task: Task, spec: PackageSpec, cache: Path, scratch: Path) -> dict[str, float]:
    """One attempt's phases, and the bare run, in a shuffled order."""
    environment = test_environment(spec, cache)
    pristine = buggy_tree(task, spec, cache)
    fixed = copy_tree(pristine, scratch / "fixed")
    apply_patch(fixed, task.patch)
    times: dict[str, float] = {}

    def bare() -> None:
        started = time.perf_counter()
        argv = bare_argv(spec, environment, fixed, task)
        done = subprocess.run(argv, cwd=fixed, capture_output=True, text=True, check=False)
        times["bare tests"] = time.perf_counter() - started
        assert done.returncode == 0, f"the bare run failed: {done.stdout[-2000:]}{done.stderr}"

    def harness() -> None:
        target = scratch / "workspace"
        started = time.perf_counter()
        made = make_workspace(pristine, target)
        times["workspace"] = time.perf_counter() - started
        started = time.perf_counter()
        outcome = asyncio.run(
            OracleAgent({task.instance_id: task.patch}).solve(
                TaskView.of(task), Workspace(target), Budget()
            )
        )
        assert outcome.error is None, outcome.error
        times["agent (oracle)"] = time.perf_counter() - started
        started = time.perf_counter()
        patch = collect_diff(made)
        times["diff"] = time.perf_counter() - started
        started = time.perf_counter()
        verdict = grade(task, patch, pristine=pristine, spec=spec, environment=environment)
        times["grading"] = time.perf_counter() - started
        assert verdict.status == "RESOLVED_FULL", (task.instance_id, verdict)
        remove_workspace(target)

    steps = [bare, harness]
    random.shuffle(steps)
    for step in steps:
        step()
    shutil.rmtree(fixed)
    times["harness total"] = sum(times[row] for row in ROWS[1:5])
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="pypi-bugs-v1")
    parser.add_argument("--sample", type=int, default=6, help="tasks timed phase by phase")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--cache",
        type=Path,
        help="default: the user's cache; with --quick the repository's .cache/evals, as the tests",
    )
    parser.add_argument("--quick", action="store_true", help="2 tasks, 1 round: the script works")
    args = parser.parse_args()
    if args.quick:
        args.sample, args.rounds = 2, 1
    if args.cache is None:
        args.cache = ROOT / ".cache" / "evals" if args.quick else default_cache_dir()
    args.cache = args.cache.resolve()
    dataset = load_dataset(args.dataset)
    # Quick: one small package, so that at most one test environment is built.
    names = {t.source.name for t in dataset.tasks}
    quick_package = QUICK_PACKAGE if QUICK_PACKAGE in names else min(names, default=None)
    tasks = sample(dataset, args.sample, quick_package if args.quick else None)
    print(
        f"dataset {dataset.name}"
        + ("" if dataset.version == dataset.name else f" (version {dataset.version})")
        + f": {len(dataset.tasks)} tasks; timing "
        f"{len(tasks)} of them x {args.rounds} rounds"
    )
    rows: dict[str, list[float]] = defaultdict(list)
    with tempfile.TemporaryDirectory(prefix="tercet-bench-") as scratch:
        for _ in range(args.rounds):
            order = list(tasks)
            random.shuffle(order)
            for task in order:
                spec = spec_for(task.source, dataset.specs)
                for row, seconds in measure(task, spec, args.cache, Path(scratch)).items():
                    rows[row].append(seconds)
    print(f"\n{'per attempt (median)':24} {'seconds':>8}")
    for row in ROWS:
        print(f"{row:24} {statistics.median(rows[row]):8.3f}")
    ratios = [
        total / bare for total, bare in zip(rows["harness total"], rows["bare tests"], strict=True)
    ]
    print(
        f"harness per attempt against the bare tests: {statistics.median(ratios):.2f}x "
        f"(target <= {TARGET}x)"
    )

    # Validating the dataset: the oracle through the runner, every task (the sample in --quick).
    chosen = tasks if args.quick else dataset.tasks
    subset = Dataset(dataset.name, dataset.version, dataset.tasks_path, chosen, dataset.specs)
    with tempfile.TemporaryDirectory(prefix="tercet-bench-run-") as run_dir:
        started = time.perf_counter()
        summary = run_eval(
            subset,
            "oracle",
            AgentSettings(),
            RunOptions(split="all", workers=args.workers, cache=args.cache),
            Path(run_dir) / "run",
            stream=None,
        )
        seconds = time.perf_counter() - started
    print(
        f"oracle validation of {len(chosen)} tasks with {args.workers} workers: {seconds:.1f} s "
        f"({seconds / len(chosen):.2f} s a task), resolved {summary.progress.resolved}/"
        f"{summary.total}"
    )
    if summary.progress.resolved != summary.total:
        sys.exit("the oracle did not resolve every task: the dataset or the harness is wrong")


if __name__ == "__main__":
    main()
