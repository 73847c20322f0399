"""Best of N: several independent attempts at one task, each in its own copy of the project,
then the regression check and the choice (`select`), and the chosen diff applied.

    result = await best_of_n(project, task, attempter, BestOfNOptions(attempts=4, ...))
    apply_choice(result)                      # the chosen diff, onto the project

`attempter(index, copy)` runs one attempt in `copy` (an agent session with `copy` as its
working directory; `tercet code --attempts` passes one). What happens to each attempt:

1. its diff is read from its copy and kept (`keep_dir/attempt-<i>.diff`), the copy removed;
   an attempt whose agent failed (an error, not a limit) is dropped, as is an empty diff;
2. the check (`--verify CMD`, or the project's usual test command) runs once on the project
   as it was (the baseline) and once per candidate, on a fresh copy with only its diff
   applied (a diff that does not apply is dropped); a candidate that breaks a test that
   passed at the baseline is dropped;
3. `select.choose` picks among the rest (the most tests passing, then the scorer, then
   agreement).

`result.json` in `keep_dir` holds what `BestOfN.to_dict` says: every candidate (status, check,
tokens, cost), the choice and its reason.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tercet.agent.events import Usage
from tercet.attempts.select import Candidate, CheckResult, ScoreFn, Selection, choose
from tercet.attempts.select import filter_candidates as drop_regressions
from tercet.attempts.verify import TestCommand, detect_test_command, run_check, verify_command
from tercet.attempts.workspaces import (
    LINKED_DIRS,
    GitWorkspace,
    apply_patch,
    check_patch,
    collect_diff,
    project_copy,
    remove_copy,
)

# How an agent run may end without failing: an answer, or a limit (its diff may still be good).
NOT_FAILED = frozenset(
    {"end_turn", "max_turns", "max_total_tokens", "max_wall_time", "max_cost", "max_tokens"}
)


@dataclass(frozen=True)
class AttemptRun:
    """What one attempt's agent did. `diff` is set by an attempt that ran elsewhere (a Ray
    worker); otherwise the diff is read from the attempt's copy."""

    stop_reason: str
    usage: Usage = field(default_factory=Usage)
    cost_usd: float | None = None
    session_id: str | None = None
    text: str = ""
    turns: int = 0
    error: str | None = None
    diff: str | None = None

    @property
    def failed(self) -> bool:
        return self.error is not None or self.stop_reason not in NOT_FAILED


Attempter = Callable[[int, Path], Awaitable[AttemptRun]]


@dataclass(frozen=True)
class BestOfNOptions:
    attempts: int
    keep_dir: Path  # diffs, result.json and (while they run) the copies
    verify: str | None = None  # the check's command; None: the project's usual one
    check: bool = True  # False: no regression check at all
    sandbox: bool = True  # run the check in the sandbox (where it can run)
    check_timeout_s: float = 600.0
    workers: int | None = None  # attempts at once (None: all)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("--attempts must be at least 1")
        if self.workers is not None and self.workers < 1:
            raise ValueError("--workers must be at least 1")
        if self.check_timeout_s <= 0:
            raise ValueError("the check's timeout must be positive")


@dataclass
class AttemptRecord:
    run: AttemptRun
    candidate: Candidate
    diff_file: Path | None


