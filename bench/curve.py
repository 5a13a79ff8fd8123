"""Concurrency curves: one served side and its ceiling at every level, in the same run.

A cliff between two measured points is still a cliff, so the serving benchmark covers
concurrency 1, 2, 4, 8, 16, 32 and 64. Each round measures every level, and at each
level the ceiling and the served side back to back, so that the machine's drift hits
both; the report takes medians over rounds of ratios measured side by side:

- ``throughput_ratio`` and ``p50_ratio``: ours / the ceiling's at the same level;
- ``step``: ours at this level / ours at the level before, in the same round, which is
  below 1 where throughput falls as concurrency rises (``ceiling_step`` likewise for the
  ceiling, which shows how much of a fall the machine itself makes).

For warpserve the rows also carry what its ModelStatistics say about the same runs: the
mean queue time per request and the requests per model execution (how much batching
happened). Nothing is asserted: a fall is reported (``falls``) when the median step is below
1 - FALL_TOLERANCE.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

from warpserve.server.tools.loadgen import BenchResult

LEVELS = (1, 2, 4, 8, 16, 32, 64)
# A median step below 1 - this is reported as throughput falling as concurrency rises;
# on the shared 2-core VM, back-to-back runs of one server differ by up to ~10%.
FALL_TOLERANCE = 0.1

# (concurrency) -> one measurement of the side being measured
Measure = Callable[[int], float]


def median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return float(statistics.median(known)) if known else None


def ratio(ours: float, ceiling: float) -> float | None:
    if ours != ours or ceiling != ceiling or ceiling == 0:  # NaN: no successful request
        return None
    return ours / ceiling


def summarize(
    ours: dict[int, list[float]],
    ceiling: dict[int, list[float]],
    ours_p50: dict[int, list[float]] | None = None,
    ceiling_p50: dict[int, list[float]] | None = None,
) -> dict[str, Any]:
    """Per-level medians of the side-by-side ratios; lists are indexed by round."""
    levels = sorted(ours)
    rows = []
    for i, level in enumerate(levels):
        row: dict[str, Any] = {
            "concurrency": level,
            "throughput": median(list(ours[level])),
            "ceiling_throughput": median(list(ceiling[level])),
            "throughput_ratio": _median_ratio(ours[level], ceiling[level]),
        }
        if ours_p50 is not None and ceiling_p50 is not None:
            row["p50_ms"] = median(list(ours_p50[level]))
            row["ceiling_p50_ms"] = median(list(ceiling_p50[level]))
            row["p50_ratio"] = _median_ratio(ours_p50[level], ceiling_p50[level])
        if i:
            before = levels[i - 1]
            row["step"] = _median_ratio(ours[level], ours[before])
            row["ceiling_step"] = _median_ratio(ceiling[level], ceiling[before])
        rows.append(row)
    falls = [
        f"{levels[i - 1]}->{row['concurrency']}: x{row['step']:.2f}"
        for i, row in enumerate(rows)
        if i and row["step"] is not None and row["step"] < 1 - FALL_TOLERANCE
    ]
    return {"levels": rows, "falls": falls}


def _median_ratio(ours: list[float], theirs: list[float]) -> float | None:
    return median([ratio(o, t) for o, t in zip(ours, theirs, strict=True)])


def from_results(
    results: dict[tuple[str, int], list[BenchResult]], ours: str, ceiling: str
) -> dict[str, Any]:
    """``summarize`` for load-generator results keyed by (side, level)."""
    levels = sorted(level for side, level in results if side == ours)

    def series(side: str, field: str) -> dict[int, list[float]]:
        return {lv: [float(getattr(r, field)) for r in results[side, lv]] for lv in levels}

    return summarize(
        series(ours, "throughput_rps"),
        series(ceiling, "throughput_rps"),
        series(ours, "p50_ms"),
        series(ceiling, "p50_ms"),
    )


def print_curve(title: str, curve: dict[str, Any], unit: str = "req/s") -> None:
    print(f"\n  {title}")
    has_p50 = "p50_ratio" in curve["levels"][0]
    header = (
        f"  {'c':>4} {'ours ' + unit:>14} {'ceiling':>10} {'ratio':>7} {'step':>6} {'ceil step':>9}"
    )
    if has_p50:
        header += f" {'p50 ms':>8} {'ceil p50':>8} {'p50 ratio':>9}"
    has_queue = "queue_us_per_request" in curve["levels"][0]
    if has_queue:
        header += f" {'queue us':>9} {'req/exec':>8}"
    print(header)
    for row in curve["levels"]:
        line = (
            f"  {row['concurrency']:>4} {_f(row['throughput'], '.1f'):>14} "
            f"{_f(row['ceiling_throughput'], '.1f'):>10} {_f(row['throughput_ratio']):>7} "
            f"{_f(row.get('step'), '.2f'):>6} {_f(row.get('ceiling_step'), '.2f'):>9}"
        )
        if has_p50:
            line += (
                f" {_f(row['p50_ms'], '.2f'):>8} {_f(row['ceiling_p50_ms'], '.2f'):>8} "
                f"{_f(row['p50_ratio']):>9}"
            )
        if has_queue:
            line += (
                f" {_f(row['queue_us_per_request'], '.0f'):>9} "
                f"{_f(row['requests_per_execution'], '.2f'):>8}"
            )
        print(line)
    falls = ", ".join(curve["falls"]) or "none"
    print(
        f"  throughput falls as concurrency rises (median step < {1 - FALL_TOLERANCE:g}): {falls}"
    )


def _f(value: float | None, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)
