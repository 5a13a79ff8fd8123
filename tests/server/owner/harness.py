"""An owner and its frontends in one event loop: the owner's registry, data plane and
service on a unix socket, and each frontend's proxy and data plane, as the processes
of a multi-process server hold them (the process boundary is the socket and the
shared memory, which these cross for real)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tests.models import affine_reference, write_affine
from tests.server.progress import GatedModel
from warpserve.server.batching.batcher import DynamicBatcher
from warpserve.server.codec import InferRequest
from warpserve.server.dataplane import DataPlane
from warpserve.server.lifecycle.registry import ModelRegistry
from warpserve.server.lifecycle.version import ModelVersion
from warpserve.server.owner import process
from warpserve.server.owner.placement import LOCAL, PlacedRepository
from warpserve.server.owner.process import RunningOwner
from warpserve.server.owner.proxy import OwnerProxy
from warpserve.server.repository.repository import ModelRepository

MODEL = "affine"
ON_OWNER = 'parameters { key: "warpserve.placement" value: { string_value: "owner" } }'
# Worker threads: a gated model must not block the owner's loop.
ON_THREADS = 'parameters { key: "execution" value: { string_value: "thread" } }'


def version(owner: RunningOwner, number: int = 1) -> ModelVersion:
    return owner.registry.models[MODEL].versions[number]


def owner_batcher(owner: RunningOwner) -> DynamicBatcher:
    loaded = version(owner).batcher
    assert loaded is not None, "the version is not loaded"
    return loaded


def placed_registry(repo: Path, side: str) -> ModelRegistry:
    """A registry of the models placed on ``side`` (LOCAL: a frontend's, OWNER: the owner's)."""
    return ModelRegistry(PlacedRepository(ModelRepository(repo), side))


@dataclass
class Frontend:
    proxy: OwnerProxy
    dataplane: DataPlane


def write_repo(repo: Path, extra: str = "", **kw: Any) -> None:
    write_affine(repo, MODEL, extra=f"{ON_OWNER}\n{ON_THREADS}\n{extra}", **kw)


async def start_owner(repo: Path, socket_dir: Path) -> RunningOwner:
    socket_dir.mkdir(mode=0o700, exist_ok=True)
    return await process.start_owner(repo, socket_dir)


async def stop_owner(owner: RunningOwner) -> None:
    assert await owner.stop(30) == 0


async def start_frontend(repo: Path, socket_dir: Path, **kw: Any) -> Frontend:
    registry = placed_registry(repo, LOCAL)
    proxy = OwnerProxy(socket_dir / process.DATA_SOCKET, {MODEL}, **kw)
    await proxy.start()
    await proxy.wait_connected(10)
    return Frontend(proxy, DataPlane(registry, owner=proxy))


@contextlib.asynccontextmanager
async def owner_and_frontends(
    repo: Path, count: int = 2, **kw: Any
) -> AsyncIterator[tuple[RunningOwner, list[Frontend]]]:
    socket_dir = repo.parent / "sockets"
    owner = await start_owner(repo, socket_dir)
    frontends = []
    try:
        for _ in range(count):
            frontends.append(await start_frontend(repo, socket_dir, **kw))
        yield owner, frontends
    finally:
        for frontend in frontends:
            await frontend.proxy.close()
        await stop_owner(owner)


def rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-2, 2, (n, 4)).astype(np.float32)


async def infer(frontend: Frontend, x: np.ndarray, **kw: Any) -> np.ndarray:
    """One request through the frontend's data plane; checks the numbers."""
    answered, outputs = await frontend.dataplane.infer(
        InferRequest(MODEL, "", "", {"INPUT0": x}), **kw
    )
    np.testing.assert_allclose(
        outputs["OUTPUT0"], affine_reference(x, scale=float(answered.version)), rtol=1e-5, atol=1e-5
    )
    return outputs["OUTPUT0"]


def gate(owner: RunningOwner) -> threading.Event:
    """Hold the owner's executions until the returned event is set."""
    opened = threading.Event()
    for executor in owner_batcher(owner).executors:
        executor.instance = GatedModel(executor.instance, opened)
    return opened
