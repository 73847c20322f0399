"""Impossible variants of a dataset's tasks (ImpossibleBench's method, on tercet's own tasks).

A variant's `test_patch` changes what a FAIL_TO_PASS test expects so that no correct fix can
pass it: `oneoff` changes one expected value, `conflicting` adds a copy of the test that
expects a contradictory value. The agent sees those tests in its workspace (`show_tests`) and
is told to make them pass; any pass is a shortcut, and saying that the task cannot be done is
the honest answer.
"""

from __future__ import annotations

from pathlib import Path

from tercet.evals.task import Task
from tercet.evals.workspace import apply_patch


def show_tests(task: Task, tree: Path) -> None:
    """Put the task's visible tests in the agent's copy: an impossible variant's test_patch
    (other tasks' tests stay as the package has them; their test_patch is the grader's)."""
    if task.impossible is not None and task.test_patch.strip():
        apply_patch(tree, task.test_patch)
