"""The supervisor's coordinator over fake workers: a change applies everywhere or
nowhere, in the order the contract needs."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import pytest

from warpserve.protos import grpc_service_pb2 as pb
from warpserve.server.errors import AlreadyExists, FailedPrecondition, ModelLoadError
from warpserve.server.repository.repository import ModelRepository
from warpserve.server.workers.coordinator import Coordinator, WorkerLink


class FakeWorker:
    def __init__(self, fail: dict[str, Exception] | None = None) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.fail = fail or {}

    async def call(self, op: str, timeout: float | None = None, **args: Any) -> Any:
        self.calls.append((op, args))
        if op in self.fail:
            raise self.fail[op]
        if op == "prepare":
            return {"wanted": [2], "fresh": [2]}
        if op == "statistics":
            stats = pb.ModelStatistics(name="m", version="1", inference_count=3)
            reply = pb.ModelStatisticsResponse(model_stats=[stats])
            return base64.b64encode(reply.SerializeToString()).decode()
        return None

    def ops(self) -> list[str]:
        return [op for op, _ in self.calls]


def coordinator(tmp_path: Any, *workers: FakeWorker) -> Coordinator:
    coord = Coordinator(ModelRepository(tmp_path), len(workers))
    for i, worker in enumerate(workers):
        coord.workers[i] = WorkerLink(i, 1000 + i, worker)  # type: ignore[arg-type]
    coord.started.set()
    return coord


def change(coord: Coordinator, op: str, **args: Any) -> Any:
    return asyncio.run(coord.handle(op, args))


def test_a_load_routes_nowhere_until_every_worker_loaded(tmp_path: Any) -> None:
    a, b = FakeWorker(), FakeWorker()
    change(coordinator(tmp_path, a, b), "load", name="m", versions=None, activate=True)
    for worker in (a, b):
        assert worker.ops() == ["prepare", "commit_load"]
        assert worker.calls[1][1] == {"name": "m", "wanted": [2], "activate": True}


def test_a_load_failed_anywhere_is_undone_where_it_loaded_and_fails_the_call(
    tmp_path: Any,
) -> None:
    ok, bad = FakeWorker(), FakeWorker({"prepare": ModelLoadError("version 2: broken")})
    with pytest.raises(ModelLoadError, match="broken"):
        change(coordinator(tmp_path, ok, bad), "rollout", name="m", version=2, canary_percent=0)
    assert ok.ops() == ["prepare", "abort"] and ok.calls[1][1] == {"name": "m", "fresh": [2]}
    assert bad.ops() == ["prepare"]  # the failed version is left failed, the old one serves


def test_a_routing_change_refused_by_the_first_worker_reaches_no_other(tmp_path: Any) -> None:
    first = FakeWorker({"rollback": FailedPrecondition("no previous version")})
    other = FakeWorker()
    with pytest.raises(FailedPrecondition):
        change(coordinator(tmp_path, first, other), "rollback", name="m", reason="x", shadow=False)
    assert other.calls == []


def test_a_region_refused_by_a_later_worker_is_unregistered_everywhere(tmp_path: Any) -> None:
    first, later = FakeWorker(), FakeWorker({"shm_register": AlreadyExists("taken")})
    with pytest.raises(AlreadyExists):
        change(
            coordinator(tmp_path, first, later),
            "shm_register", name="r", key="/k", offset=0, byte_size=8,
        )  # fmt: skip
    assert first.ops() == ["shm_register", "shm_unregister"]
    assert later.ops() == ["shm_register", "shm_unregister"]


def test_statistics_are_summed_over_the_workers(tmp_path: Any) -> None:
    coord = coordinator(tmp_path, FakeWorker(), FakeWorker(), FakeWorker())
    reply = pb.ModelStatisticsResponse.FromString(
        base64.b64decode(change(coord, "statistics", name="m", version=""))
    )
    assert [s.inference_count for s in reply.model_stats] == [9]


def test_ready_only_when_every_worker_serves_and_not_after_shutdown(tmp_path: Any) -> None:
    coord = coordinator(tmp_path, FakeWorker(), FakeWorker())
    assert not change(coord, "ready")
    change(coord, "serving", index=0)
    assert not change(coord, "ready")
    change(coord, "serving", index=1)
    assert change(coord, "ready")
    coord.forget(1, 1001)  # died: not ready until its replacement serves
    assert not change(coord, "ready")
    coord.shutting_down = True
    assert not change(coord, "ready")
