"""LoopLoad: when an inline executor holds requests for a batch, and when it stops."""

from __future__ import annotations

from warpserve.server.batching.loopload import (
    LONELY_WINDOWS,
    MAX_COOLDOWN,
    MIN_COMPANY,
    MIN_COOLDOWN,
    LoopLoad,
)


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
        load.window_closed(MIN_COMPANY)  # company arrived: concurrency is real
    assert load.holding


def test_a_window_without_a_pause_pays_whatever_it_gathered() -> None:
    """On a slow or crowded machine a window can run its whole delay taking requests
    and still gather few: the loop never idled for it, so holding goes on."""
    clocks = Clocks()
    load = load_with(clocks)
    arrivals(load, clocks, 40, busy=1.0)
    for _ in range(10):
        load.window_closed(3, busy=True)
    assert load.holding
    for _ in range(LONELY_WINDOWS):
        load.window_closed(3)
    assert not load.holding, "the same windows ending on a pause do not pay"


def held_share(callers: int, arrivals: int, company: int = MIN_COMPANY) -> float:
    """Closed-loop callers on a loop that is never idle (each request arrives while the
    loop serves the ones before it): the share of arrivals held for a batch. A window
    gathers every caller's request, since a held caller sends nothing new."""
    clocks = Clocks()
    load = LoopLoad(company=company, wall_ns=lambda: clocks.wall, cpu_ns=lambda: clocks.cpu)
    held = seen = 0
    while seen < arrivals:
        clocks.pass_time(150, busy=1.0)
        seen += 1
        if not load.arrival():
            continue
        for _ in range(callers - 1):  # the others' requests join the window
            clocks.pass_time(150, busy=1.0)
            assert load.arrival()
        seen += callers - 1
        held += callers
        load.window_closed(callers)
    return held / seen


def test_two_alternating_callers_are_not_held() -> None:
    """Two callers keep the loop busy, but a window can only ever gather the two of
    them: holding stops after a few windows, and the trials that follow, further and
    further apart up to MAX_COOLDOWN arrivals, hold a small share of the requests."""
    assert held_share(callers=2, arrivals=20_000) < 0.02


def test_trials_resume_soon_after_a_long_quiet_spell() -> None:
    """After a long spell of windows that never paid, many callers arriving get their
    batches within MAX_COOLDOWN arrivals."""
    clocks = Clocks()
    load = load_with(clocks)
    for _ in range(100):  # many failed trials: the cooldown is at its longest
        arrivals(load, clocks, 40, busy=1.0)
        while load.holding:
            load.window_closed(2)
    seen = arrivals(load, clocks, MAX_COOLDOWN + 40, busy=1.0)
    assert seen[-1], "holding again within MAX_COOLDOWN arrivals"


def test_many_callers_keep_being_held() -> None:
    assert held_share(callers=2 * MIN_COMPANY, arrivals=20_000) > 0.95


def test_a_full_batch_smaller_than_the_company_pays() -> None:
    """A model whose max_batch_size is under MIN_COMPANY: a full batch is all a window
    can gather, so it counts as company."""
    assert held_share(callers=4, arrivals=20_000, company=4) > 0.95


def test_requests_that_arrived_together_are_one_sample_and_count_each() -> None:
    """Between requests that arrived together the loop did nothing but take them: one
    utilisation sample covers them (a sample per request would read the microseconds
    between them as a saturated loop), while a cooldown still counts every request."""
    clocks = Clocks()
    load = load_with(clocks)
    for _ in range(200):  # a loop half idle, taking groups of 8
        clocks.pass_time(300, busy=0.5)
        assert not load.arrival(8)
        clocks.pass_time(1, busy=1.0)  # what per-request samples would have measured
    assert 0.45 < load.utilisation < 0.55
    for _ in range(2):  # holding twice ended: the cooldown is now 2 * MIN_COOLDOWN
        arrivals(load, clocks, MIN_COOLDOWN + 40, busy=1.0)
        for _ in range(LONELY_WINDOWS):
            load.window_closed(1)
    assert not load.holding
    # A saturated loop waits out the cooldown, the last 4 arrivals of it together; the
    # next arrival may hold.
    assert not any(arrivals(load, clocks, 2 * MIN_COOLDOWN - 4, busy=1.0))
    clocks.pass_time(300, busy=1.0)
    assert not load.arrival(4)
    assert load.utilisation > load.threshold
    assert arrivals(load, clocks, 1, busy=1.0) == [True], "the cooldown counted all 4"
