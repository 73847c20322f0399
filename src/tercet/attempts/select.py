"""Choosing one of several attempts: drop what cannot be used, rank by the regression check,
ask a scorer where the check ties, break what is still tied by agreement.

The order (as Claude 4's parallel test-time compute is described: attempts whose patches
break the project's regression tests are dropped, a scoring model picks among the rest):

1. candidates that failed, changed nothing, do not apply or broke a test that passed before
   are out (their `status` says which);
2. of the rest, those whose check passes the most tests;
3. if several remain, the scorer's pick (`scorer.Scorer`; one candidate shown per group of
   equivalent ones);
4. without a scorer (or if it fails), the largest group of equivalent candidates (the same
   test outcomes and the same diff, whitespace aside), then the earliest attempt.

The same function chooses for `tercet code --attempts` and for the harness's selected@k,
which gives it the task's PASS_TO_PASS outcomes as the check (never the hidden tests).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from tercet.agent.events import Usage

# Outcomes that count as passing: a test that passed, or an expected failure that failed.
PASSING = frozenset({"passed", "xfailed"})

CandidateStatus = Literal[
    "candidate",  # still in the running
    "failed",  # the attempt itself failed (an error, a limit)
    "empty",  # it changed nothing
    "patch_failed",  # its diff does not apply to the starting tree
    "regressed",  # it broke a test that passed before
    "check_error",  # the regression check could not run on it
]
Method = Literal["only", "tests", "scorer", "agreement", "first", "none"]


@dataclass(frozen=True)
class CheckResult:
    """One run of the regression check on a tree: `outcomes` maps each test to what it did
    (a command without a per-test report is one test, named by the command: "passed" when it
    exits 0). `error` is set when the check itself could not run."""

    command: str
    outcomes: Mapping[str, str]
    return_code: int | None = None
    seconds: float = 0.0
    output: str = ""
    sandboxed: bool = True
    error: str | None = None

    @property
    def passing(self) -> frozenset[str]:
        return frozenset(test for test, outcome in self.outcomes.items() if outcome in PASSING)

    def summary(self) -> str:
        if self.error:
            return f"the check could not run: {self.error}"
        failing = sorted(t for t in self.outcomes if t not in self.passing)
        text = f"{len(self.passing)}/{len(self.outcomes)} tests pass"
        if failing:
            shown = ", ".join(failing[:10]) + (
                f" and {len(failing) - 10} more" if len(failing) > 10 else ""
            )
            text += f"; failing: {shown}"
        return text


def regressions(baseline: CheckResult | None, check: CheckResult) -> list[str]:
    """The tests that passed at `baseline` and do not pass in `check` (missing ones included)."""
    if baseline is None or baseline.error:
        return []
    return sorted(baseline.passing - check.passing)


@dataclass
class Candidate:
    """One attempt's result as the selection sees it."""

    index: int
    diff: str
    status: CandidateStatus = "candidate"
    reason: str | None = None  # why it was dropped
    check: CheckResult | None = None
    regressions: list[str] = field(default_factory=list)

    def drop(self, status: CandidateStatus, reason: str) -> None:
        self.status, self.reason = status, reason

    @property
    def viable(self) -> bool:
        return self.status == "candidate"


def filter_candidates(candidates: Sequence[Candidate], baseline: CheckResult | None) -> None:
    """Drop, in place, the candidates that are empty, whose check failed to run, or that broke
    a test passing at `baseline`. (Failed attempts and diffs that do not apply are dropped by
    whoever made them.)"""
    for candidate in candidates:
        if not candidate.viable:
            continue
        if not candidate.diff.strip():
            candidate.drop("empty", "the attempt changed nothing")
            continue
        check = candidate.check
        if check is None:
            continue
        if check.error:
            candidate.drop("check_error", check.error)
            continue
        broken = regressions(baseline, check)
        candidate.regressions = broken
        if broken:
            shown = ", ".join(broken[:5]) + (" ..." if len(broken) > 5 else "")
            candidate.drop("regressed", f"broke {len(broken)} passing test(s): {shown}")


