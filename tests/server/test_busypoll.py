"""BusyPoller: the loop polls for a bounded window after activity, never beside a
worker thread (running a batch or decoding images), and its idle polling is not counted
as load.

The poller reads a clock the tests step by hand: each loop pass costs a fixed amount of
fake time, so "the window has passed" is a count of passes, not a measurement. What
polling costs in real CPU time is measured in bench/bench_busypoll.py.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest

from tests.models import write_affine
from tests.server.batching.test_batcher import POLICY, FakeModel, request, until
from tests.server.test_admin import request as infer_request
from tests.server.test_admin import serving
from warpserve.protos import grpc_service_pb2_grpc as pb_grpc
from warpserve.server import busypoll, cpus
from warpserve.server.batching.batcher import DynamicBatcher
from warpserve.server.batching.executor import Executor
from warpserve.server.busypoll import CROWDED, DEFAULT_WINDOW_US, IDLE_PASS_NS, BusyPoller
from warpserve.server.dataplane import DataPlane
from warpserve.server.stats import VersionStats

PASS_NS = 10_000  # fake time one loop pass takes: an idle one (under IDLE_PASS_NS)
WINDOW_PASSES = 100


class SteppingClock:
    """Wall time that advances PASS_NS each time the poller reads it (once a pass), and
    a thread CPU clock that follows it, as for a loop that never leaves the CPU."""

    def __init__(self) -> None:
        self.now = 0
        self.reads = 0

    def wall(self) -> int:
        self.reads += 1
        self.now += PASS_NS
        return self.now

    def cpu(self) -> int:
        return self.now

    def work(self, ns: int) -> None:
        """The loop spends ``ns`` on something other than polling."""
        self.now += ns


def stepped_poller(window_passes: int = WINDOW_PASSES) -> tuple[BusyPoller, SteppingClock]:
    clock = SteppingClock()
    window_us = window_passes * PASS_NS // 1000
    return BusyPoller(window_us, wall_ns=clock.wall, cpu_ns=clock.cpu), clock


def on_a_loop(test: Callable[[], Awaitable[None]]) -> Callable[[], None]:
    """Run the async test on a fresh event loop, bounded to 20 s."""

    @functools.wraps(test)
    def run() -> None:
        asyncio.run(asyncio.wait_for(test(), 20))

    return run


async def loop_passes(n: int) -> None:
    """Let the loop make about ``n`` passes with nothing of its own to do."""
    for _ in range(n):
        await asyncio.sleep(0)


@on_a_loop
async def test_polls_for_the_window_after_activity_and_then_sleeps() -> None:
    poller, clock = stepped_poller()
    poller.arm()
    assert poller.spinning
    await loop_passes(WINDOW_PASSES // 2)
    assert poller.spinning, "still inside the window"
    assert clock.reads >= WINDOW_PASSES // 2  # it polled on every pass ...
    await loop_passes(WINDOW_PASSES)
    assert not poller.spinning, "the window has passed: the loop sleeps again"
    reads = clock.reads
    await loop_passes(WINDOW_PASSES)
    assert clock.reads == reads  # ... and after the window it does not


@on_a_loop
async def test_each_arm_extends_the_window() -> None:
    poller, _ = stepped_poller()
    poller.arm()
    for _ in range(4):
        await loop_passes(WINDOW_PASSES // 2)
        assert poller.spinning  # past the first arm's window, not the last one's
        poller.arm()
    await loop_passes(2 * WINDOW_PASSES)
    assert not poller.spinning


@on_a_loop
async def test_zero_window_never_polls() -> None:
    clock = SteppingClock()
    poller = BusyPoller(window_us=0, wall_ns=clock.wall, cpu_ns=clock.cpu)
    poller.arm()
    assert not poller.spinning
    await loop_passes(10)
    assert clock.reads == 0


def test_a_negative_window_is_refused() -> None:
    with pytest.raises(ValueError, match=">= 0"):
        BusyPoller(window_us=-1)


@on_a_loop
async def test_no_polling_while_a_worker_thread_runs_a_batch() -> None:
    poller, _ = stepped_poller()
    poller.arm()
    poller.thread_started()
    await loop_passes(3)
    assert not poller.spinning, "a busy worker thread stops it"
    poller.arm()  # a request arriving meanwhile does not start it either
    assert not poller.spinning
    poller.thread_finished()  # the batch is done: poll for the next request
    assert poller.spinning
    await loop_passes(2 * WINDOW_PASSES)
    assert not poller.spinning


@on_a_loop
async def test_idle_polling_is_not_counted_as_busy_cpu() -> None:
    poller, clock = stepped_poller(window_passes=1000)
    busy0, cpu0 = poller.busy_cpu_ns(), clock.cpu()
    poller.arm()
    await loop_passes(50)
    polled = clock.cpu() - cpu0
    assert polled >= 40 * PASS_NS  # the loop was on the CPU, polling ...
    assert poller.busy_cpu_ns() - busy0 <= 2 * PASS_NS  # ... which counts as idle
    # A pass that did real work (longer than an idle one can take) counts as busy.
    busy1 = poller.busy_cpu_ns()
    clock.work(10 * IDLE_PASS_NS)
    await loop_passes(2)
    assert poller.busy_cpu_ns() - busy1 >= 10 * IDLE_PASS_NS
    assert poller.spinning


@on_a_loop
async def test_the_batcher_reports_its_worker_thread_batches() -> None:
    poller, _ = stepped_poller(window_passes=100_000)
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
    monkeypatch.setattr(busypoll, "thread_budget", lambda: cores)
    assert busypoll.default_window_us() == window


@pytest.mark.parametrize(("workers", "window"), [(1, DEFAULT_WINDOW_US), (2, 0)])
def test_default_window_counts_the_cores_other_server_processes_take(
    monkeypatch: pytest.MonkeyPatch, workers: int, window: int
) -> None:
    monkeypatch.setattr(cpus, "usable_cores", lambda: 2)
    monkeypatch.setenv(cpus.WORKERS_ENV, str(workers))
    assert busypoll.default_window_us() == window


class HeldStage:
    """An image stage whose decode (on a decoder thread) waits for ``gate``."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.started = threading.Event()

    def is_cheap(self, inputs: dict[str, object]) -> bool:
        return False

    def apply(self, inputs: dict[str, object]) -> dict[str, object]:
        self.started.set()
        self.gate.wait(10)
        return {**inputs, "decoded": True}


