"""Rates with their uncertainty: Wilson score intervals, printed as "k/n (lo–hi%)".

A resolved rate from a few dozen attempts is a wide range, not a number; every rate the
harness prints carries its 95% interval and its denominator, so two runs can be compared
honestly. Wilson's interval stays inside [0, 1] and behaves at k=0 and k=n, where the normal
approximation collapses to a point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

Z95 = 1.959963984540054  # the standard normal quantile for a two-sided 95% interval


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of k successes in n trials, as fractions; (0, 1) for n = 0
    (nothing measured: anything is possible)."""
    if n < 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = k / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    # At k = 0 or k = n one end is exactly 0 or 1; rounding must not move it off.
    low = 0.0 if k == 0 else max(0.0, centre - half)
    high = 1.0 if k == n else min(1.0, centre + half)
    return low, high


@dataclass(frozen=True)
class Rate:
    """k of n, with its Wilson 95% interval."""

    k: int
    n: int

    def __post_init__(self) -> None:
        wilson_interval(self.k, self.n)  # validates

    @property
    def value(self) -> float | None:
        """k/n, or None when nothing was measured."""
        return self.k / self.n if self.n else None

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.k, self.n)

    def __str__(self) -> str:
        return format_rate(self.k, self.n)


def format_rate(k: int, n: int) -> str:
    """ "3/10 (11–60%)": the count, then the 95% interval in percent; "0/0 (n/a)" for n = 0."""
    if n == 0:
        return "0/0 (n/a)"
    low, high = wilson_interval(k, n)
    return f"{k}/{n} ({_percent(low)}–{_percent(high)}%)"


def format_percent(k: int, n: int) -> str:
    """ "30%", "n/a" for n = 0."""
    if n == 0:
        return "n/a"
    return f"{_percent(k / n)}%"


def _percent(fraction: float) -> str:
    """Whole percents, with one decimal where rounding would show 0 or 100 for what is not."""
    value = fraction * 100
    whole = f"{value:.0f}"
    if (whole == "0" and value > 0) or (whole == "100" and value < 100):
        return f"{value:.1f}"
    return whole
