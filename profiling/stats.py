"""Latency and error-rate verdicts: a rank test plus minimum effect sizes.

Both the offline comparison and the live guard decide with these functions, so a
version the guard rolls back would also fail ``warpserve profile``, and the reverse.

A latency regression needs two things at once: the candidate's samples are larger
than the baseline's by the one-sided Mann-Whitney U test (at ``alpha``), and the
shift is large enough to matter (median or p99 ratio at or above its threshold).
Neither alone is enough: on thousands of samples the test finds 1 % shifts nobody
cares about, and on a few dozen one p99 outlier makes a large ratio by chance.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats as sps


class Verdict(str, enum.Enum):
    PASS = "pass"
    REGRESSION = "regression"
    IMPROVEMENT = "improvement"
    INSUFFICIENT_DATA = "insufficient_data"


def overall(verdicts: Sequence[Verdict]) -> Verdict:
    """One verdict for several comparisons (batch sizes): the worst one wins."""
    for worst in (Verdict.REGRESSION, Verdict.INSUFFICIENT_DATA, Verdict.IMPROVEMENT):
        if worst in verdicts:
            return worst
    return Verdict.PASS if verdicts else Verdict.INSUFFICIENT_DATA


@dataclass(frozen=True)
class Thresholds:
    alpha: float = 0.001  # one-sided Mann-Whitney U significance level
    max_median_ratio: float = 1.10  # candidate median / baseline median that regresses
    max_p99_ratio: float = 1.30  # candidate p99 / baseline p99 that regresses
    min_samples: int = 50  # per side, below which there is no verdict

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha {self.alpha} must lie in (0, 1)")
        for name in ("max_median_ratio", "max_p99_ratio"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 1.0):
                raise ValueError(f"{name} {value} must be a number above 1 (e.g. 1.3)")
        if self.min_samples < 2:
            raise ValueError(f"min_samples {self.min_samples} must be at least 2")


@dataclass(frozen=True)
class LatencyComparison:
    verdict: Verdict
    reason: str
    baseline_n: int
    candidate_n: int
    baseline_median: float = 0.0
    candidate_median: float = 0.0
    baseline_p99: float = 0.0
    candidate_p99: float = 0.0
    median_ratio: float = 0.0
    p99_ratio: float = 0.0
    p_slower: float = 1.0  # one-sided p-value: candidate larger
    p_faster: float = 1.0  # one-sided p-value: candidate smaller

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["verdict"] = self.verdict.value
        return data


def _ratio(candidate: float, baseline: float) -> float:
    if baseline > 0:
        return candidate / baseline
    return math.inf if candidate > 0 else 1.0


def compare_latency(
    baseline: Sequence[float] | np.ndarray,
    candidate: Sequence[float] | np.ndarray,
    thresholds: Thresholds | None = None,
) -> LatencyComparison:
    """Whether ``candidate``'s latency samples regress against ``baseline``'s."""
    t = thresholds or Thresholds()
    a = np.asarray(baseline, dtype=np.float64)
    b = np.asarray(candidate, dtype=np.float64)
    if len(a) < t.min_samples or len(b) < t.min_samples:
        return LatencyComparison(
            Verdict.INSUFFICIENT_DATA,
            f"{len(a)} baseline and {len(b)} candidate samples; each side needs at least "
            f"{t.min_samples}",
            len(a),
            len(b),
        )
    med_a, med_b = float(np.median(a)), float(np.median(b))
    p99_a, p99_b = float(np.percentile(a, 99)), float(np.percentile(b, 99))
    r50, r99 = _ratio(med_b, med_a), _ratio(p99_b, p99_a)
    p_slower = float(sps.mannwhitneyu(b, a, alternative="greater").pvalue)
    p_faster = float(sps.mannwhitneyu(b, a, alternative="less").pvalue)
    numbers = dict(
        baseline_n=len(a),
        candidate_n=len(b),
        baseline_median=med_a,
        candidate_median=med_b,
        baseline_p99=p99_a,
        candidate_p99=p99_b,
        median_ratio=r50,
        p99_ratio=r99,
        p_slower=p_slower,
        p_faster=p_faster,
    )
    slower = r50 >= t.max_median_ratio or r99 >= t.max_p99_ratio
    faster = r50 <= 1 / t.max_median_ratio or r99 <= 1 / t.max_p99_ratio
    shown = f"median x{r50:.2f}, p99 x{r99:.2f}"
    if p_slower < t.alpha and slower:
        reason = f"slower: {shown} (limits x{t.max_median_ratio}, x{t.max_p99_ratio}), "
        reason += f"Mann-Whitney p={p_slower:.2g} < {t.alpha}"
        return LatencyComparison(Verdict.REGRESSION, reason, **numbers)  # type: ignore[arg-type]
    if p_faster < t.alpha and faster:
        reason = f"faster: {shown}, Mann-Whitney p={p_faster:.2g} < {t.alpha}"
        return LatencyComparison(Verdict.IMPROVEMENT, reason, **numbers)  # type: ignore[arg-type]
    reason = f"within limits: {shown}, Mann-Whitney p={p_slower:.2g} (slower)"
    return LatencyComparison(Verdict.PASS, reason, **numbers)  # type: ignore[arg-type]


@dataclass(frozen=True)
class ErrorComparison:
    verdict: Verdict
    reason: str
    baseline_errors: int
    baseline_total: int
    candidate_errors: int
    candidate_total: int
    p_value: float = 1.0

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["verdict"] = self.verdict.value
        return data


def compare_errors(
    baseline: tuple[int, int],
    candidate: tuple[int, int],
    *,
    max_error_rate: float,
    alpha: float = 0.01,
    min_samples: int = 30,
) -> ErrorComparison:
    """Whether the candidate fails more requests than allowed and than the baseline.

    ``baseline`` and ``candidate`` are (errors, requests). A regression needs the
    candidate's rate above ``max_error_rate`` and significantly above the baseline's
    (one-sided Fisher exact test), so a baseline that failed as often is no reason.
    """
    (ea, na), (eb, nb) = baseline, candidate
    numbers = dict(baseline_errors=ea, baseline_total=na, candidate_errors=eb, candidate_total=nb)
    if na < min_samples or nb < min_samples:
        reason = f"{na} baseline and {nb} candidate requests; each side needs {min_samples}"
        return ErrorComparison(Verdict.INSUFFICIENT_DATA, reason, **numbers)
    rate_a, rate_b = ea / na, eb / nb
    table = [[eb, nb - eb], [ea, na - ea]]
    p_value = float(sps.fisher_exact(table, alternative="greater").pvalue)
    shown = f"candidate fails {rate_b:.1%} of requests, baseline {rate_a:.1%}"
    if rate_b > max_error_rate and p_value < alpha:
        reason = f"{shown} (limit {max_error_rate:.1%}), Fisher p={p_value:.2g}"
        return ErrorComparison(Verdict.REGRESSION, reason, **numbers, p_value=p_value)
    return ErrorComparison(Verdict.PASS, shown, **numbers, p_value=p_value)


def summary(samples: Sequence[float] | np.ndarray) -> dict[str, float]:
    """Count, mean and percentiles of latency samples (in their own unit)."""
    values = np.asarray(samples, dtype=np.float64)
    if not len(values):
        return {"n": 0}
    p50, p90, p99 = np.percentile(values, (50, 90, 99))
    return {
        "n": len(values),
        "mean": float(values.mean()),
        "min": float(values.min()),
        "p50": float(p50),
        "p90": float(p90),
        "p99": float(p99),
        "max": float(values.max()),
    }
