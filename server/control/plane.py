"""ControlPlane: what the servicers (gRPC now, REST alike) call for anything global.

With one process it is the registry and the shared-memory table themselves
(``LocalControlPlane``); with several it forwards to the supervisor, which applies the
change to every worker (``warpserve.server.control.coordinated``). The data path
(ModelInfer, metadata, readiness of a model) stays on each process's own registry.
"""

from __future__ import annotations

from typing import Protocol

from warpserve.protos import grpc_service_pb2 as pb


class ControlPlane(Protocol):
    async def load_request(self, request: pb.RepositoryModelLoadRequest) -> None:
        """RepositoryModelLoad: overrides in its parameters, a version, or the policy's."""

    async def load(self, name: str, versions: list[int] | None, activate: bool) -> None: ...

    async def unload(self, name: str, version: int | None) -> None: ...

    async def rollout(self, name: str, version: int, canary_percent: float) -> None: ...

    async def promote(self, name: str) -> None: ...

    async def rollback(self, name: str, reason: str, shadow: bool = False) -> None: ...

    async def guard_rollback(self, name: str, candidate: int, mode: str, reason: str) -> bool:
        """The latency guard's verdict: roll back only while ``candidate`` still serves
        in ``mode`` (another process's guard may have rolled it back already)."""
        ...

    async def set_split(self, name: str, weights: dict[int, float]) -> None: ...

    async def set_shadow(self, name: str, version: int, percent: float) -> None: ...

    async def shm_register(self, name: str, key: str, offset: int, byte_size: int) -> None: ...

    async def shm_unregister(self, name: str) -> None: ...

    async def statistics(self, name: str, version: str) -> pb.ModelStatisticsResponse:
        """ModelStatistics summed over every process."""
        ...

    async def ready(self) -> bool:
        """Whether every process of the server serves (this one is checked by the caller)."""
        ...
