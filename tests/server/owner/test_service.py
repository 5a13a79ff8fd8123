"""The model owner with two frontends: batches formed across frontends, tensors through
shared memory, errors crossing the hop with their status, cancellation, owner loss and
reconnection."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import numpy as np
import pytest

from tests.models import affine_reference, write_affine
from tests.server.owner.harness import (
    MODEL,
    ON_OWNER,
    gate,
    infer,
    owner_and_frontends,
    owner_batcher,
    rows,
    start_frontend,
    start_owner,
    stop_owner,
    version,
    write_repo,
)
from tests.server.progress import until
from warpserve.server.codec import InferRequest
from warpserve.server.errors import (
    BackendError,
    DeadlineExceeded,
    InvalidInput,
    ModelNotFound,
    QueueFull,
    Unavailable,
    WarpserveError,
)


def test_requests_of_two_frontends_meet_in_one_batch(tmp_path: Path) -> None:
    write_repo(tmp_path / "repo")

    async def main() -> None:
        async with owner_and_frontends(tmp_path / "repo") as (owner, (a, b)):
            batcher = owner_batcher(owner)
            opened = gate(owner)
            first = asyncio.create_task(infer(a, rows(1, 0)))
            await until(lambda: batcher.in_flight == 1 and not batcher.queued)
            # Queued while the first batch runs: one and two rows from each frontend.
            later = [
                asyncio.create_task(infer(frontend, rows(n, seed)))
                for seed, (frontend, n) in enumerate([(a, 1), (b, 2), (b, 1), (a, 2)], 1)
            ]
            await until(lambda: batcher.queued == 4)
            opened.set()
            await asyncio.gather(first, *later)
            stats = version(owner).stats
            assert stats.execution_count == 2  # the first alone, then the four together
            assert stats.inference_count == 7  # rows, a two-row request counting two
            assert sorted(stats.batches) == [1, 6]

    asyncio.run(main())


def test_frontend_statistics_stay_empty(tmp_path: Path) -> None:
    """Counted once, in the owner: the frontends hold no version of the model."""
    write_repo(tmp_path / "repo")

    async def main() -> None:
        async with owner_and_frontends(tmp_path / "repo") as (owner, (a, b)):
            for frontend in (a, b, a):
                await infer(frontend, rows(1, 3))
            assert version(owner).stats.success.count == 3
            assert not a.dataplane.registry.models and not b.dataplane.registry.models
            assert a.dataplane.registry.repository.model_names() == []

    asyncio.run(main())


@pytest.mark.parametrize("inline_below", [0, 1 << 30], ids=["shared-memory", "inline"])
def test_tensors_cross_both_ways(tmp_path: Path, inline_below: int) -> None:
    write_repo(tmp_path / "repo", max_batch=64)

    async def main() -> None:
        async with owner_and_frontends(tmp_path / "repo", inline_below=inline_below) as (
            owner,
            (a, b),
        ):
            xs = [rows(1 + i % 64, i) for i in range(40)]
            await asyncio.gather(*(infer(a if i % 2 else b, x) for i, x in enumerate(xs)))
            connections = list(owner.service.connections)
            await until(lambda: all(c.answers.blocks == 0 for c in connections))
            for frontend in (a, b):
                assert frontend.proxy._requests is not None
                assert frontend.proxy._requests.blocks == 0
            # What crossed through shared memory, and what did not.
            shared = inline_below == 0
            for frontend in (a, b):
                assert frontend.proxy._requests is not None
                assert (frontend.proxy._requests.allocations == 20) is shared
            assert all((c.answers.allocations == 20) is shared for c in connections)

    asyncio.run(main())


def test_blocks_are_used_then_released(tmp_path: Path) -> None:
    write_repo(tmp_path / "repo")

    async def main() -> None:
        async with owner_and_frontends(tmp_path / "repo", count=1, inline_below=0) as (
            owner,
            (a,),
        ):
            opened = gate(owner)
            task = asyncio.create_task(infer(a, rows(2, 1)))
            requests = a.proxy._requests
            assert requests is not None
            await until(lambda: requests.blocks == 1)  # the input, until answered
            opened.set()
            await task
            assert requests.blocks == 0
            (connection,) = owner.service.connections
            await until(lambda: connection.answers.blocks == 0)

    asyncio.run(main())


def _code(exc: BaseException) -> grpc.StatusCode:
    assert isinstance(exc, WarpserveError)
    return exc.code


def test_errors_cross_with_their_status(tmp_path: Path) -> None:
    write_repo(
        tmp_path / "repo",
        batching="default_queue_policy { max_queue_size: 1 allow_timeout_override: true }",
    )

    async def main() -> None:
        async with owner_and_frontends(tmp_path / "repo") as (owner, (a, b)):
            plane = a.dataplane
            with pytest.raises(InvalidInput, match="INPUT0") as bad:
                await plane.infer(InferRequest(MODEL, "", "", {"INPUT0": rows(1, 0)[:, :3]}))
            assert _code(bad.value) is grpc.StatusCode.INVALID_ARGUMENT
            with pytest.raises(ModelNotFound) as missing:
                await plane.infer(InferRequest(MODEL, "7", "", {"INPUT0": rows(1, 0)}))
            assert _code(missing.value) is grpc.StatusCode.NOT_FOUND
            opened = gate(owner)
            running = asyncio.create_task(infer(a, rows(1, 1)))
            batcher = owner_batcher(owner)
            await until(lambda: batcher.in_flight == 1)
            timed = InferRequest(
                MODEL, "", "", {"INPUT0": rows(1, 2)}, parameters={"timeout": 1000}
            )
            with pytest.raises(DeadlineExceeded) as late:
                await b.dataplane.infer(timed)
            assert _code(late.value) is grpc.StatusCode.DEADLINE_EXCEEDED
            with pytest.raises(DeadlineExceeded):  # the client's own deadline
                await b.dataplane.infer(InferRequest(MODEL, "", "", {"INPUT0": rows(1, 5)}), 0.001)
            queued = asyncio.create_task(infer(b, rows(1, 3)))
            await until(lambda: batcher.queued == 1)
            with pytest.raises(QueueFull, match="queue full") as full:
                await infer(a, rows(1, 4))
            assert _code(full.value) is grpc.StatusCode.UNAVAILABLE
            opened.set()
            await asyncio.gather(running, queued)

    asyncio.run(main())


class Raising:
    def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise RuntimeError("the model broke")

    def close(self) -> None:
        pass


def test_model_error_is_internal_for_that_request(tmp_path: Path) -> None:
    write_repo(tmp_path / "repo")

    async def main() -> None:
        async with owner_and_frontends(tmp_path / "repo") as (owner, (a, _)):
            batcher = owner_batcher(owner)
            healthy = batcher.executors[0].instance
            batcher.executors[0].instance = Raising()
            with pytest.raises(BackendError, match="the model broke") as broke:
                await infer(a, rows(1, 0))
            assert _code(broke.value) is grpc.StatusCode.INTERNAL
            batcher.executors[0].instance = healthy
            await infer(a, rows(1, 0))

    asyncio.run(main())


def test_cancelled_request_leaves_the_owners_queue(tmp_path: Path) -> None:
    write_repo(tmp_path / "repo")

    async def main() -> None:
        async with owner_and_frontends(tmp_path / "repo", inline_below=0) as (owner, (a, b)):
            batcher = owner_batcher(owner)
            opened = gate(owner)
            running = asyncio.create_task(infer(a, rows(1, 1)))
            await until(lambda: batcher.in_flight == 1)
            gone = asyncio.create_task(infer(b, rows(1, 2)))
            await until(lambda: batcher.queued == 1)
            gone.cancel()  # its client went away
            await until(lambda: batcher.queued == 0)
            requests = b.proxy._requests
            assert requests is not None
            await until(lambda: requests.blocks == 0)  # released once the owner let go
            assert version(owner).stats.failures_by_reason == {"CANCELLED": 1}
            opened.set()
            await running
            assert version(owner).stats.inference_count == 1

    asyncio.run(main())


def test_owner_loss_is_unavailable_until_it_returns(tmp_path: Path) -> None:
    repo, socket_path = tmp_path / "repo", tmp_path / "sockets"
    write_repo(repo)

    async def main() -> None:
        owner = await start_owner(repo, socket_path)
        frontend = await start_frontend(repo, socket_path)
        try:
            await infer(frontend, rows(1, 0))
            opened = gate(owner)
            batcher = owner_batcher(owner)
            in_flight = asyncio.create_task(infer(frontend, rows(1, 1)))
            await until(lambda: batcher.in_flight == 1)
            for connection in list(owner.service.connections):
                connection.channel.close()  # as when the owner process dies
            await owner.service.stop_accepting()
            with pytest.raises(Unavailable, match="went away"):
                await in_flight
            with pytest.raises(Unavailable, match="not running") as down:
                await infer(frontend, rows(1, 2))
            assert _code(down.value) is grpc.StatusCode.UNAVAILABLE
            opened.set()
            await stop_owner(owner)
            owner = await start_owner(repo, socket_path)  # the supervisor's restart
            await frontend.proxy.wait_connected(10)
            await infer(frontend, rows(1, 3))
        finally:
            await frontend.proxy.close()
            await stop_owner(owner)

    asyncio.run(main())


def test_a_fallback_in_the_owner_answers_with_its_parameters(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_repo(repo, extra='parameters { key: "fallback_model" value: { string_value: "spare" } }')
    write_affine(repo, "spare", extra=ON_OWNER)

    async def main() -> None:
        async with owner_and_frontends(repo, count=1) as (owner, (a,)):
            batcher = owner_batcher(owner)
            batcher.executors[0].instance = Raising()
            request = InferRequest(MODEL, "", "", {"INPUT0": rows(1, 0)})
            answered, outputs = await a.dataplane.infer(request)
            assert answered.name == "spare"
            assert request.response_parameters == {
                "fallback": True,
                "fallback_from": MODEL,
                "fallback_reason": "error",
            }
            np.testing.assert_allclose(
                outputs["OUTPUT0"], affine_reference(rows(1, 0), scale=1.0), rtol=1e-5
            )

    asyncio.run(main())