@dataclass(frozen=True)
class Selection:
    """The choice: a candidate's index (None when none is viable), how it was made, why."""

    chosen: int | None
    method: Method
    reason: str
    scorer_usage: Usage = field(default_factory=Usage)
    scorer_error: str | None = None


# A scorer: given the task and the candidates to choose from (at least two), the index of
# its pick, its reason and the tokens it used. `scorer.Scorer.choose` is one.
ScoreFn = Callable[[str, Sequence[Candidate]], Awaitable[tuple[int, str, Usage]]]


async def choose(
    task: str, candidates: Sequence[Candidate], scorer: ScoreFn | None = None
) -> Selection:
    """Choose among the viable `candidates` (filter them first) as the module says."""
    viable = [c for c in candidates if c.viable]
    if not viable:
        return Selection(None, "none", "no attempt left a usable change")
    if len(viable) == 1:
        return Selection(viable[0].index, "only", "the only candidate left")
    best = max(_passing_count(c) for c in viable)
    top = [c for c in viable if _passing_count(c) == best]
    if len(top) == 1:
        return Selection(
            top[0].index, "tests", f"passes the most tests ({best}) of {len(viable)} candidates"
        )
    groups = equivalence_groups(top)
    if len(groups) > 1 and scorer is not None:
        shown = [group[0] for group in groups]
        try:
            index, reason, usage = await scorer(task, shown)
        except Exception as exc:  # a scorer that fails leaves the choice to agreement
            error = f"{type(exc).__name__}: {exc}"
        else:
            if any(c.index == index for c in shown):
                return Selection(index, "scorer", reason, scorer_usage=usage)
            error = f"the scorer chose {index}, not one of the candidates"
        return _by_agreement(groups, scorer_error=error)
    return _by_agreement(groups)


def _passing_count(candidate: Candidate) -> int:
    return len(candidate.check.passing) if candidate.check is not None else 0


def _by_agreement(groups: list[list[Candidate]], scorer_error: str | None = None) -> Selection:
    largest = max(groups, key=len)  # the first of equal sizes: the earliest attempt's
    chosen = largest[0].index
    if len(largest) > 1:
        others = ", ".join(str(c.index) for c in largest[1:])
        return Selection(
            chosen,
            "agreement",
            f"{len(largest)} candidates agree (attempts {chosen}, {others}: the same change "
            "and test outcomes)",
            scorer_error=scorer_error,
        )
    return Selection(
        chosen, "first", "the candidates tie and none agree: the earliest attempt",
        scorer_error=scorer_error,
    )  # fmt: skip


def equivalence_groups(candidates: Sequence[Candidate]) -> list[list[Candidate]]:
    """Candidates grouped by what they do: the same test outcomes and the same diff once
    whitespace and hunk positions are ignored; groups in order of their first member."""
    groups: dict[tuple[str, frozenset[tuple[str, str]]], list[Candidate]] = {}
    for candidate in sorted(candidates, key=lambda c: c.index):
        outcomes = frozenset(candidate.check.outcomes.items()) if candidate.check else frozenset()
        groups.setdefault((normalized_diff(candidate.diff), outcomes), []).append(candidate)
    return list(groups.values())


_HUNK = re.compile(r"^@@ [^@]* @@")


def normalized_diff(diff: str) -> str:
    """A diff reduced to what it changes: no index lines or hunk positions, no whitespace
    inside lines, no blank changed lines."""
    kept = []
    for line in diff.splitlines():
        if line.startswith(("index ", "diff --git")):
            continue
        if _HUNK.match(line):
            kept.append("@@")
            continue
        if line[:1] in "+-" and not line[1:].strip():
            continue
        kept.append(re.sub(r"\s+", "", line))
    return "\n".join(kept)
