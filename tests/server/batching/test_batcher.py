"""DynamicBatcher policy, in-process, with fake models that block, record and fail."""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest

from warpserve.server.batching.batcher import DynamicBatcher
from warpserve.server.batching.executor import Executor
from warpserve.server.batching.loopload import LoopLoad
from warpserve.server.batching.policy import BatchingPolicy, QueuePolicy
from warpserve.server.batching.request import QueuedRequest, signature_of
from warpserve.server.errors import BackendError, DeadlineExceeded, QueueFull, Unavailable
from warpserve.server.stats import VersionStats


class FakeModel:
    """y = 2x; records each batch's row count; can block until released; fails on -1."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.gate = gate
        self.batches: list[int] = []
        self.running = 0
        self.max_running = 0
        self._lock = threading.Lock()

    def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        try:
            if self.gate is not None:
                assert self.gate.wait(10)
            x = inputs["x"]
            self.batches.append(x.shape[0])
            if np.any(x == -1):
                raise ValueError("poisoned row")
            return {"y": x * 2}
        finally:
            with self._lock:
                self.running -= 1

    def close(self) -> None:
        pass


def make(policy: BatchingPolicy, model: FakeModel, instances: int = 1) -> DynamicBatcher:
    executors = [Executor(model, batched=True, label=str(i)) for i in range(instances)]
    return DynamicBatcher("fake", policy, executors, VersionStats())


def request(rows: int = 1, value: float = 1.0, width: int = 2, **kw: Any) -> QueuedRequest:
    x = np.full((rows, width), value, dtype=np.float32)
    inputs = {"x": x}
    future = asyncio.get_running_loop().create_future()
    return QueuedRequest(inputs, rows, signature_of(inputs, True), future, **kw)


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 20))


async def until(predicate: Callable[[], bool]) -> None:
    while not predicate():
        await asyncio.sleep(0.001)


POLICY = BatchingPolicy(max_batch_size=8, dynamic=True)


async def occupied(
    policy: BatchingPolicy = POLICY, first: QueuedRequest | None = None
) -> tuple[threading.Event, FakeModel, DynamicBatcher]:
    """A batcher whose one instance is busy with ``first`` until the gate opens."""
    gate = threading.Event()
    model = FakeModel(gate)
    batcher = make(policy, model)
    batcher.submit(first or request())
    await until(lambda: model.running == 1)
    return gate, model, batcher


def test_idle_instance_dispatches_without_waiting_for_a_batch() -> None:
    async def body() -> None:
        model = FakeModel()
        # A long max_queue_delay must not hold a request when the instance is idle.
        batcher = make(
            BatchingPolicy(max_batch_size=8, dynamic=True, max_queue_delay_us=10**9), model
        )
        r = request()
        batcher.submit(r)
        out = await r.future
        assert out["y"].tolist() == [[2.0, 2.0]]
        assert model.batches == [1]

    run(body)


def test_batches_form_while_the_instance_is_busy() -> None:
    async def body() -> None:
        first = request(value=0)
        gate, model, batcher = await occupied(first=first)
        rest = [request(value=i) for i in range(1, 6)]
        for r in rest:
            batcher.submit(r)
        gate.set()
        outs = await asyncio.gather(first.future, *(r.future for r in rest))
        assert model.batches == [1, 5]
        for i, out in enumerate(outs):
            assert out["y"].tolist() == [[2.0 * i, 2.0 * i]], "each request gets its own rows"

    run(body)


def test_multi_row_requests_count_every_row() -> None:
    async def body() -> None:
        gate, model, batcher = await occupied(first=request(rows=1))
        three_rows = [request(rows=3, value=i) for i in range(4)]
        for r in three_rows:
            batcher.submit(r)
        gate.set()
        outs = await asyncio.gather(*(r.future for r in three_rows))
        assert model.batches == [1, 6, 6], "3-row requests: two per batch of max 8 rows"
        assert [o["y"].shape for o in outs] == [(3, 2)] * 4

    run(body)


def test_different_shapes_never_share_a_batch() -> None:
    async def body() -> None:
        gate, model, batcher = await occupied()
        narrow = [request(width=2) for _ in range(3)]
        wide = [request(width=5) for _ in range(3)]
        for a, b in zip(narrow, wide, strict=True):
            batcher.submit(a)
            batcher.submit(b)
        gate.set()
        await asyncio.gather(*(r.future for r in narrow + wide))
        assert model.batches == [1, 3, 3]

    run(body)


def test_a_failing_request_fails_only_itself() -> None:
    async def body() -> None:
        gate, _, batcher = await occupied()
        good = [request(value=3) for _ in range(3)]
        bad = request(value=-1)
        for r in [good[0], bad, *good[1:]]:
            batcher.submit(r)
        gate.set()
        results = await asyncio.gather(*(r.future for r in [*good, bad]), return_exceptions=True)
        assert all(isinstance(r, dict) for r in results[:3])
        assert isinstance(results[3], BackendError)
        assert "poisoned row" in str(results[3])

    run(body)


def test_queue_full_rejects_instead_of_blocking() -> None:
    async def body() -> None:
        policy = BatchingPolicy(
            max_batch_size=8, dynamic=True, default_queue=QueuePolicy(max_queue_size=2)
        )
        running = request()
        gate, _, batcher = await occupied(policy, running)
        queued = [request(), request()]
        for r in queued:
            batcher.submit(r)
        with pytest.raises(QueueFull, match="queue full"):
            batcher.submit(request())
        gate.set()
        await asyncio.gather(running.future, *(r.future for r in queued))

    run(body)


def test_queue_timeout_takes_the_request_out() -> None:
    async def body() -> None:
        gate, model, batcher = await occupied()
        import time

        late = request(deadline_ns=time.monotonic_ns() + 5_000_000)
        batcher.submit(late)
        with pytest.raises(DeadlineExceeded, match="timed out"):
            await late.future
        assert batcher.queued == 0
        gate.set()
        await until(lambda: batcher.in_flight == 0)
        assert model.batches == [1], "the expired request never ran"

    run(body)


def test_cancelled_request_leaves_the_queue_and_never_runs() -> None:
    async def body() -> None:
        gate, model, batcher = await occupied()
        gone, kept = request(value=7), request(value=8)
        batcher.submit(gone)
        batcher.submit(kept)
        batcher.cancel(gone)
        assert batcher.queued == 1
        gate.set()
        out = await kept.future
        assert out["y"][0, 0] == 16.0
        assert model.batches == [1, 1]

    run(body)


def test_higher_priority_runs_first() -> None:
    async def body() -> None:
        policy = BatchingPolicy(
            max_batch_size=1, dynamic=True, priority_levels=2, default_priority=2
        )
        gate, _, batcher = await occupied(policy)
        order: list[str] = []
        low = request(priority=2)
        high = request(priority=1)
        low.future.add_done_callback(lambda _: order.append("low"))
        high.future.add_done_callback(lambda _: order.append("high"))
        batcher.submit(low)
        batcher.submit(high)
        gate.set()
        await asyncio.gather(low.future, high.future)
        assert order == ["high", "low"]

    run(body)


def test_preferred_batch_size_trims_the_batch() -> None:
    async def body() -> None:
        policy = BatchingPolicy(max_batch_size=8, dynamic=True, preferred_batch_sizes=(4,))
        gate, model, batcher = await occupied(policy)
        rest = [request() for _ in range(6)]
        for r in rest:
            batcher.submit(r)
        gate.set()
        await asyncio.gather(*(r.future for r in rest))
        assert model.batches == [1, 4, 2]

    run(body)


def test_triton_mode_waits_for_max_queue_delay() -> None:
    async def body() -> None:
        model = FakeModel()
        policy = BatchingPolicy(
            max_batch_size=4, dynamic=True, max_queue_delay_us=200_000, eager=False
        )
        batcher = make(policy, model)
        first = request()
        batcher.submit(first)
        await asyncio.sleep(0)
        assert model.batches == [], "held for a fuller batch"
        more = [request() for _ in range(3)]
        for r in more:
            batcher.submit(r)
        await asyncio.gather(first.future, *(r.future for r in more))
        assert model.batches == [4], "a full batch goes at once"

    run(body)


def test_instances_run_concurrently() -> None:
    async def body() -> None:
        gate = threading.Event()
        model = FakeModel(gate)
        batcher = make(BatchingPolicy(max_batch_size=1, dynamic=True), model, instances=2)
        rs = [request() for _ in range(2)]
        for r in rs:
            batcher.submit(r)
        await until(lambda: model.running == 2)
        gate.set()
        await asyncio.gather(*(r.future for r in rs))
        assert model.max_running == 2

    run(body)


def test_drain_finishes_queued_and_running_then_refuses() -> None:
    async def body() -> None:
        gate = threading.Event()
        model = FakeModel(gate)
        batcher = make(BatchingPolicy(max_batch_size=1, dynamic=True), model)
        rs = [request(value=i) for i in range(3)]
        for r in rs:
            batcher.submit(r)
        drained = asyncio.get_running_loop().create_task(batcher.drain())
        await asyncio.sleep(0.01)
        assert not drained.done()
        with pytest.raises(Unavailable, match="draining"):
            batcher.submit(request())
        gate.set()
        await drained
        assert all(r.future.done() and not r.future.exception() for r in rs)

    run(body)


# -- inline executors (tiny models run on the loop thread) ---------------------------


class Saturated(LoopLoad):
    """A loop with no idle time: every arrival is held for a batch."""

    def arrival(self, requests: int = 1) -> bool:
        self.holding = True
        return True


def run_now(batcher: DynamicBatcher, inputs: dict[str, np.ndarray], rows: int) -> Any:
    """What the data plane does: run at once if the batcher offers a slot, else None."""
    slot = batcher.inline_slot()
    return None if slot is None else batcher.run_inline(slot, inputs, rows)


def make_inline(policy: BatchingPolicy, model: FakeModel, load: LoopLoad) -> DynamicBatcher:
    executor = Executor(model, batched=True, label="inline", inline=True)
    return DynamicBatcher("fake", policy, [executor], VersionStats(), load=load)


def test_inline_on_an_idle_loop_runs_at_once_without_a_queue_entry() -> None:
    async def body() -> None:
        model = FakeModel()
        batcher = make_inline(POLICY, model, LoopLoad())
        out = run_now(batcher, {"x": np.ones((1, 2), np.float32)}, 1)
        assert out is not None and out["y"].tolist() == [[2.0, 2.0]]
        assert model.batches == [1]
        assert batcher.stats.execution_count == 1 and batcher.stats.queue.count == 1
        assert batcher.in_flight == 0

    run(body)


def test_inline_on_a_saturated_loop_holds_requests_into_one_batch() -> None:
    async def body() -> None:
        model = FakeModel()
        load = Saturated()
        batcher = make_inline(
            BatchingPolicy(max_batch_size=8, dynamic=True, max_queue_delay_us=20_000), model, load
        )
        rs = [request(value=i) for i in range(3)]
        for r in rs:
            assert run_now(batcher, r.inputs, r.rows) is None, "a saturated loop holds"
            batcher.submit(r)
        assert model.batches == [], "held until the window closes"
        outs = await asyncio.gather(*(r.future for r in rs))
        assert model.batches == [3]
        for i, out in enumerate(outs):
            assert out["y"].tolist() == [[2.0 * i, 2.0 * i]]

    run(body)


def test_inline_full_batch_goes_before_the_window_closes() -> None:
    async def body() -> None:
        model = FakeModel()
        batcher = make_inline(
            BatchingPolicy(max_batch_size=4, dynamic=True, max_queue_delay_us=10**9),
            model,
            Saturated(),
        )
        rs = [request(value=i) for i in range(4)]
        for r in rs:
            assert run_now(batcher, r.inputs, r.rows) is None
            batcher.submit(r)
        assert all(r.future.done() for r in rs), "four rows fill max_batch_size: no wait"
        assert model.batches == [4]

    run(body)


def test_inline_request_that_fills_the_batch_is_not_held() -> None:
    async def body() -> None:
        model = FakeModel()
        batcher = make_inline(
            BatchingPolicy(max_batch_size=4, dynamic=True, max_queue_delay_us=10**9),
            model,
            Saturated(),
        )
        full = request(rows=4)
        assert run_now(batcher, full.inputs, full.rows) is None
        batcher.submit(full)
        await asyncio.sleep(0)  # one loop pass, far short of the 1000 s window
        assert full.future.done() and model.batches == [4]
        # Positive control: a partial batch on the same saturated loop is held.
        part = request(rows=3)
        assert run_now(batcher, part.inputs, part.rows) is None
        batcher.submit(part)
        await asyncio.sleep(0)
        assert not part.future.done() and model.batches == [4]
        batcher.submit(request(rows=1))  # fills it: both go at once
        assert part.future.done() and model.batches == [4, 4]

    run(body)


def test_inline_slot_refuses_while_draining() -> None:
    async def body() -> None:
        batcher = make_inline(POLICY, FakeModel(), LoopLoad())
        await batcher.drain()
        with pytest.raises(Unavailable, match="draining"):
            run_now(batcher, {"x": np.ones((1, 2), np.float32)}, 1)

    run(body)


class ThreadRecording(FakeModel):
    """FakeModel that also records the thread each batch ran on."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[str] = []

    def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.threads.append(threading.current_thread().name)
        return super().execute(inputs)


