"""One process's control plane: two-phase loads, and a replacement worker taking over
another's models, routing and regions from its snapshot."""

from __future__ import annotations

import asyncio
from multiprocessing import shared_memory
from pathlib import Path

from tests.models import write_affine
from warpserve.server.control.local import LocalControlPlane, worker_op
from warpserve.server.lifecycle.registry import ModelRegistry
from warpserve.server.repository.repository import ModelRepository
from warpserve.server.shm import SharedMemoryRegions


def plane(repo: Path) -> LocalControlPlane:
    registry = ModelRegistry(ModelRepository(repo), grace_period_s=60)
    return LocalControlPlane(registry, SharedMemoryRegions(allowed=True))


def test_prepare_routes_nothing_until_commit_and_abort_unloads_what_it_loaded(
    tmp_path: Path,
) -> None:
    write_affine(tmp_path, "m", (1, 2))

    async def scenario() -> None:
        local = plane(tmp_path)
        await local.load("m", [1], activate=True)
        prepared = await worker_op(local, "prepare", {"name": "m", "versions": [2]})
        assert prepared == {"wanted": [2], "fresh": [2]}
        served = local.registry.models["m"]
        assert served.router.active == 1 and served.versions[2].ready
        await worker_op(local, "abort", {"name": "m", "fresh": [2]})
        assert served.router.active == 1 and not served.versions[2].ready
        await worker_op(local, "prepare", {"name": "m", "versions": [2]})
        await worker_op(local, "commit_load", {"name": "m", "wanted": [2], "activate": True})
        assert served.router.active == 2 and served.router.previous == 1
        await local.registry.close()

    asyncio.run(scenario())


def test_a_replacement_adopts_the_versions_routing_and_regions_of_a_snapshot(
    tmp_path: Path,
) -> None:
    write_affine(tmp_path, "m", (1, 2))
    block = shared_memory.SharedMemory(create=True, size=64)

    async def scenario() -> None:
        old, new = plane(tmp_path), plane(tmp_path)
        await old.load("m", [1], activate=True)
        await old.rollout("m", 2, canary_percent=25)
        await old.shm_register("r", "/" + block.name, 0, 64)
        state = await worker_op(old, "snapshot", {})
        await worker_op(new, "adopt", {"state": state})
        a, b = old.registry.models["m"].router, new.registry.models["m"].router
        assert (
            (b.active, b.canary, b.previous)
            == (a.active, a.canary, a.previous)
            == (1, {2: 0.25}, None)
        )
        assert new.registry.models["m"].ready_versions() == [1, 2]
        assert [r.name for r in new.shm.status("")] == ["r"]
        await old.registry.close()
        await new.registry.close()

    try:
        asyncio.run(scenario())
    finally:
        block.close()
        block.unlink()


def test_a_guard_verdict_rolls_back_once_however_many_processes_reach_it(
    tmp_path: Path,
) -> None:
    write_affine(tmp_path, "m", (1, 2))

    async def scenario() -> None:
        local = plane(tmp_path)
        await local.load("m", [1], activate=True)
        await local.rollout("m", 2, canary_percent=0)
        router = local.registry.models["m"].router
        assert await local.guard_rollback("m", 2, "full", "latency_guard")
        assert router.active == 1
        # A second process's guard reaching the same verdict must not roll back again
        # (that would route to the bad version, now the previous one).
        assert not await local.guard_rollback("m", 2, "full", "latency_guard")
        assert router.active == 1
        await local.registry.close()

    asyncio.run(scenario())
