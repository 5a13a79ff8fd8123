"""Pick the variant to serve, and the batching settings, from the measured curves."""

from __future__ import annotations

from dataclasses import dataclass

from warpserve.compile.sweep import Point
from warpserve.server.batching.batcher import INLINE_WINDOW_US
from warpserve.server.cpus import usable_cores
from warpserve.server.lifecycle.version import INLINE_BATCH_LIMIT_NS, INLINE_THRESHOLD_NS

# A batch costing more than this is compute-bound on a CPU: a second instance lets one
# batch compute while the other's requests are decoded and answered (see the README on
# instance groups); below it the gRPC loop, not the model, is the limit.
COMPUTE_BOUND_MS = 1.0
MIN_QUEUE_DELAY_US = 100
KNEE = 0.9  # a preferred size reaches this share of the best throughput


@dataclass(frozen=True)
class Candidate:
    variant: str
    servable: bool
    points: list[Point]


@dataclass(frozen=True)
class Choice:
    variant: str
    point: Point
    why: str


@dataclass(frozen=True)
class Batching:
    preferred: list[int]
    queue_delay_us: int
    instances: int
    why: str


def choose(candidates: list[Candidate], budget_ms: float | None) -> Choice | None:
    """Best throughput among servable variants at a batch whose p99 is within budget."""
    best: tuple[float, float, str, Point] | None = None
    for candidate in candidates:
        if not candidate.servable:
            continue
        for point in candidate.points:
            if budget_ms is not None and point.p99_ms > budget_ms:
                continue
            # Higher throughput wins; at equal throughput the lower latency.
            key = (point.throughput, -point.p99_ms, candidate.variant, point)
            if best is None or key[:2] > best[:2]:
                best = key
    if best is None:
        return None
    _, _, variant, point = best
    within = f"within the {budget_ms:g} ms p99 budget" if budget_ms is not None else "(no budget)"
    why = (
        f"highest throughput {within}: {point.throughput:,.0f} rows/s at batch {point.batch} "
        f"(median {point.median_ms:.3f} ms, p99 {point.p99_ms:.3f} ms)"
    )
    return Choice(variant, point, why)


def batching(curve: list[Point], choice: Choice, budget_ms: float | None) -> Batching:
    """Preferred sizes, queue delay and instance count from the chosen variant's curve."""
    knee = next(
        (p.batch for p in curve if p.throughput >= KNEE * choice.point.throughput),
        choice.point.batch,
    )
    preferred = sorted({b for b in (knee, choice.point.batch) if b > 1})
    single = next((p for p in curve if p.batch == 1), curve[0])
    delay_us, delay_why = _queue_delay(single, choice, curve, budget_ms)
    compute_bound = choice.point.median_ms > COMPUTE_BOUND_MS and usable_cores() >= 2
    instances = 2 if compute_bound else 1
    why = (
        f"preferred batch sizes {preferred or 'none'} (the chosen batch, and the smallest "
        f"reaching {KNEE:.0%} of its throughput); queue delay {delay_us} us ({delay_why}); "
        f"{instances} instance(s): a batch of "
        f"{choice.point.batch} takes {choice.point.median_ms:.3f} ms, "
        f"{'compute-bound' if compute_bound else 'overhead-bound'}"
    )
    return Batching(preferred, delay_us, instances, why)


def _queue_delay(
    single: Point, choice: Choice, curve: list[Point], budget_ms: float | None
) -> tuple[int, str]:
    """How long a request may be held for a batch, and why.

    The server holds a request only while no instance is idle, and closes a window as soon
    as arrivals pause, so the delay is a cap rather than a cost. A model fast enough to run
    on the event loop (a batch-1 run and a full batch under the server's inline limits)
    gets the window measured best for such models; a slower one, the run time of the
    chosen batch: holding longer than one such run gathers nothing a busy instance would
    not gather anyway. The latency budget caps either.
    """
    largest = max(curve, key=lambda p: p.batch)
    inline = (
        single.median_ms * 1e6 < INLINE_THRESHOLD_NS
        and largest.median_ms * 1e6 < INLINE_BATCH_LIMIT_NS
    )
    if inline:
        delay_ms, why = INLINE_WINDOW_US / 1000, "the server's window for models run inline"
    else:
        delay_ms = choice.point.median_ms
        why = f"a batch of {choice.point.batch} takes {delay_ms:.3f} ms"
    if budget_ms is not None and delay_ms > budget_ms - choice.point.p99_ms:
        delay_ms = max(budget_ms - choice.point.p99_ms, 0.0)
        why += ", capped by the latency budget"
    return max(MIN_QUEUE_DELAY_US, round(delay_ms * 1000)), why