def test_inline_rows_cap_batches_and_send_bigger_requests_to_the_worker_thread() -> None:
    # A model whose full batch would hold the loop too long runs inline batches of at most
    # inline_rows rows; a request with more rows (no batch may split it) runs on the
    # executor's worker thread instead of stalling the loop.
    async def body() -> None:
        model = ThreadRecording()
        executor = Executor(model, batched=True, label="capped", inline=True, inline_rows=2)
        policy = BatchingPolicy(max_batch_size=8, dynamic=True, max_queue_delay_us=10**9)
        batcher = DynamicBatcher("fake", policy, [executor], VersionStats(), load=Saturated())
        batcher.keep_only(executor)
        assert batcher.batch_rows == 2
        rs = [request(value=i) for i in range(5)]
        for r in rs:
            assert run_now(batcher, r.inputs, r.rows) is None, "a saturated loop holds"
            batcher.submit(r)
        await asyncio.wait_for(asyncio.gather(*(r.future for r in rs[:4])), 5)
        assert model.batches[:2] == [2, 2], "each batch full at two rows, without waiting"
        big = request(rows=5, value=7)
        batcher.submit(big)
        out = await asyncio.wait_for(big.future, 5)
        assert out["y"].tolist() == [[14.0, 14.0]] * 5
        await asyncio.wait_for(rs[4].future, 5)
        loop_thread = threading.current_thread().name
        ran = dict(zip(model.batches, model.threads, strict=True))
        assert ran[2] == loop_thread and ran[5] != loop_thread, ran
        assert ran[5].startswith("exec-capped")
        # Positive control: without the cap the same request runs on the loop.
        assert not executor.runs_inline(5)
        executor.inline_rows = 0
        assert executor.runs_inline(5)

    run(body)


