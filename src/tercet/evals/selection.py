"""Best of k in the harness: once every attempt at a task has finished, choose one as an agent
could, without the hidden tests.

The choice is `tercet.attempts.select.choose`, the one `tercet code --attempts` makes. Its
regression check is the task's PASS_TO_PASS tests, which the grader has already run on every
patch (`Grade.pass_to_pass`); they all pass on the buggy tree by construction, so that is the
baseline. The choice never reads FAIL_TO_PASS outcomes or whether an attempt resolved: only
what an agent could see for itself (its own failure, an empty diff, a diff that does not
apply, the regression tests). Each choice is one `TaskSelection` line of `selections.jsonl`;
the report joins it with the graded results for selected@k.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import threading
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from tercet.agent.events import Usage
from tercet.agent.model import Model
from tercet.attempts.scorer import Scorer, ScorerPrompt
from tercet.attempts.select import (
    Candidate,
    CandidateStatus,
    CheckResult,
    Method,
    ScoreFn,
    choose,
    filter_candidates,
)
from tercet.evals.task import (
    AttemptResult,
    EvalInputError,
    Task,
    read_appended,
    write_jsonl,
)

log = logging.getLogger("tercet.evals")

SELECTIONS_FILE = "selections.jsonl"
# The name a candidate's check goes by: the grader's run of the task's PASS_TO_PASS tests.
CHECK = "PASS_TO_PASS"


class TokenUsage(BaseModel):
    """Tokens a scorer used, as the Messages API counts them."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0

    @property
    def total(self) -> int:
        return (
            self.input_tokens
            + self.output_tokens
            + self.cache_creation_input_tokens
            + self.cache_read_input_tokens
        )

    @classmethod
    def of(cls, usage: Usage) -> TokenUsage:
        return cls(
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_creation_input_tokens=usage.cache_creation_input_tokens,
            cache_read_input_tokens=usage.cache_read_input_tokens,
        )


class CandidateRecord(BaseModel):
    """One attempt as the selection saw it."""

    attempt: int
    status: CandidateStatus  # "candidate": it stayed in the running
    reason: str | None = None  # why it was dropped
    passing: int | None = None  # PASS_TO_PASS tests passing; None where none were run
    regressions: list[str] = Field(default_factory=list)


class TaskSelection(BaseModel):
    """The choice among a task's k finished attempts: a line of selections.jsonl."""

    instance_id: str
    attempts: int  # finished attempts considered (k)
    chosen: int | None  # the chosen attempt's number; None when no attempt was usable
    method: Method
    reason: str
    candidates: list[CandidateRecord]
    scorer: str | None = None  # the scorer model's name, when one was given
    scorer_usage: TokenUsage = Field(default_factory=TokenUsage)
    scorer_error: str | None = None
    # A digest of the results considered: a redone or added attempt makes the selection stale.
    basis: str
    selected_at: str


# ---------------------------------------------------------------------------- choosing


def results_basis(results: Iterable[AttemptResult]) -> str:
    """A digest of the results a selection considers, in attempt order."""
    digest = hashlib.sha256()
    for result in sorted(results, key=lambda r: r.attempt):
        digest.update(result.model_dump_json().encode() + b"\n")
    return "sha256:" + digest.hexdigest()[:16]


def baseline(task: Task) -> CheckResult:
    """The check on the buggy tree: every PASS_TO_PASS test passes there (that is what makes
    it one)."""
    return CheckResult(command=CHECK, outcomes=dict.fromkeys(task.PASS_TO_PASS, "passed"))


def candidate_of(result: AttemptResult) -> Candidate:
    """An attempt as a candidate, from what an agent could know of it: its own failure, an
    empty diff, a diff that does not apply, the PASS_TO_PASS outcomes. (FAIL_TO_PASS and the
    resolved status are never read.)"""
    candidate = Candidate(index=result.attempt, diff=result.model_patch)
    grade = result.grade
    if result.stop_reason == "error":
        candidate.drop("failed", f"the agent failed: {result.agent_error or 'no reason given'}")
    elif grade.status == "ERROR":
        candidate.drop("failed", f"the harness failed: {grade.error or 'no reason given'}")
    elif grade.status == "EMPTY_PATCH" or not result.model_patch.strip():
        candidate.drop("empty", "the attempt changed nothing")
    elif grade.status == "PATCH_FAILED":
        candidate.drop("patch_failed", f"the diff does not apply: {grade.error or ''}".strip())
    else:
        candidate.check = CheckResult(command=CHECK, outcomes=dict(grade.pass_to_pass))
    return candidate


