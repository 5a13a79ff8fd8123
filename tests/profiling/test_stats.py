"""The verdict statistics on synthetic, seeded samples: deterministic, nothing timed."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from warpserve.profiling.stats import (
    Thresholds,
    Verdict,
    compare_errors,
    compare_latency,
    overall,
)


def _latency(rng: np.random.Generator, n: int, scale: float = 1.0) -> np.ndarray:
    # Right-skewed like real latencies: a lognormal body plus rare 5x stalls.
    base = rng.lognormal(0.0, 0.35, n) * scale
    stalls = rng.random(n) < 0.01
    return np.where(stalls, base * 5, base)


def test_a_2x_slower_candidate_is_a_regression_with_its_evidence() -> None:
    rng = np.random.default_rng(0)
    result = compare_latency(_latency(rng, 200), _latency(rng, 200, 2.0))
    assert result.verdict is Verdict.REGRESSION
    assert 1.7 < result.median_ratio < 2.3
    assert result.p_slower < 1e-6
    assert "slower" in result.reason and "Mann-Whitney" in result.reason


def test_same_speed_never_regresses_over_many_seeded_trials() -> None:
    # The guard evaluates again and again as samples arrive: every evaluation of every
    # trial counts, so this is the false-rollback rate of a whole guarded rollout.
    thresholds = Thresholds(max_median_ratio=1.3, max_p99_ratio=1.3, min_samples=50)
    rollbacks = 0
    for seed in range(150):
        rng = np.random.default_rng(seed)
        baseline, candidate = _latency(rng, 400), _latency(rng, 400)
        for n in range(50, 401, 50):
            if compare_latency(baseline, candidate[:n], thresholds).verdict is Verdict.REGRESSION:
                rollbacks += 1
                break
    assert rollbacks == 0


def test_same_speed_passes_at_the_offline_defaults() -> None:
    verdicts = [
        compare_latency(_latency(rng, 100), _latency(rng, 100)).verdict
        for rng in (np.random.default_rng(seed) for seed in range(300))
    ]
    assert Verdict.REGRESSION not in verdicts
    assert verdicts.count(Verdict.PASS) >= 295


def test_a_significant_but_tiny_shift_is_not_a_regression() -> None:
    # 3 % slower on 5,000 samples: the rank test is sure, the effect is below the limit.
    rng = np.random.default_rng(1)
    result = compare_latency(_latency(rng, 5000), _latency(rng, 5000, 1.03))
    assert result.p_slower < 0.001
    assert result.verdict is Verdict.PASS


def test_too_few_samples_give_insufficient_data_not_a_verdict() -> None:
    rng = np.random.default_rng(2)
    result = compare_latency(_latency(rng, 20), _latency(rng, 200, 3.0))
    assert result.verdict is Verdict.INSUFFICIENT_DATA
    assert "at least 50" in result.reason


def test_a_faster_candidate_is_an_improvement() -> None:
    rng = np.random.default_rng(3)
    result = compare_latency(_latency(rng, 200), _latency(rng, 200, 0.5))
    assert result.verdict is Verdict.IMPROVEMENT
    assert result.median_ratio < 0.6


def test_overall_verdict_takes_the_worst() -> None:
    assert overall([Verdict.PASS, Verdict.REGRESSION, Verdict.IMPROVEMENT]) is Verdict.REGRESSION
    assert overall([Verdict.PASS, Verdict.INSUFFICIENT_DATA]) is Verdict.INSUFFICIENT_DATA
    assert overall([Verdict.PASS, Verdict.IMPROVEMENT]) is Verdict.IMPROVEMENT
    assert overall([]) is Verdict.INSUFFICIENT_DATA


@pytest.mark.parametrize(
    "kwargs",
    [
        {"alpha": 0.0},
        {"alpha": 1.5},
        {"max_median_ratio": 1.0},
        {"max_p99_ratio": 0.5},
        {"min_samples": 1},
        {"max_p99_ratio": float("nan")},
    ],
)
def test_bad_thresholds_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Thresholds(**kwargs)


def test_error_rate_regression_needs_the_limit_and_significance() -> None:
    regress = compare_errors((1, 500), (40, 500), max_error_rate=0.01)
    assert regress.verdict is Verdict.REGRESSION and "8.0%" in regress.reason
    # A baseline that fails as often is no reason to roll back.
    same = compare_errors((40, 500), (42, 500), max_error_rate=0.01)
    assert same.verdict is Verdict.PASS
    # Under the limit: passes even though it is worse.
    under = compare_errors((0, 2000), (10, 2000), max_error_rate=0.01)
    assert under.verdict is Verdict.PASS
    few = compare_errors((0, 5), (5, 5), max_error_rate=0.01)
    assert few.verdict is Verdict.INSUFFICIENT_DATA
