"""Pick the variant to serve, and the batching settings, from the measured curves."""

from __future__ import annotations

from dataclasses import dataclass

from warpserve.compile.sweep import Point
from warpserve.server.batching.batcher import INLINE_WINDOW_US
from warpserve.server.cpus import usable_cores
from warpserve.server.lifecycle.execution import (
    INLINE_BATCH_LIMIT_NS,
    INLINE_THRESHOLD_NS,
    MIN_INLINE_ROWS,
)

# A batch costing more than this is compute-bound on a CPU: a second instance lets one
# batch compute while the other's requests are decoded and answered (see the README on
# instance groups); below it the gRPC loop, not the model, is the limit.
COMPUTE_BOUND_MS = 1.0
MIN_QUEUE_DELAY_US = 100
KNEE = 0.9  # the chosen batch reaches this share of the best throughput


@dataclass(frozen=True)
class Candidate:
    variant: str
    servable: bool
    points: list[Point]


@dataclass(frozen=True)
class Choice:
    variant: str
    point: Point  # the batch size it is chosen at
    best: Point  # its highest throughput (the same point, or a larger batch)
    why: str


@dataclass(frozen=True)
class Batching:
    preferred: list[int]
    queue_delay_us: int
    instances: int
    why: str


def choose(candidates: list[Candidate], budget_ms: float | None) -> Choice | None:
    """The servable variant with the best throughput at a batch whose p99 is within budget,
    at the smallest batch size where it reaches KNEE of that throughput.

    Past the knee a curve is flat: a larger batch adds latency, and its extra throughput is
    within what the same point measures from one run to the next on a shared machine.
    """
    best: tuple[float, float, str, Point] | None = None
    for candidate in candidates:
        if not candidate.servable:
            continue
        for point in _within(candidate.points, budget_ms):
            # Higher throughput wins; at equal throughput the lower latency.
            key = (point.throughput, -point.p99_ms, candidate.variant, point)
            if best is None or key[:2] > best[:2]:
                best = key
    if best is None:
        return None
    _, _, variant, top = best
    curve = next(c.points for c in candidates if c.variant == variant)
    point = min(
        (p for p in _within(curve, budget_ms) if p.throughput >= KNEE * top.throughput),
        key=lambda p: p.batch,
    )
    within = f"within the {budget_ms:g} ms p99 budget" if budget_ms is not None else "(no budget)"
    why = (
        f"highest throughput {within}: {top.throughput:,.0f} rows/s at batch {top.batch} "
        f"(median {top.median_ms:.3f} ms, p99 {top.p99_ms:.3f} ms)"
    )
    if point is not top:
        why += (
            f"; batch {point.batch} is the smallest reaching {KNEE:.0%} of it: "
            f"{point.throughput:,.0f} rows/s (median {point.median_ms:.3f} ms, "
            f"p99 {point.p99_ms:.3f} ms)"
        )
    return Choice(variant, point, top, why)


def inline_rows(curve: list[Point]) -> int | None:
    """How a server with execution=auto runs this model, by the rule of its
    `_choose_execution`: None on worker threads (a batch-1 run not under
    INLINE_THRESHOLD_NS); 0 on its event loop (the largest batch, the sweep's last being
    max_batch_size, under INLINE_BATCH_LIMIT_NS too); else inline up to that many rows,
    the largest batch under the limit (at least MIN_INLINE_ROWS; bigger requests on a
    worker thread). Formats that never run inline are told apart by the caller."""
    single = next((p for p in curve if p.batch == 1), min(curve, key=lambda p: p.batch))
    if single.median_ms * 1e6 >= INLINE_THRESHOLD_NS:
        return None
    largest = max(curve, key=lambda p: p.batch)
    if largest.median_ms * 1e6 < INLINE_BATCH_LIMIT_NS:
        return 0
    fits = [
        p.batch
        for p in curve
        if p.median_ms * 1e6 < INLINE_BATCH_LIMIT_NS and p.batch >= MIN_INLINE_ROWS
    ]
    return max(fits) if fits else None


def runs_inline(curve: list[Point]) -> bool:
    """Whether a server with execution=auto runs this model on its event loop, for some
    or all of its batches (see `inline_rows`)."""
    return inline_rows(curve) is not None


def _within(points: list[Point], budget_ms: float | None) -> list[Point]:
    return [p for p in points if budget_ms is None or p.p99_ms <= budget_ms]


def batching(
    curve: list[Point], choice: Choice, budget_ms: float | None, inline: bool | None = None
) -> Batching:
    """Preferred sizes, queue delay and instance count from the chosen variant's curve;
    `inline` says whether the server will run it on its event loop (None: judge by the
    curve alone, as for a format that may)."""
    best = choice.best
    preferred = sorted({b for b in (choice.point.batch, best.batch) if b > 1})
    delay_us, delay_why = _queue_delay(best, curve, budget_ms, inline)
    compute_bound = best.median_ms > COMPUTE_BOUND_MS and usable_cores() >= 2
    instances = 2 if compute_bound else 1
    why = (
        f"preferred batch sizes {preferred or 'none'} (the chosen batch, and the batch of "
        f"the highest throughput); queue delay {delay_us} us ({delay_why}); "
        f"{instances} instance(s): a batch of "
        f"{best.batch} takes {best.median_ms:.3f} ms, "
        f"{'compute-bound' if compute_bound else 'overhead-bound'}"
    )
    return Batching(preferred, delay_us, instances, why)


def _queue_delay(
    best: Point, curve: list[Point], budget_ms: float | None, inline: bool | None
) -> tuple[int, str]:
    """How long a request may be held for a batch, and why.

    The server holds a request only while no instance is idle, and closes a window as soon
    as arrivals pause, so the delay is a cap rather than a cost. A model fast enough to run
    on the event loop (a batch-1 run and a full batch under the server's inline limits)
    gets the window measured best for such models; a slower one, the run time of the
    chosen batch: holding longer than one such run gathers nothing a busy instance would
    not gather anyway. The latency budget caps either.
    """
    if runs_inline(curve) if inline is None else inline:
        delay_ms, why = INLINE_WINDOW_US / 1000, "the server's window for models run inline"
    else:
        delay_ms = best.median_ms
        why = f"a batch of {best.batch} takes {delay_ms:.3f} ms"
    if budget_ms is not None and delay_ms > budget_ms - best.p99_ms:
        delay_ms = max(budget_ms - best.p99_ms, 0.0)
        why += ", capped by the latency budget"
    return max(MIN_QUEUE_DELAY_US, round(delay_ms * 1000)), why
