"""BusyPoller: the loop polls for a bounded window after activity, never beside a
worker thread, and its idle polling is not counted as load."""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import Awaitable, Callable

import pytest

from tests.server.batching.test_batcher import POLICY, FakeModel, request, until
from warpserve.server import busypoll
from warpserve.server.batching.batcher import DynamicBatcher
from warpserve.server.batching.executor import Executor
from warpserve.server.busypoll import DEFAULT_WINDOW_US, BusyPoller
from warpserve.server.stats import VersionStats


def on_a_loop(test: Callable[[], Awaitable[None]]) -> Callable[[], None]:
    """Run the async test on a fresh event loop, bounded to 20 s."""

    @functools.wraps(test)
    def run() -> None:
        asyncio.run(asyncio.wait_for(test(), 20))

    return run


async def _idle_for(seconds: float) -> None:
    """Let the loop run for ``seconds`` with nothing of its own to do."""
    await asyncio.sleep(seconds)


@on_a_loop
async def test_polls_for_the_window_after_activity_and_then_sleeps() -> None:
    poller = BusyPoller(window_us=200_000)
    poller.arm()
    assert poller.spinning
    cpu0 = time.thread_time()
    await _idle_for(0.020)
    assert poller.spinning, "still inside the 200 ms window"
    await _idle_for(0.400)
    assert not poller.spinning, "the window has passed: the loop sleeps again"
    polled = time.thread_time() - cpu0
    assert polled > 0.050  # it really kept the CPU, for about the window
    cpu1 = time.thread_time()
    await _idle_for(0.100)
    assert time.thread_time() - cpu1 < 0.020  # and after the window it does not


@on_a_loop
async def test_each_arm_extends_the_window() -> None:
    poller = BusyPoller(window_us=150_000)
    poller.arm()
    for _ in range(4):
        await _idle_for(0.050)
        assert poller.spinning  # 200 ms after the first arm, but 50 ms after the last
        poller.arm()
    await _idle_for(0.400)
    assert not poller.spinning


@on_a_loop
async def test_zero_window_never_polls() -> None:
    poller = BusyPoller(window_us=0)
    poller.arm()
    assert not poller.spinning
    cpu0 = time.thread_time()
    await _idle_for(0.100)
    assert time.thread_time() - cpu0 < 0.020


def test_a_negative_window_is_refused() -> None:
    with pytest.raises(ValueError, match=">= 0"):
        BusyPoller(window_us=-1)


@on_a_loop
async def test_no_polling_while_a_worker_thread_runs_a_batch() -> None:
    poller = BusyPoller(window_us=100_000)
    poller.arm()
    poller.thread_started()
    await _idle_for(0.010)
    assert not poller.spinning, "a busy worker thread stops it"
    poller.arm()  # a request arriving meanwhile does not start it either
    assert not poller.spinning
    poller.thread_finished()  # the batch is done: poll for the next request
    assert poller.spinning
    await _idle_for(0.300)
    assert not poller.spinning


@on_a_loop
async def test_idle_polling_is_not_counted_as_busy_cpu() -> None:
    poller = BusyPoller(window_us=100_000)
    busy0, cpu0 = poller.busy_cpu_ns(), time.thread_time_ns()
    poller.arm()
    await _idle_for(0.150)
    cpu = time.thread_time_ns() - cpu0
    busy = poller.busy_cpu_ns() - busy0
    assert cpu > 10_000_000  # the loop polled on the CPU ...
    assert busy < cpu / 3  # ... and most of that time counts as idle


@on_a_loop
async def test_the_batcher_reports_its_worker_thread_batches() -> None:
    poller = BusyPoller(window_us=100_000)
    gate = threading.Event()
    model = FakeModel(gate)
    executor = Executor(model, batched=True, label="0")
    batcher = DynamicBatcher("fake", POLICY, [executor], VersionStats(), poller=poller)
    queued = request()
    batcher.submit(queued)
    await until(lambda: model.running == 1)
    assert poller.threads_busy == 1 and not poller.spinning  # no polling beside it
    gate.set()
    await queued.future
    assert poller.threads_busy == 0
    assert poller.spinning  # the batch finished: polling for the next request


@pytest.mark.parametrize(("cores", "window"), [(1, 0), (2, DEFAULT_WINDOW_US), (64, 1000)])
def test_default_window_polls_only_with_a_core_to_spare(
    monkeypatch: pytest.MonkeyPatch, cores: int, window: int
) -> None:
    monkeypatch.setattr(busypoll, "usable_cores", lambda: cores)
    assert busypoll.default_window_us() == window
