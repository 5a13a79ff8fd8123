"""HoldingWindow: a held inline batch goes once arrivals stop, not at max_queue_delay.

The batcher tests run a real batcher on an event loop whose clock the test sets by hand
(``FakeTimeLoop``), so that which timer has fired is decided by the test, not measured.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from tests.server.batching.test_batcher import FakeModel, Saturated, request
from warpserve.server.batching.batcher import DynamicBatcher
from warpserve.server.batching.executor import Executor
from warpserve.server.batching.loopload import LONELY_WINDOWS, LoopLoad
from warpserve.server.batching.policy import BatchingPolicy
from warpserve.server.batching.window import FIRST_GAP_S, GAP_FACTOR, MIN_QUIET_S, HoldingWindow
from warpserve.server.stats import VersionStats

US = 1e-6
QUIET_S = GAP_FACTOR * FIRST_GAP_S


def test_a_window_with_no_company_goes_after_the_quiet_time() -> None:
    window = HoldingWindow(max_delay_s=2000 * US)
    window.open(10.0)
    assert window.due() == pytest.approx(10.0 + QUIET_S)


def test_each_arrival_pushes_the_end_back_up_to_the_max_delay() -> None:
    window = HoldingWindow(max_delay_s=2000 * US)
    window.open(0.0)
    now = 0.0
    for _ in range(100):  # a steady stream, one request every usual gap
        now += FIRST_GAP_S
        window.arrival(now)
        assert window.due() == pytest.approx(min(now + QUIET_S, 2000 * US))
    assert window.due() == pytest.approx(2000 * US), "arrivals never stopped: max delay"


def test_the_usual_gap_is_learnt() -> None:
    window = HoldingWindow(max_delay_s=10_000 * US)
    window.open(0.0)
    now = 0.0
    for _ in range(30):
        now += 200 * US  # a slower loop: a request every 200 us
        window.arrival(now)
    assert window.usual_gap_s == pytest.approx(200 * US, rel=0.01)
    assert window.due() == pytest.approx(now + GAP_FACTOR * 200 * US, rel=0.01)


def test_a_window_knows_whether_arrivals_paused() -> None:
    window = HoldingWindow(max_delay_s=2000 * US)
    window.open(0.0)
    for i in range(1, 40):
        window.arrival(i * FIRST_GAP_S)
    assert window.unpaused(), "a request every usual gap, up to the max delay"
    paused = HoldingWindow(max_delay_s=2000 * US)
    paused.open(0.0)
    paused.arrival(FIRST_GAP_S)
    assert not paused.unpaused(), "two arrivals, then nothing"


def test_a_window_awaiting_callers_ignores_pauses() -> None:
    window = HoldingWindow(max_delay_s=2000 * US)
    window.open(0.0)
    window.arrival(FIRST_GAP_S)
    assert window.due() == pytest.approx(FIRST_GAP_S + QUIET_S)
    assert window.due(awaited=True) == pytest.approx(2000 * US), "only the max delay"
    assert not window.unpaused(), "idle since the arrival: a pause"


def test_the_quiet_time_has_a_floor_and_a_ceiling() -> None:
    window = HoldingWindow(max_delay_s=2000 * US)
    window.open(0.0)
    for i in range(1, 50):
        window.arrival(i * 1 * US)  # back-to-back arrivals
    assert window.quiet_s == MIN_QUIET_S
    short = HoldingWindow(max_delay_s=100 * US)
    assert short.quiet_s == pytest.approx(100 * US / 4)


class Recorded(Saturated):
    """Holds every request, and records how each window ended."""

    def __init__(self) -> None:
        super().__init__()
        self.windows: list[tuple[int, bool]] = []

    def window_closed(self, rows: int, busy: bool = False) -> None:
        self.windows.append((rows, busy))


class FakeTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock moves only when the test says so."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 1000.0

    def time(self) -> float:
        return self.now


def on_fake_time(test: Callable[[FakeTimeLoop], Awaitable[None]]) -> None:
    loop = FakeTimeLoop()
    try:
        loop.run_until_complete(test(loop))
    finally:
        loop.close()


def on_the_loop_clock(
    loop: FakeTimeLoop, policy: BatchingPolicy, model: FakeModel, load: LoopLoad
) -> DynamicBatcher:
    """An inline batcher whose windows read the fake loop's clock."""
    executor = Executor(model, batched=True, label="inline", inline=True)
    return DynamicBatcher(
        "fake",
        policy,
        [executor],
        VersionStats(),
        load=load,
        clock=loop.time,
    )