@dataclass
class BestOfN:
    task: str
    project: Path
    keep_dir: Path
    records: list[AttemptRecord]
    check: TestCommand | None
    baseline: CheckResult | None
    selection: Selection
    applied: bool = False
    apply_error: str | None = None
    scorer_cost_usd: float | None = None  # set by whoever knows the scorer's price

    @property
    def chosen(self) -> AttemptRecord | None:
        index = self.selection.chosen
        return None if index is None else self.records[index]

    @property
    def usage(self) -> Usage:
        """Tokens of every attempt and of the scorer."""
        total = self.selection.scorer_usage
        for record in self.records:
            total += record.run.usage
        return total

    @property
    def cost_usd(self) -> float | None:
        """The attempts' cost and the scorer's, None when none is known."""
        costs = [r.run.cost_usd for r in self.records if r.run.cost_usd is not None]
        if self.scorer_cost_usd is not None:
            costs.append(self.scorer_cost_usd)
        return sum(costs) if costs else None

    def to_dict(self) -> dict[str, Any]:
        chosen = self.chosen
        return {
            "task": self.task,
            "project": str(self.project),
            "attempts": len(self.records),
            "chosen": self.selection.chosen,
            "method": self.selection.method,
            "reason": self.selection.reason,
            "scorer_error": self.selection.scorer_error,
            "applied": self.applied,
            "apply_error": self.apply_error,
            "patch": str(chosen.diff_file) if chosen and chosen.diff_file else None,
            "check": None if self.check is None else self.check.command,
            "baseline": _check_dict(self.baseline),
            "candidates": [_record_dict(r) for r in self.records],
            "scorer_usage": _usage_dict(self.selection.scorer_usage),
            "scorer_cost_usd": self.scorer_cost_usd,
            "usage": _usage_dict(self.usage),
            "cost_usd": self.cost_usd,
            "kept": str(self.keep_dir),
        }


async def best_of_n(
    project: Path,
    task: str,
    attempter: Attempter,
    options: BestOfNOptions,
    scorer: ScoreFn | None = None,
) -> BestOfN:
    """Run `options.attempts` attempts at `task` in copies of `project`, check and choose (see
    the module's docstring). The project itself is not changed (`apply_choice` does that)."""
    project = project.resolve()
    keep = options.keep_dir.resolve()
    keep.mkdir(parents=True, exist_ok=True)
    work = keep / "work"
    gate = asyncio.Semaphore(options.workers or options.attempts)
    try:
        runs = await asyncio.gather(
            *(_attempt(project, work, i, attempter, gate) for i in range(options.attempts))
        )
        records = [_record(keep, i, run, diff) for i, (run, diff) in enumerate(runs)]
        check: TestCommand | None = None
        baseline: CheckResult | None = None
        if options.check:
            check = (
                verify_command(options.verify) if options.verify else detect_test_command(project)
            )
        if check is not None:
            baseline = await _check_copy(project, work, "baseline", None, check, options, gate)
            for record in records:  # the empty ones first: no check to run for them
                if not record.candidate.diff.strip() and record.candidate.viable:
                    record.candidate.drop("empty", "the attempt changed nothing")
            await asyncio.gather(
                *(
                    _check_candidate(project, work, r.candidate, check, options, gate)
                    for r in records
                    if r.candidate.viable
                )
            )
        candidates = [r.candidate for r in records]
        drop_regressions(candidates, baseline)
        selection = await choose(task, candidates, scorer)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = BestOfN(task, project, keep, records, check, baseline, selection)
    write_result(result)
    return result


async def _attempt(
    project: Path, work: Path, index: int, attempter: Attempter, gate: asyncio.Semaphore
) -> tuple[AttemptRun, str]:
    async with gate:
        copy: GitWorkspace | None = None
        try:
            copy = await asyncio.to_thread(project_copy, project, work / f"attempt-{index}")
            try:
                run = await attempter(index, copy.path)
            except Exception as exc:
                run = AttemptRun("error", error=f"{type(exc).__name__}: {exc}")
            diff = run.diff if run.diff is not None else await asyncio.to_thread(collect_diff, copy)
            return run, diff
        except Exception as exc:  # the copy could not be made or read: the attempt failed
            return AttemptRun("error", error=f"{type(exc).__name__}: {exc}"), ""
        finally:
            if copy is not None:
                await asyncio.to_thread(remove_copy, copy)


def _record(keep: Path, index: int, run: AttemptRun, diff: str) -> AttemptRecord:
    candidate = Candidate(index, diff)
    diff_file = None
    if diff:
        diff_file = keep / f"attempt-{index}.diff"
        diff_file.write_text(diff, encoding="utf-8", errors="surrogateescape")
    if run.failed:
        why = run.error or f"the agent stopped with {run.stop_reason}"
        candidate.drop("failed", why)
    return AttemptRecord(run, candidate, diff_file)