@on_a_loop
async def test_no_polling_while_a_decoder_thread_prepares_images() -> None:
    poller, _ = stepped_poller(window_passes=100_000)
    stage = HeldStage()
    plane = DataPlane(cast(Any, None), poller)
    version = cast(Any, SimpleNamespace(stage=stage))
    poller.arm()
    assert poller.spinning  # positive control: a request arrived, the loop polls
    prepared = asyncio.ensure_future(plane._prepared(version, cast(Any, {"IMAGE": b"jpeg"})))
    await asyncio.to_thread(stage.started.wait, 10)
    await loop_passes(3)
    assert poller.threads_busy == 1 and not poller.spinning  # no polling beside it
    stage.gate.set()
    assert await prepared == {"IMAGE": b"jpeg", "decoded": True}
    await until(lambda: poller.threads_busy == 0)
    assert poller.spinning  # the decode finished: polling for what comes next


@on_a_loop
async def test_a_caller_that_stops_waiting_leaves_the_decoder_counted_until_it_ends() -> None:
    poller, _ = stepped_poller(window_passes=100_000)
    stage = HeldStage()
    plane = DataPlane(cast(Any, None), poller)
    prepared = asyncio.ensure_future(
        plane._prepared(cast(Any, SimpleNamespace(stage=stage)), cast(Any, {"IMAGE": b"jpeg"}))
    )
    await asyncio.to_thread(stage.started.wait, 10)
    prepared.cancel()
    await loop_passes(3)
    assert poller.threads_busy == 1  # the thread still decodes
    stage.gate.set()
    await until(lambda: poller.threads_busy == 0)


@on_a_loop
async def test_no_polling_while_two_calls_are_in_flight() -> None:
    poller, _ = stepped_poller()
    poller.call_started()
    poller.arm()
    assert poller.spinning, "a lone call: poll for its caller's next request"
    poller.call_started()
    await loop_passes(2)
    assert not poller.spinning, "a second call stops it"
    poller.arm()
    assert not poller.spinning, "nor does an arrival start it while two are in flight"
    poller.call_ended()
    poller.arm()
    assert poller.spinning, "one call left"
    poller.call_ended()
    await loop_passes(2 * WINDOW_PASSES)
    assert not poller.spinning


@on_a_loop
async def test_no_polling_for_callers_that_keep_overlapping() -> None:
    """Two alternating callers leave one call in flight half the time: polling then
    would take a core from them. A lone caller whose previous answer is now and then
    reported sent only after its next request arrived still gets it."""
    poller, _ = stepped_poller()

    def arrive(overlapping: bool) -> None:
        poller.call_started()
        if overlapping:
            poller.call_started()  # the other caller's call, or an answer not yet sent
            poller.call_ended()
        poller.arm()

    for i in range(64):  # one caller; every 20th answer reported late
        arrive(overlapping=i % 20 == 0)
        assert poller.spinning, i
        poller.call_ended()
    for i in range(16):  # two callers, overlapping at every other arrival
        arrive(overlapping=i % 2 == 0)
        poller.call_ended()
    assert poller.crowding > CROWDED
    arrive(overlapping=False)
    await loop_passes(2)
    assert not poller.spinning, "a lone call among overlapping ones"
    poller.call_ended()
    for _ in range(32):  # back to one caller: polling resumes
        arrive(overlapping=False)
        poller.call_ended()
    arrive(overlapping=False)
    assert poller.spinning
    poller.call_ended()
    await loop_passes(2 * WINDOW_PASSES)


def test_the_servicer_counts_each_call_until_its_answer_is_sent(tmp_path: Path) -> None:
    """Calls count from the handler's start until gRPC has sent the answer (its done
    callback), unary and streamed alike; a call held at "encoding" is still one."""

    async def body() -> None:
        write_affine(tmp_path, "affine", (1,))
        async with serving(tmp_path, busy_poll_us=1000) as (running, channel):
            poller = running.dataplane.poller
            assert poller is not None and poller.calls == 0
            reached, release = asyncio.Event(), asyncio.Event()

            async def hold() -> None:
                reached.set()
                await release.wait()

            running.registry.hook = lambda point: hold() if point == "encoding" else None
            x = np.ones((1, 4), np.float32)
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            held = asyncio.ensure_future(stub.ModelInfer(infer_request(x)))
            await reached.wait()
            assert poller.calls == 1
            running.registry.hook = None
            await stub.ModelInfer(infer_request(x))  # a second call, answered meanwhile
            await until(lambda: poller.calls == 1)  # the second call's answer is sent
            release.set()
            await held
            await until(lambda: poller.calls == 0)
            stream = stub.ModelStreamInfer(iter([infer_request(x), infer_request(x)]))
            assert len([reply async for reply in stream]) == 2
            await until(lambda: poller.calls == 0)

    asyncio.run(asyncio.wait_for(body(), 60))
