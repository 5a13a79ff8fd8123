"""The choice of variant and the batching settings taken from measured curves."""

from __future__ import annotations

from warpserve.compile.choice import Candidate, batching, choose, runs_inline
from warpserve.compile.sweep import Point


def _curve(*points: tuple[int, float, float]) -> list[Point]:
    """(batch, median ms, p99 ms) -> points with throughput from the median."""
    return [Point(b, 10, med, p99, b / med * 1000) for b, med, p99 in points]


FAST = _curve((1, 0.05, 0.08), (8, 0.1, 0.2), (64, 0.4, 0.9))
SLOW = _curve((1, 2.0, 2.5), (8, 6.0, 7.0), (32, 20.0, 30.0))


def test_best_throughput_within_the_budget_among_servable_variants() -> None:
    candidates = [
        Candidate("fast", True, FAST),
        Candidate("faster_but_not_servable", False, _curve((64, 0.1, 0.1))),
    ]
    assert choose(candidates, None).point.batch == 64  # type: ignore[union-attr]
    within = choose([Candidate("slow", True, SLOW)], budget_ms=10)
    assert within is not None and within.point.batch == 8
    assert choose([Candidate("slow", True, SLOW)], budget_ms=1) is None


def test_inline_models_get_the_servers_window_slower_ones_their_batch_time() -> None:
    fast = choose([Candidate("fast", True, FAST)], None)
    assert fast is not None
    assert batching(FAST, fast, None).queue_delay_us == 2000
    assert batching(FAST, fast, budget_ms=1.5).queue_delay_us == 600  # 1.5 - 0.9 ms p99
    # A format the server never runs inline (told by the caller) waits one batch's time.
    assert batching(FAST, fast, None, inline=False).queue_delay_us == 400
    slow = choose([Candidate("slow", True, SLOW)], None)
    assert slow is not None
    plan = batching(SLOW, slow, None)
    assert plan.queue_delay_us == 20_000 and plan.preferred == [32]


def test_the_servers_inline_rule() -> None:
    assert runs_inline(FAST)  # 50 us at batch 1, 0.4 ms at 64
    assert not runs_inline(SLOW)  # 2 ms at batch 1
    assert not runs_inline(_curve((1, 0.05, 0.1), (64, 2.5, 3.0)))  # a full batch over 2 ms


def test_the_smallest_batch_near_the_best_throughput_is_chosen() -> None:
    # Batch 8 reaches 95% of batch 64's throughput: the curve is flat past it.
    flat = _curve((1, 0.05, 0.08), (8, 0.105, 0.2), (64, 0.8, 1.5))
    chosen = choose([Candidate("v", True, flat)], None)
    assert chosen is not None
    assert (chosen.point.batch, chosen.best.batch) == (8, 64)
    assert "batch 8 is the smallest reaching 90% of it" in chosen.why
    plan = batching(flat, chosen, None)
    assert plan.preferred == [8, 64]
    # Positive control: where batch 64 is clearly faster, it is chosen itself.
    steep = choose([Candidate("v", True, FAST)], None)
    assert steep is not None and steep.point is steep.best and steep.point.batch == 64
