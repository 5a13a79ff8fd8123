"""The control plane of one process: the registry and shared-memory table themselves.

``LocalControlPlane`` serves a single-process server directly, and in a server of
several processes it is what each worker's internal service calls (``worker_ops``),
including the pieces only coordination needs: two-phase loads, a snapshot of the
routing and regions for a replacement worker, and that worker adopting it.
"""

from __future__ import annotations

import base64
import logging
from typing import Any

from warpserve.protos import grpc_service_pb2 as pb
from warpserve.server.errors import InvalidInput, WarpserveError
from warpserve.server.grpc import reports
from warpserve.server.lifecycle.guarding import ServingMode
from warpserve.server.lifecycle.registry import ModelRegistry, check_rollout
from warpserve.server.shm import SharedMemoryRegions

log = logging.getLogger(__name__)


class LocalControlPlane:
    def __init__(self, registry: ModelRegistry, shm: SharedMemoryRegions | None) -> None:
        self.registry = registry
        self.shm = shm if shm is not None else SharedMemoryRegions(allowed=False)

    async def load_request(self, request: pb.RepositoryModelLoadRequest) -> None:
        await reports.load_request(self.registry, request)

    async def load(self, name: str, versions: list[int] | None, activate: bool) -> None:
        await self.registry.load(name, versions, activate=activate)

    async def unload(self, name: str, version: int | None) -> None:
        await self.registry.unload(name, version)

    async def rollout(self, name: str, version: int, canary_percent: float) -> None:
        await self.registry.rollout(name, version, canary_percent)

    async def promote(self, name: str) -> None:
        self.registry.promote(name)

    async def rollback(self, name: str, reason: str, shadow: bool = False) -> None:
        self.registry.rollback(name, reason, shadow=shadow)

    async def guard_rollback(self, name: str, candidate: int, mode: str, reason: str) -> bool:
        served = self.registry.models.get(name)
        if served is None:
            return False
        router = served.router
        routed = {
            ServingMode.FULL.value: router.active == candidate,
            ServingMode.CANARY.value: candidate in router.canary or router.active == candidate,
            ServingMode.SHADOW.value: router.shadow_version == candidate,
        }.get(mode, False)
        if not routed:
            return False  # already rolled back (by this verdict elsewhere, or a person)
        self.registry.rollback(name, reason, shadow=mode == ServingMode.SHADOW.value)
        return True

    async def set_split(self, name: str, weights: dict[int, float]) -> None:
        self.registry.set_split(name, weights)

    async def set_shadow(self, name: str, version: int, percent: float) -> None:
        self.registry.set_shadow(name, version, percent)

    async def shm_register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        self.shm.register(name, key, offset, byte_size)

    async def shm_unregister(self, name: str) -> None:
        self.shm.unregister(name)

    async def statistics(self, name: str, version: str) -> pb.ModelStatisticsResponse:
        return reports.statistics(self.registry, name, version)

    async def ready(self) -> bool:
        return True

    # -- for a supervisor ----------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """What a replacement worker must hold before it accepts calls: each model's
        ready versions and routing, and the registered shared-memory regions."""
        models = {}
        for name, served in self.registry.models.items():
            router = served.router
            models[name] = {
                "versions": served.ready_versions(),
                "active": router.active,
                "previous": router.previous,
                "canary": {str(v): share for v, share in router.canary.items()},
                "shadow_version": router.shadow_version,
                "shadow_share": router.shadow_share,
            }
        regions = []
        if self.shm.allowed:
            regions = [[r.name, r.key, r.offset, r.byte_size] for r in self.shm.status("")]
        return {"models": models, "regions": regions}

    async def adopt(self, state: dict[str, Any]) -> None:
        """Load and route as ``state`` says (a snapshot of a running worker)."""
        for name, model in state["models"].items():
            if not model["versions"]:
                continue
            await self.registry.prepare(name, model["versions"])
            router = self.registry.models[name].router
            router.active, router.previous = model["active"], model["previous"]
            router.canary = {int(v): share for v, share in model["canary"].items()}
            router.shadow_version = model["shadow_version"]
            router.shadow_share = model["shadow_share"]
            routed = {v for v in model["versions"] if router.routes_to(v)}
            self.registry.models[name].retire_unwanted(routed, self.registry.grace_period_s)
        for name, key, offset, byte_size in state["regions"]:
            try:
                self.shm.register(name, key, offset, byte_size)
            except WarpserveError as exc:  # the client removed its object meanwhile
                log.warning("shared memory region '%s' not taken over: %s", name, exc)


async def worker_op(plane: LocalControlPlane, op: str, args: dict[str, Any]) -> Any:
    """One internal call from the supervisor, applied to this worker alone."""
    registry = plane.registry
    if op == "prepare":
        prepared = await registry.prepare(args["name"], args["versions"])
        return {"wanted": prepared.wanted, "fresh": prepared.fresh}
    if op == "commit_load":
        return await registry.commit_load(args["name"], args["wanted"], args["activate"])
    if op == "commit_rollout":
        check_rollout(args["version"], args["canary_percent"])
        return await registry.commit_rollout(args["name"], args["version"], args["canary_percent"])
    if op == "abort":
        return await registry.abort(args["name"], args["fresh"])
    if op == "statistics":
        reply = await plane.statistics(args["name"], args["version"])
        return base64.b64encode(reply.SerializeToString()).decode()
    if op == "snapshot":
        return plane.snapshot()
    if op == "adopt":
        return await plane.adopt(args["state"])
    if op == "set_split":
        weights = {int(v): w for v, w in args["weights"].items()}
        return await plane.set_split(args["name"], weights)
    if op in SIMPLE_OPS:
        return await getattr(plane, op)(**args)
    raise InvalidInput(f"unknown internal call {op!r}")


SIMPLE_OPS = frozenset(
    {
        "unload",
        "promote",
        "rollback",
        "guard_rollback",
        "set_shadow",
        "shm_register",
        "shm_unregister",
    }
)