async def passes(n: int = 3) -> None:
    """A few loop passes: any timer due at the fake time runs."""
    for _ in range(n):
        await asyncio.sleep(0)


def test_two_callers_are_answered_once_arrivals_stop() -> None:
    """Two requests held on a saturated loop go one quiet time after the second one
    arrived (about 0.25 ms), not after max_queue_delay (2 ms), though the batch is not
    full: nothing else was arriving."""

    async def body(loop: FakeTimeLoop) -> None:
        model = FakeModel()
        policy = BatchingPolicy(max_batch_size=64, dynamic=True, max_queue_delay_us=2000)
        load = Recorded()
        batcher = on_the_loop_clock(loop, policy, model, load)
        first, second = request(value=1), request(value=2)
        assert batcher.inline_slot() is None, "a saturated loop holds"
        batcher.submit(first)
        loop.now += FIRST_GAP_S
        assert batcher.inline_slot() is None
        batcher.submit(second)
        loop.now += QUIET_S - 30 * US  # the window's first end has passed by now
        await passes()
        assert model.batches == [], "the second arrival moved the window's end"
        loop.now += 60 * US
        await passes()
        assert model.batches == [2]
        assert first.future.done() and second.future.done()
        assert loop.now - 1000.0 < 2000 * US / 4
        assert load.windows == [(2, False)], "it ended on a pause"

    on_fake_time(body)


def test_a_steady_stream_is_held_until_the_max_delay() -> None:
    async def body(loop: FakeTimeLoop) -> None:
        model = FakeModel()
        policy = BatchingPolicy(max_batch_size=64, dynamic=True, max_queue_delay_us=2000)
        load = Recorded()
        batcher = on_the_loop_clock(loop, policy, model, load)
        held = []
        start = loop.now
        while loop.now - start < 2000 * US - FIRST_GAP_S:
            assert batcher.inline_slot() is None
            held.append(request())
            batcher.submit(held[-1])
            loop.now += FIRST_GAP_S
            await passes(1)
            assert model.batches == [], "requests keep coming: the window stays open"
        loop.now = start + 2000 * US
        await passes()
        assert model.batches == [len(held)]
        assert load.windows == [(len(held), True)], "arrivals never paused"

    on_fake_time(body)


def test_a_window_whose_timer_fired_far_too_late_is_no_evidence() -> None:
    """The loop thread did not run for longer than a whole window (the machine ran
    something else): the long pause is not a sign that arrivals stopped."""

    async def body(loop: FakeTimeLoop) -> None:
        model = FakeModel()
        policy = BatchingPolicy(max_batch_size=64, dynamic=True, max_queue_delay_us=2000)
        load = Recorded()
        batcher = on_the_loop_clock(loop, policy, model, load)
        held = request()
        assert batcher.inline_slot() is None
        batcher.submit(held)
        loop.now += 50_000 * US
        await passes()
        assert held.future.done() and model.batches == [1]
        assert load.windows == []

    on_fake_time(body)


def test_a_lone_client_stops_being_held() -> None:
    async def body(loop: FakeTimeLoop) -> None:
        model = FakeModel()
        load = LoopLoad()
        load.holding = True  # as if the loop had been saturated
        policy = BatchingPolicy(max_batch_size=8, dynamic=True, max_queue_delay_us=2000)
        executor = Executor(model, batched=True, label="inline", inline=True)
        batcher = DynamicBatcher(
            "fake",
            policy,
            [executor],
            VersionStats(),
            load=load,
            clock=loop.time,
        )
        held = 0
        for _ in range(LONELY_WINDOWS + 3):
            r = request()
            slot = batcher.inline_slot()
            if slot is not None:
                batcher.run_inline(slot, r.inputs, r.rows)
                continue
            held += 1
            batcher.submit(r)
            loop.now += QUIET_S + 10 * US
            await passes()
            assert r.future.done()
        assert held == LONELY_WINDOWS, "windows of one end holding"
        assert model.batches == [1] * (LONELY_WINDOWS + 3)

    on_fake_time(body)