def test_a_worker_thread_instance_takes_its_next_batch_while_one_runs() -> None:
    # batches_per_instance=2: the next batch waits on the instance's thread and starts
    # when the running one finishes, without a round trip through the event loop; 1
    # (the default) holds it in the queue, where later requests join it.
    async def body() -> None:
        for depth, handed in ((2, 2), (1, 1)):  # depth 1: the positive control
            gate = threading.Event()
            model = FakeModel(gate)
            executor = Executor(model, batched=True, label="piped", depth=depth)
            batcher = DynamicBatcher("fake", POLICY, [executor], VersionStats())
            rs = [request(value=i) for i in range(4)]
            batcher.submit(rs[0])
            await until(functools.partial(lambda m: m.running == 1, model))
            batcher.submit(rs[1])
            batcher.submit(rs[2])
            batcher.submit(rs[3])
            assert executor.running == handed
            assert batcher.queued == 4 - handed, "held back only once the places are taken"
            gate.set()
            outs = await asyncio.gather(*(r.future for r in rs))
            assert [o["y"][0, 0] for o in outs] == [0.0, 2.0, 4.0, 6.0]
            assert model.batches == ([1, 1, 2] if depth == 2 else [1, 3])
            assert executor.running == 0 and batcher.in_flight == 0

    run(body)


def test_an_idle_instance_is_preferred_over_a_busy_ones_free_place() -> None:
    async def body() -> None:
        gate = threading.Event()
        model = FakeModel(gate)
        executors = [Executor(model, batched=True, label=str(i), depth=2) for i in range(2)]
        batcher = DynamicBatcher("fake", POLICY, executors, VersionStats())
        first, second = request(), request()
        batcher.submit(first)
        await until(lambda: model.running == 1)
        batcher.submit(second)
        await until(lambda: model.running == 2)  # on the other instance, not queued behind
        assert sorted(e.running for e in executors) == [1, 1]
        gate.set()
        await asyncio.gather(first.future, second.future)

    run(body)
