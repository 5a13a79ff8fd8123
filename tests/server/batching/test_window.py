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


def test_the_loops_busy_time_is_no_pause() -> None:
    window = HoldingWindow(max_delay_s=2000 * US)
    window.open(0.0, busy=5.0)
    window.arrival(FIRST_GAP_S, busy=5.0 + FIRST_GAP_S)
    assert window.busy_since_arrival(5.0 + FIRST_GAP_S + 300 * US) == pytest.approx(300 * US)
    assert window.due(300 * US) == pytest.approx(window.due() + 300 * US)
    assert not window.unpaused(), "idle since the arrival: a pause"
    assert window.unpaused(2000 * US), "busy the whole window: no pause"
    assert window.due(5.0) == pytest.approx(2000 * US), "never past the max delay"


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
        self.busy = 0.0  # the loop thread's busy time: the test adds what it spends

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
        busy_clock=lambda: loop.busy,
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
            busy_clock=lambda: loop.busy,
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


# The fraud scorer at 64 clients: the loop spends about 300 us of CPU on each request it
# reads, and every few requests more on other work (the last batch's answers) while
# no request reaches the batcher.
READ_S = 300 * US
OTHER_WORK_S = 600 * US


async def slow_loop(loop: FakeTimeLoop, batcher: DynamicBatcher, reads: int, busy: bool) -> int:
    """Feed ``reads`` requests as a slow loop reads them, with a stretch of
    OTHER_WORK_S after every third one: spent on the CPU when ``busy``, else idle
    (clients stopped sending). Returns how many were held for a batch."""
    held = 0
    for i in range(reads):
        loop.now += READ_S
        loop.busy += READ_S
        r = request()
        slot = batcher.inline_slot()
        if slot is None:
            held += 1
            batcher.submit(r)
        else:
            batcher.run_inline(slot, r.inputs, r.rows)
        await passes(1)
        if i % 3 == 2:
            loop.now += OTHER_WORK_S
            loop.busy += OTHER_WORK_S if busy else 0.0
            await passes()
    loop.now += 1.0  # whatever is still held goes
    await passes()
    return held


def fake_time_load(loop: FakeTimeLoop) -> LoopLoad:
    """A LoopLoad that measures utilisation on the fake clocks, already holding."""
    load = LoopLoad(wall_ns=lambda: int(loop.now * 1e9), cpu_ns=lambda: int(loop.busy * 1e9))
    load.holding = True
    return load


def test_a_busy_loop_between_arrivals_is_no_pause() -> None:
    """Many callers, a slow loop: gaps between arrivals longer than the quiet time,
    but spent by the loop on the CPU, where it could read no request. Holding stays
    on, and windows run to max_queue_delay and gather several requests each."""

    async def body(loop: FakeTimeLoop) -> None:
        model = FakeModel()
        policy = BatchingPolicy(max_batch_size=64, dynamic=True, max_queue_delay_us=2000)
        load = fake_time_load(loop)
        batcher = on_the_loop_clock(loop, policy, model, load)
        reads = 60
        held = await slow_loop(loop, batcher, reads, busy=True)
        assert held == reads, "every request joined a batch"
        assert load.holding
        assert sum(model.batches) == reads
        assert min(model.batches[:-1]) >= 5, model.batches

    on_fake_time(body)


def test_an_idle_loop_between_arrivals_is_a_pause() -> None:
    """The same arrivals, but the loop idles between them (clients paused): windows
    end on those pauses with a few rows, and holding ends."""

    async def body(loop: FakeTimeLoop) -> None:
        model = FakeModel()
        policy = BatchingPolicy(max_batch_size=64, dynamic=True, max_queue_delay_us=2000)
        load = fake_time_load(loop)
        batcher = on_the_loop_clock(loop, policy, model, load)
        reads = 60
        held = await slow_loop(loop, batcher, reads, busy=False)
        assert not load.holding
        assert held < reads / 2, "holding ended after a few windows that did not pay"
        assert max(model.batches) <= 3, model.batches

    on_fake_time(body)