async def held_round(loop: FakeTimeLoop, batcher: DynamicBatcher, arrivals: list[float]) -> None:
    """Requests arriving at the given offsets (s) from now, each held for a batch."""
    start = loop.now
    for offset in arrivals:
        loop.now = start + offset
        await passes(1)
        assert batcher.inline_slot() is None, "a saturated loop holds"
        batcher.submit(request())
        await passes(1)


def test_a_window_waits_through_the_pause_while_answered_callers_turn_around() -> None:
    """20 callers answered together come back together: the loop idles while they turn
    around (a pause several quiet times long after the first is back), yet the window
    stays open until all 20 are back, and then goes on the next pause."""

    async def body(loop: FakeTimeLoop) -> None:
        model = FakeModel()
        policy = BatchingPolicy(max_batch_size=64, dynamic=True, max_queue_delay_us=2000)
        load = Recorded()
        batcher = on_the_loop_clock(loop, policy, model, load)
        callers = 20
        await held_round(loop, batcher, [i * FIRST_GAP_S for i in range(callers)])
        loop.now += QUIET_S + 10 * US  # nobody else: the first window goes on the pause
        await passes()
        assert model.batches == [callers]
        turnaround = 3 * QUIET_S
        back = [0.0] + [turnaround + i * FIRST_GAP_S for i in range(callers - 1)]
        await held_round(loop, batcher, back)
        assert model.batches == [callers], "a pause while callers are on their way back"
        loop.now += QUIET_S + 10 * US
        await passes()
        assert model.batches == [callers, callers], "all back: the next pause ends it"
        assert [rows for rows, _ in load.windows] == [callers, callers]

    on_fake_time(body)


def test_callers_that_left_are_awaited_for_one_window_at_most() -> None:
    """Of 20 callers answered, 5 come back: that window goes at max_queue_delay, and
    the next one, awaiting only those 5, goes on the pause after they are back."""

    async def body(loop: FakeTimeLoop) -> None:
        model = FakeModel()
        policy = BatchingPolicy(max_batch_size=64, dynamic=True, max_queue_delay_us=2000)
        load = Recorded()
        batcher = on_the_loop_clock(loop, policy, model, load)
        await held_round(loop, batcher, [i * FIRST_GAP_S for i in range(20)])
        loop.now += QUIET_S + 10 * US
        await passes()
        opened = loop.now
        await held_round(loop, batcher, [i * FIRST_GAP_S for i in range(5)])
        loop.now = opened + 2000 * US - 20 * US
        await passes()
        assert model.batches == [20], "15 callers still awaited: no pause ends it"
        loop.now = opened + 2000 * US
        await passes()
        assert model.batches == [20, 5], "max_queue_delay"
        opened = loop.now
        await held_round(loop, batcher, [i * FIRST_GAP_S for i in range(5)])
        loop.now += QUIET_S + 10 * US
        await passes()
        assert model.batches == [20, 5, 5]
        assert loop.now - opened < 2000 * US / 2, "the stale 15 were not awaited again"

    on_fake_time(body)


def test_without_answered_callers_a_pause_ends_the_window() -> None:
    """Positive control for the two tests above: the same pause in a window that awaits
    no one ends it with the rows it has."""

    async def body(loop: FakeTimeLoop) -> None:
        model = FakeModel()
        policy = BatchingPolicy(max_batch_size=64, dynamic=True, max_queue_delay_us=2000)
        batcher = on_the_loop_clock(loop, policy, model, Recorded())
        await held_round(loop, batcher, [0.0])
        loop.now += 3 * QUIET_S
        await passes()
        assert model.batches == [1]

    on_fake_time(body)
