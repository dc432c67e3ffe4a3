"""The benchmarks' verdicts (benchmarks/verdict.py): noise makes a figure "too noisy to judge", never MET."""

from __future__ import annotations

import random

from benchmarks.verdict import MET, NOISY, NOT_MET, judge, median_interval, overall, pairwise_ratios


def test_a_tight_figure_inside_the_target_is_met() -> None:
    v = judge("added", [4.0, 5.0, 5.5, 6.0, 4.5] * 10, 10.0, unit="ms")
    assert v.outcome == MET and v.high <= 10.0
    assert "MET" in v.line() and "<= +10.0 ms" in v.line()


def test_a_tight_figure_outside_the_target_is_not_met() -> None:
    assert judge("added", [40.0, 41.0, 39.0] * 10, 10.0, unit="ms").outcome == NOT_MET


def test_a_median_inside_with_a_wide_spread_is_too_noisy() -> None:
    rng = random.Random(3)
    noisy = [rng.uniform(-60, 70) for _ in range(30)]  # median near the target's good side, spread far wider
    v = judge("added", noisy, 10.0, unit="ms")
    assert v.outcome == NOISY and v.high - v.low > 10.0


def test_a_straddling_interval_is_too_noisy() -> None:
    assert judge("ratio", [1.05, 1.15] * 15, 1.10).outcome == NOISY


def test_higher_is_better_for_throughput() -> None:
    assert judge("speed-up", [1.3, 1.35, 1.28] * 5, 1.2, higher_is_better=True).outcome == MET
    assert judge("speed-up", [0.6, 0.62, 0.63] * 5, 1.2, higher_is_better=True).outcome == NOT_MET


def test_interval_holds_the_median_and_pairs_divide() -> None:
    mid, lo, hi = median_interval([1.0, 2.0, 3.0, 4.0, 100.0])
    assert lo <= mid == 3.0 <= hi
    assert pairwise_ratios([2.0, 4.0], [3.0, 4.0]) == [1.5, 1.0]


def test_overall() -> None:
    a, b, c = (judge("x", [1.0] * 5, t) for t in (2.0, 0.5, 1.0))
    assert overall([a]) == MET and overall([a, b]) == NOT_MET
    assert overall([a, judge("n", [0.5, 1.5] * 5, 1.0)]) == NOISY
    assert c.outcome == MET


def test_a_wide_interval_wholly_on_the_bad_side_is_not_met() -> None:
    v = judge("added", [30.0, 80.0, 50.0, 45.0, 70.0] * 6, 10.0, unit="ms")
    assert v.high - v.low > 10.0 and v.low > 10.0 and v.outcome == NOT_MET
