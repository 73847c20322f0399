"""The estimators for several attempts a task, against values worked out by hand."""

from __future__ import annotations

import pytest

from tercet.attempts.metrics import bootstrap_interval, format_mean, pass_at_k, pass_hat_k


def test_pass_at_k_is_one_minus_the_chance_that_k_drawn_all_fail() -> None:
    # n=5, c=2, k=2: 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    # k=1 is the plain rate c/n
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)
    # n=10, c=3, k=5: 1 - C(7,5)/C(10,5) = 1 - 21/252
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - 21 / 252)


def test_pass_at_k_edge_cases() -> None:
    assert pass_at_k(5, 0, 3) == 0.0  # nothing ever succeeded
    assert pass_at_k(5, 4, 2) == 1.0  # n - c < k: every draw of 2 holds a success
    assert pass_at_k(5, 3, 3) == 1.0  # n - c = 2 < 3
    assert pass_at_k(4, 4, 4) == 1.0
    assert pass_at_k(4, 1, 4) == 1.0  # all drawn: the one success is among them
    assert pass_at_k(4, 0, 4) == 0.0


def test_pass_hat_k_is_the_chance_that_k_drawn_all_succeed() -> None:
    # n=5, c=2, k=2: C(2,2)/C(5,2) = 1/10
    assert pass_hat_k(5, 2, 2) == pytest.approx(0.1)
    assert pass_hat_k(5, 2, 1) == pytest.approx(0.4)
    # n=10, c=6, k=3: C(6,3)/C(10,3) = 20/120
    assert pass_hat_k(10, 6, 3) == pytest.approx(20 / 120)
    assert pass_hat_k(5, 2, 3) == 0.0  # fewer successes than k
    assert pass_hat_k(5, 0, 1) == 0.0
    assert pass_hat_k(5, 5, 5) == 1.0


@pytest.mark.parametrize(("n", "c", "k"), [(3, 4, 1), (3, -1, 1), (3, 1, 0), (3, 1, 4)])
def test_impossible_counts_are_refused(n: int, c: int, k: int) -> None:
    with pytest.raises(ValueError, match="need 0 <= c <= n"):
        pass_at_k(n, c, k)
    with pytest.raises(ValueError, match="need 0 <= c <= n"):
        pass_hat_k(n, c, k)


def test_the_bootstrap_interval_holds_the_mean_and_repeats() -> None:
    values = [0.0, 1.0, 0.5, 1.0, 0.0, 0.7, 0.2, 1.0]
    low, high = bootstrap_interval(values)
    mean = sum(values) / len(values)
    assert 0.0 <= low < mean < high <= 1.0
    assert bootstrap_interval(values) == (low, high)  # seeded: the same every time
    assert bootstrap_interval([0.5] * 10) == (0.5, 0.5)
    assert bootstrap_interval([]) == (0.0, 1.0)


def test_format_mean_says_the_mean_the_count_and_the_interval() -> None:
    low, high = bootstrap_interval([1.0, 0.0, 0.5, 0.5])
    assert format_mean([1.0, 0.0, 0.5, 0.5]) == f"0.50 over 4 tasks ({low:.2f}–{high:.2f})"
    assert format_mean([]) == "n/a (no tasks)"
