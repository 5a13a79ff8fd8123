"""Several worker-thread instances share the queue: an instance that falls free takes its
share of the outstanding rows (queued and running), not the whole queue."""

from __future__ import annotations

import asyncio
import threading

import pytest

from tests.server.batching.test_batcher import (
    POLICY,
    FakeModel,
    Saturated,
    make,
    request,
    run_now,
    until,
)
from warpserve.server.batching.batcher import DynamicBatcher
from warpserve.server.batching.executor import Executor
from warpserve.server.batching.policy import BatchingPolicy, balanced_rows
from warpserve.server.stats import VersionStats


@pytest.mark.parametrize(
    ("limit", "queued", "running", "own", "instances", "expected"),
    [
        (8, 16, 0, 0, 2, 8),  # both idle: half each
        (8, 8, 8, 0, 2, 8),  # the other runs 8: this one takes the 8 waiting
        (64, 1, 14, 0, 2, 1),  # never more than is queued
        (64, 12, 2, 0, 2, 7),  # the other runs 2: 7 here, 5 left for it
        (4, 16, 0, 0, 2, 4),  # never more than the batch limit
        (64, 8, 16, 8, 2, 4),  # a free place beside this instance's own 8 rows
        (64, 2, 40, 30, 2, 1),  # at least one row, however much this one runs already
        (64, 30, 0, 0, 4, 8),  # four instances
    ],
)
def test_balanced_rows(
    limit: int, queued: int, running: int, own: int, instances: int, expected: int
) -> None:
    assert balanced_rows(limit, queued, running, own, instances) == expected


def burst(policy: BatchingPolicy) -> list[int]:
    """Two instances each busy with one request while six more queue; the batches run."""

    async def body() -> list[int]:
        gate = threading.Event()
        model = FakeModel(gate)
        batcher = make(policy, model, instances=2)
        first = [request(), request()]
        for r in first:
            batcher.submit(r)
        await until(lambda: model.running == 2)
        rest = [request() for _ in range(6)]
        for r in rest:
            batcher.submit(r)
        gate.set()
        await asyncio.gather(*(r.future for r in first + rest))
        return model.batches

    return asyncio.run(asyncio.wait_for(body(), 20))


def test_a_free_instance_leaves_the_other_its_share() -> None:
    # The first instance to fall free takes 4 of the 6 (the other still runs 1 row) and
    # leaves the rest to the other: not one batch of 6 beside single rows. (The other
    # takes both of the 2 left while the 4 run, or one after another should they finish
    # first.)
    batches = burst(POLICY)
    assert max(batches) == 4
    assert sum(batches) == 8


def test_triton_mode_takes_the_whole_queue() -> None:
    triton = BatchingPolicy(max_batch_size=8, dynamic=True, eager=False)
    assert sorted(burst(triton)) == [1, 1, 6]


def test_inline_instances_take_the_whole_queue() -> None:
    # Inline runs take turns on the one loop thread (execution: inline with two
    # instances): halving a batch between them would only run it in two goes.
    async def body() -> list[int]:
        model = FakeModel()
        executors = [Executor(model, batched=True, label=str(i), inline=True) for i in range(2)]
        policy = BatchingPolicy(max_batch_size=8, dynamic=True, max_queue_delay_us=20_000)
        batcher = DynamicBatcher("fake", policy, executors, VersionStats(), load=Saturated())
        rs = [request() for _ in range(4)]
        for r in rs:
            assert run_now(batcher, r.inputs, r.rows) is None, "a saturated loop holds"
            batcher.submit(r)
        await asyncio.gather(*(r.future for r in rs))
        return model.batches

    assert asyncio.run(asyncio.wait_for(body(), 20)) == [4]
