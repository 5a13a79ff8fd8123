"""Load shedding by priority: over its level's queue size a request is refused with a
retryable UNAVAILABLE, lower levels first, while higher levels still queue and run."""

from __future__ import annotations

import grpc
import pytest

from tests.server.batching.test_batcher import occupied, request, run
from warpserve.protos import model_config_pb2 as mc
from warpserve.server.batching.policy import BatchingPolicy, from_config
from warpserve.server.errors import LoadShed, ModelLoadError

POLICY = BatchingPolicy(
    max_batch_size=1, dynamic=True, priority_levels=3, shed_queue_size=(0, 6, 3)
)


def test_lowest_level_is_shed_first_and_the_top_level_never() -> None:
    async def body() -> None:
        gate, model, batcher = await occupied(POLICY, request(priority=1))
        accepted = [request(priority=3) for _ in range(3)]
        for r in accepted:
            batcher.submit(r)
        with pytest.raises(LoadShed, match="3 requests queued, at or over 3 for priority 3"):
            batcher.submit(request(priority=3))
        middle = [request(priority=2) for _ in range(3)]
        for r in middle:  # level 2 still queues until 6
            batcher.submit(r)
        with pytest.raises(LoadShed, match="priority 2"):
            batcher.submit(request(priority=2))
        top = [request(priority=1) for _ in range(20)]
        for r in top:  # level 1 is never shed
            batcher.submit(r)
        assert batcher.shed == [0, 1, 1]
        gate.set()
        for r in [*accepted, *middle, *top]:
            assert (await r.future)["y"].tolist() == [[2.0, 2.0]]
        assert model.batches == [1] * (1 + 3 + 3 + 20)

    run(body)


def test_shedding_stops_once_the_queue_drains() -> None:
    async def body() -> None:
        gate, _, batcher = await occupied(POLICY)
        queued = [request(priority=3) for _ in range(3)]
        for r in queued:
            batcher.submit(r)
        with pytest.raises(LoadShed):
            batcher.submit(request(priority=3))
        gate.set()
        for r in queued:
            await r.future
        later = request(priority=3)
        batcher.submit(later)
        await later.future

    run(body)


def test_a_shed_request_is_unavailable_for_clients_to_retry() -> None:
    assert LoadShed.code is grpc.StatusCode.UNAVAILABLE


def _config(levels: int, sizes: str) -> mc.ModelConfig:
    config = mc.ModelConfig(name="m", max_batch_size=8)
    config.dynamic_batching.priority_levels = levels
    config.parameters["shed_queue_size"].string_value = sizes
    return config


def test_shed_sizes_come_from_the_config_one_per_priority_level() -> None:
    assert from_config(_config(2, "0,64")).shed_queue_size == (0, 64)
    assert from_config(_config(2, "0,0")).shed_queue_size == ()
    with pytest.raises(ModelLoadError, match="3 values for 2 priority level"):
        from_config(_config(2, "0,1,2"))
    with pytest.raises(ModelLoadError, match="shed_queue_size='0,-1'"):
        from_config(_config(2, "0,-1"))
