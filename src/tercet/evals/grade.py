"""Grading a patch as SWE-bench does, without Docker.

The patch is applied to a fresh copy of the task's buggy tree (`git apply`, else GNU patch
with fuzz, as SWE-bench's harness does); every test file and every file that configures
pytest is then put back as it was (and the task's `test_patch` applied), so a patch that
edits tests, conftest.py or pytest's configuration gains nothing by it; FAIL_TO_PASS and PASS_TO_PASS run in the sandbox and their outcomes are read from
junit XML. A FAIL_TO_PASS test counts when it passed or xfailed; a PASS_TO_PASS test also
when it was skipped; a test missing from the report failed. Statuses stay apart: an empty
patch, a patch that does not apply, and a harness that could not grade (ERROR, with why)
are never a failed attempt nor a silent gap.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from tercet.evals.packages import PackageSpec
from tercet.evals.task import Grade, GradeStatus, Task
from tercet.evals.testrun import files_of, run_tests
from tercet.evals.workspace import (
    PatchError,
    apply_patch,
    copy_tree,
    restore_test_files,
    touched_paths,
)

FAIL_TO_PASS_OK = frozenset({"passed", "xpassed", "xfailed"})
PASS_TO_PASS_OK = FAIL_TO_PASS_OK | {"skipped"}
MISSING = "missing"  # the outcome recorded for a test the report does not hold


def grade_outcomes(task: Task, outcomes: Mapping[str, str]) -> GradeStatus:
    """The status that tests' outcomes (node ID -> outcome) give `task`; a test missing from
    `outcomes` failed."""
    fixed = [outcomes.get(test) in FAIL_TO_PASS_OK for test in task.FAIL_TO_PASS]
    kept = all(outcomes.get(test) in PASS_TO_PASS_OK for test in task.PASS_TO_PASS)
    if kept and all(fixed):
        return "RESOLVED_FULL"
    if kept and any(fixed):
        return "RESOLVED_PARTIAL"
    return "RESOLVED_NO"


def touches_tests(patch: str, spec: PackageSpec) -> bool:
    """Whether a diff changes a test file or test configuration."""
    return any(spec.is_test_file(path) for path in touched_paths(patch))


def grade(
    task: Task,
    model_patch: str | None,
    *,
    pristine: Path,
    spec: PackageSpec,
    environment: Path,
    timeout_s: float = 600.0,
    scratch: Path | None = None,
) -> Grade:
    """Grade `model_patch` on `task`. `pristine` is the task's buggy tree (see
    `workspace.buggy_tree`; left unchanged), `environment` the package's test environment,
    `scratch` where the working copy goes (the system's temporary directory by default)."""
    if model_patch is None or not model_patch.strip():
        return Grade(status="EMPTY_PATCH")
    touched = touches_tests(model_patch, spec)
    work = Path(tempfile.mkdtemp(dir=scratch, prefix="tercet-grade-"))
    try:
        tree = copy_tree(pristine, work / "tree")
        try:
            apply_patch(tree, model_patch, fuzzy=True)
        except PatchError as exc:
            return Grade(status="PATCH_FAILED", error=str(exc), touched_tests=touched)
        restore_test_files(tree, pristine, spec)
        if task.test_patch.strip():
            try:
                apply_patch(tree, task.test_patch)
            except PatchError as exc:
                return Grade(
                    status="ERROR",
                    error=f"the task's test_patch does not apply: {exc}",
                    touched_tests=touched,
                )
        named = files_of([*task.FAIL_TO_PASS, *task.PASS_TO_PASS])
        absent = [path for path in named if not (tree / path).exists()]
        if absent:  # the tests are the task's, restored: no patch can have removed them
            return Grade(
                status="ERROR",
                error=f"the task's tests are in files the tree lacks: {', '.join(absent)}",
                touched_tests=touched,
            )
        run = run_tests(
            tree, spec, environment, [*task.FAIL_TO_PASS, *task.PASS_TO_PASS], timeout_s=timeout_s
        )
    except Exception as exc:  # the harness failed (disk, permissions, git missing)
        return Grade(status="ERROR", error=f"{type(exc).__name__}: {exc}", touched_tests=touched)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if run.error is not None:
        return Grade(status="ERROR", error=run.error, touched_tests=touched)
    return Grade(
        status=grade_outcomes(task, run.outcomes),
        fail_to_pass={test: run.outcomes.get(test, MISSING) for test in task.FAIL_TO_PASS},
        pass_to_pass={test: run.outcomes.get(test, MISSING) for test in task.PASS_TO_PASS},
        error=run.problem,  # why tests are missing (a timeout, pytest stopped), if they are
        touched_tests=touched,
    )
