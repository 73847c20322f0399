"""Parallel test-time compute: several attempts at a task, a regression check, and a choice.

`best_of_n` runs attempts in isolated copies of a project (`workspaces`), checks each
candidate against the project's tests (`verify`), and chooses (`select`, with an optional
`scorer` model); `metrics` has the estimators the evaluation harness reports (pass@k, pass^k);
`ray_pool` runs attempts on a Ray cluster. The agent's `tercet code --attempts` and the
harness's `tercet eval run --attempts` both use it.
"""

from tercet.attempts.best_of_n import (
    AttemptRun,
    BestOfN,
    BestOfNOptions,
    apply_choice,
    best_of_n,
)
from tercet.attempts.select import Candidate, CheckResult, Selection, choose, filter_candidates

__all__ = [
    "AttemptRun",
    "BestOfN",
    "BestOfNOptions",
    "Candidate",
    "CheckResult",
    "Selection",
    "apply_choice",
    "best_of_n",
    "choose",
    "filter_candidates",
]