async def select_task(
    task: Task,
    results: Sequence[AttemptResult],
    scorer: ScoreFn | None = None,
    scorer_name: str | None = None,
) -> TaskSelection:
    """Choose among `results` (one task's finished attempts) as the module says."""
    candidates = [candidate_of(r) for r in sorted(results, key=lambda r: r.attempt)]
    filter_candidates(candidates, baseline(task))
    selection = await choose(task.problem_statement, candidates, scorer)
    return TaskSelection(
        instance_id=task.instance_id,
        attempts=len(results),
        chosen=selection.chosen,
        method=selection.method,
        reason=selection.reason,
        candidates=[
            CandidateRecord(
                attempt=c.index,
                status=c.status,
                reason=c.reason,
                passing=len(c.check.passing) if c.check is not None else None,
                regressions=c.regressions,
            )
            for c in candidates
        ],
        scorer=scorer_name if scorer is not None else None,
        scorer_usage=TokenUsage.of(selection.scorer_usage),
        scorer_error=selection.scorer_error,
        basis=results_basis(results),
        selected_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def attempts_per_task(recorded: object, results: Iterable[AttemptResult]) -> int:
    """k: the run's --attempts (as run.json records it), or more where the results hold more
    (a run resumed with fewer attempts keeps the ones it had)."""
    most = max((r.attempt + 1 for r in results), default=1)
    return max(recorded, most) if isinstance(recorded, int) and recorded >= 1 else most


def complete_sets(results: Iterable[AttemptResult], k: int) -> dict[str, list[AttemptResult]]:
    """Each instance's attempts 0..k-1, for the instances that have every one of them (the
    last result of each attempt: a redone attempt counts once)."""
    by_task: dict[str, dict[int, AttemptResult]] = defaultdict(dict)
    for result in results:
        by_task[result.instance_id][result.attempt] = result
    return {
        instance: [attempts[n] for n in range(k)]
        for instance, attempts in by_task.items()
        if all(n in attempts for n in range(k))
    }


# ---------------------------------------------------------------------------- the file


class SelectionsFile:
    """selections.jsonl: one `TaskSelection` a line, appended (flushed and fsynced) as tasks
    complete; the last line of an instance is its selection."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def load(self) -> dict[str, TaskSelection]:
        """The latest selection of each instance. A last line cut short by a kill is ignored;
        any other bad line is an `EvalInputError`."""
        return {
            selection.instance_id: selection
            for selection in read_appended(self.path, TaskSelection)
        }

    def append(self, selection: TaskSelection) -> None:
        line = (selection.model_dump_json() + "\n").encode()
        with self._lock, self.path.open("ab") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())

    def rewrite(self, selections: Iterable[TaskSelection]) -> None:
        """Replace the file whole (one line a task)."""
        write_jsonl(self.path, selections)


def current(
    selection: TaskSelection | None, results: Sequence[AttemptResult]
) -> TaskSelection | None:
    """`selection` if it was made from exactly `results`, else None (it is stale)."""
    if selection is None or selection.basis != results_basis(results):
        return None
    return selection


# ---------------------------------------------------------------------------- the scorer


@dataclass(frozen=True)
class ScorerSettings:
    """The scorer of `--scorer`: a Messages API model that picks among candidates the check
    leaves tied. `client` is the model to ask (tests give a scripted one); None: an
    `AnthropicModel` at `base_url`."""

    model: str  # the name requests carry
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    prompt: Path | None = None  # a prompt file of scorer.toml's shape; None: scorer.toml
    client: Model | None = field(default=None, compare=False)

    def check(self) -> ScorerPrompt | None:
        """The prompt file, loaded (None: the default); `EvalInputError` if the settings cannot
        work, before any agent runs."""
        if self.client is None and not self.base_url:
            raise EvalInputError(
                "--scorer needs a Messages API server: give --scorer-base-url (or --base-url)"
            )
        if self.prompt is None:
            return None
        try:
            return ScorerPrompt.load(self.prompt)
        except ValueError as exc:
            raise EvalInputError(str(exc)) from None

    def create(self) -> Scorer:
        """The scorer (its model is the caller's to close)."""
        from tercet.agent.model import AnthropicModel

        prompt = self.check()
        model = self.client or AnthropicModel(base_url=self.base_url, api_key=self.api_key)
        return Scorer(model, self.model, prompt=prompt)

    def record(self) -> dict[str, Any]:
        """What run.json says of it (never the key)."""
        return {
            "model": self.model,
            "base_url": self.base_url,
            "prompt": str(self.prompt) if self.prompt else None,
        }


# ---------------------------------------------------------------------------- selecting


class Selector:
    """Records a selection for each task once all k of its attempts have finished: as results
    come in during a run (`add`), and for whatever is left (`catch_up`). A task's selection is
    made again when its results change (an attempt redone or added on resume)."""

    def __init__(
        self,
        run_dir: Path,
        tasks: Mapping[str, Task],
        attempts: int,
        results: Iterable[AttemptResult] = (),
        scorer: Scorer | None = None,
    ) -> None:
        self.file = SelectionsFile(run_dir / SELECTIONS_FILE)
        self.tasks = dict(tasks)
        self.attempts = attempts
        self.scorer = scorer
        self.selections = self.file.load()
        self._results: dict[str, dict[int, AttemptResult]] = defaultdict(dict)
        for result in results:
            self._results[result.instance_id][result.attempt] = result
        self._busy: set[str] = set()  # tasks being selected for right now

    async def add(self, result: AttemptResult) -> TaskSelection | None:
        """Take in a finished attempt; its task's selection, if that made one."""
        self._results[result.instance_id][result.attempt] = result
        return await self._select(result.instance_id)

    async def catch_up(self, *, again: bool = False) -> list[TaskSelection]:
        """Select for every complete task without a current selection (with `again`: for
        every complete task); the selections made."""
        made = []
        for instance in sorted(self._results):
            selection = await self._select(instance, again=again)
            if selection is not None:
                made.append(selection)
        return made

    async def _select(self, instance: str, *, again: bool = False) -> TaskSelection | None:
        task = self.tasks.get(instance)
        finished = self._results[instance]
        if (
            task is None
            or self.attempts < 2
            or any(n not in finished for n in range(self.attempts))
        ):
            return None
        results = [finished[n] for n in range(self.attempts)]
        if not again and current(self.selections.get(instance), results) is not None:
            return None
        if instance in self._busy:  # the other call sees these results too, or newer ones
            return None
        self._busy.add(instance)
        try:
            scorer = self.scorer
            selection = await select_task(
                task,
                results,
                scorer.choose if scorer else None,
                scorer.model_name if scorer else None,
            )
        finally:
            self._busy.discard(instance)
        if selection.basis != results_basis([finished[n] for n in range(self.attempts)]):
            return await self._select(instance, again=again)  # redone meanwhile: again
        self.selections[instance] = selection
        await asyncio.to_thread(self.file.append, selection)
        return selection
