"""LoopLoad: when an inline executor holds requests for a batch, and when it stops."""

from __future__ import annotations

from warpserve.server.batching.loopload import LONELY_WINDOWS, MIN_COOLDOWN, LoopLoad


class Clocks:
    """Wall and thread-CPU clocks the test advances by hand."""

    def __init__(self) -> None:
        self.wall = 0
        self.cpu = 0

    def pass_time(self, wall_us: int, busy: float) -> None:
        self.wall += wall_us * 1000
        self.cpu += int(wall_us * 1000 * busy)


def load_with(clocks: Clocks) -> LoopLoad:
    return LoopLoad(wall_ns=lambda: clocks.wall, cpu_ns=lambda: clocks.cpu)


def arrivals(load: LoopLoad, clocks: Clocks, n: int, busy: float) -> list[bool]:
    out = []
    for _ in range(n):
        clocks.pass_time(300, busy)
        out.append(load.arrival())
    return out


def test_a_loop_that_sleeps_between_requests_never_holds() -> None:
    clocks = Clocks()
    load = load_with(clocks)
    assert not any(arrivals(load, clocks, 500, busy=0.6))
    assert 0.55 < load.utilisation < 0.65


def test_a_saturated_loop_holds_after_enough_evidence() -> None:
    clocks = Clocks()
    load = load_with(clocks)
    seen = arrivals(load, clocks, 40, busy=1.0)
    assert not seen[0], "one sample is no evidence"
    assert seen[-1] and load.holding
    # Once holding, utilisation is not sampled: holding itself idles the loop.
    assert arrivals(load, clocks, 5, busy=0.0) == [True] * 5


def test_lonely_windows_end_holding_with_a_growing_cooldown() -> None:
    clocks = Clocks()
    load = load_with(clocks)
    arrivals(load, clocks, 40, busy=1.0)
    for _ in range(LONELY_WINDOWS):
        assert load.holding
        load.window_closed(1)
    assert not load.holding
    # Saturated again, but the cooldown makes it wait MIN_COOLDOWN arrivals first.
    assert not any(arrivals(load, clocks, MIN_COOLDOWN, busy=1.0))
    assert arrivals(load, clocks, 40, busy=1.0)[-1]
    for _ in range(LONELY_WINDOWS):
        load.window_closed(1)
    assert not any(arrivals(load, clocks, 2 * MIN_COOLDOWN, busy=1.0)), "cooldown doubled"
    assert arrivals(load, clocks, 40, busy=1.0)[-1]


def test_a_window_that_batched_keeps_holding_and_resets_the_cooldown() -> None:
    clocks = Clocks()
    load = load_with(clocks)
    arrivals(load, clocks, 40, busy=1.0)
    for _ in range(10):
        load.window_closed(1)
        load.window_closed(4)  # company arrived: concurrency is real
    assert load.holding