async def _check_copy(
    project: Path,
    work: Path,
    name: str,
    patch: str | None,
    check: TestCommand,
    options: BestOfNOptions,
    gate: asyncio.Semaphore,
) -> CheckResult:
    """The check on a fresh copy of `project` with `patch` applied (None: as it is)."""
    async with gate:
        copy = await asyncio.to_thread(project_copy, project, work / f"check-{name}")
        try:
            if patch is not None:
                await asyncio.to_thread(apply_patch, copy.path, patch)
            return await run_check(
                check,
                copy.path,
                read_only=_linked(project),
                timeout_s=options.check_timeout_s,
                sandbox=options.sandbox,
            )
        finally:
            await asyncio.to_thread(remove_copy, copy)


async def _check_candidate(
    project: Path,
    work: Path,
    candidate: Candidate,
    check: TestCommand,
    options: BestOfNOptions,
    gate: asyncio.Semaphore,
) -> None:
    problem = await asyncio.to_thread(check_patch, project, candidate.diff)
    if problem is not None:
        candidate.drop("patch_failed", f"the diff does not apply: {problem}")
        return
    try:
        candidate.check = await _check_copy(
            project, work, str(candidate.index), candidate.diff, check, options, gate
        )
    except Exception as exc:
        candidate.drop("check_error", f"{type(exc).__name__}: {exc}")


def _linked(project: Path) -> list[Path]:
    """The project's environments a copy links to: readable in the sandbox."""
    return [project / name for name in LINKED_DIRS if (project / name).is_dir()]


def apply_choice(result: BestOfN) -> bool:
    """Apply the chosen diff to the project; False (with `apply_error` said) when there is no
    choice or it no longer applies (the project changed meanwhile). result.json is updated."""
    chosen = result.chosen
    if chosen is None:
        result.apply_error = "no candidate was chosen"
    else:
        try:
            apply_patch(result.project, chosen.candidate.diff)
            result.applied = True
        except RuntimeError as exc:
            result.apply_error = str(exc)
    write_result(result)
    return result.applied


def write_result(result: BestOfN) -> Path:
    path = result.keep_dir / "result.json"
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
    partial.replace(path)
    return path


def _usage_dict(usage: Usage) -> dict[str, int]:
    return {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_creation_input_tokens": usage.cache_creation_input_tokens,
        "cache_read_input_tokens": usage.cache_read_input_tokens,
    }


def _check_dict(check: CheckResult | None) -> dict[str, Any] | None:
    if check is None:
        return None
    return {
        "command": check.command,
        "passed": len(check.passing),
        "tests": len(check.outcomes),
        "failing": sorted(t for t in check.outcomes if t not in check.passing),
        "return_code": check.return_code,
        "seconds": round(check.seconds, 3),
        "sandboxed": check.sandboxed,
        "error": check.error,
    }


def _record_dict(record: AttemptRecord) -> dict[str, Any]:
    run, candidate = record.run, record.candidate
    return {
        "index": candidate.index,
        "status": candidate.status,
        "reason": candidate.reason,
        "stop_reason": run.stop_reason,
        "error": run.error,
        "session_id": run.session_id,
        "turns": run.turns,
        "usage": _usage_dict(run.usage),
        "cost_usd": run.cost_usd,
        "diff": str(record.diff_file) if record.diff_file else None,
        "diff_lines": _diff_lines(candidate.diff),
        "check": _check_dict(candidate.check),
        "regressions": candidate.regressions,
    }


def _diff_lines(diff: str) -> dict[str, int]:
    lines = diff.splitlines()
    added = sum(1 for x in lines if x.startswith("+") and not x.startswith("+++"))
    removed = sum(1 for x in lines if x.startswith("-") and not x.startswith("---"))
    return {"added": added, "removed": removed}


def summary_lines(result: BestOfN) -> Sequence[str]:
    """A few lines for a person: each candidate, then the choice."""
    lines = []
    for record in result.records:
        c = record.candidate
        checks = c.check.summary() if c.check else "not checked"
        state = c.status if c.viable else f"{c.status}: {c.reason}"
        lines.append(f"attempt {c.index}: {state} ({record.run.stop_reason}; {checks})")
    if result.selection.chosen is None:
        lines.append(f"no choice: {result.selection.reason}")
    else:
        lines.append(
            f"chosen: attempt {result.selection.chosen} ({result.selection.method}: "
            f"{result.selection.reason})"
        )
    return lines
