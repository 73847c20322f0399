"""Estimators for several attempts at one task: pass@k, pass^k, and an interval for a mean.

With n attempts of which c succeed, the chance that at least one of k drawn without
replacement succeeds is 1 - C(n-c, k)/C(n, k) (the unbiased estimator of Chen et al. 2021,
"Evaluating Large Language Models Trained on Code"); the chance that all k succeed is
C(c, k)/C(n, k). Averaged over tasks, neither is a count of successes, so its interval is
a percentile bootstrap over tasks (seeded: the same results always print the same range).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from math import comb


def pass_at_k(n: int, c: int, k: int) -> float:
    """The probability that at least one of k attempts drawn from n (c of them successes)
    succeeds."""
    _check(n, c, k)
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def pass_hat_k(n: int, c: int, k: int) -> float:
    """pass^k: the probability that all k attempts drawn from n (c successes) succeed."""
    _check(n, c, k)
    return comb(c, k) / comb(n, k)


def _check(n: int, c: int, k: int) -> None:
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")


def bootstrap_interval(
    values: Sequence[float], *, resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """A 95% percentile-bootstrap interval for the mean of `values` (one a task); (0, 1)
    when there are none."""
    if not values:
        return 0.0, 1.0
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(rng.choices(values, k=n)) / n for _ in range(resamples))
    return means[int(0.025 * resamples)], means[min(resamples - 1, int(0.975 * resamples))]


def format_mean(values: Sequence[float]) -> str:
    """ "0.42 over 30 tasks (0.30–0.55)": a mean over tasks with its bootstrap interval."""
    if not values:
        return "n/a (no tasks)"
    low, high = bootstrap_interval(values)
    mean = sum(values) / len(values)
    return f"{mean:.2f} over {len(values)} tasks ({low:.2f}–{high:.2f})"
