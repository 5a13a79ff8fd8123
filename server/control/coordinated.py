"""The control plane of a worker among several: every change goes to the supervisor,
which applies it to all workers and answers once all have (or the first failure)."""

from __future__ import annotations

import base64

from warpserve.protos import grpc_service_pb2 as pb
from warpserve.server.control.wire import SUPERVISOR_SERVICE, ControlClient


class CoordinatedControlPlane:
    def __init__(self, supervisor_socket: str) -> None:
        self.client = ControlClient(supervisor_socket, SUPERVISOR_SERVICE)

    async def load_request(self, request: pb.RepositoryModelLoadRequest) -> None:
        encoded = base64.b64encode(request.SerializeToString()).decode()
        await self.client.call("load_request", request=encoded)

    async def load(self, name: str, versions: list[int] | None, activate: bool) -> None:
        await self.client.call("load", name=name, versions=versions, activate=activate)

    async def unload(self, name: str, version: int | None) -> None:
        await self.client.call("unload", name=name, version=version)

    async def rollout(self, name: str, version: int, canary_percent: float) -> None:
        await self.client.call("rollout", name=name, version=version, canary_percent=canary_percent)

    async def promote(self, name: str) -> None:
        await self.client.call("promote", name=name)

    async def rollback(self, name: str, reason: str, shadow: bool = False) -> None:
        await self.client.call("rollback", name=name, reason=reason, shadow=shadow)

    async def guard_rollback(self, name: str, candidate: int, mode: str, reason: str) -> bool:
        return bool(
            await self.client.call(
                "guard_rollback", name=name, candidate=candidate, mode=mode, reason=reason
            )
        )

    async def set_split(self, name: str, weights: dict[int, float]) -> None:
        await self.client.call("set_split", name=name, weights=weights)

    async def set_shadow(self, name: str, version: int, percent: float) -> None:
        await self.client.call("set_shadow", name=name, version=version, percent=percent)

    async def shm_register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        await self.client.call(
            "shm_register", name=name, key=key, offset=offset, byte_size=byte_size
        )

    async def shm_unregister(self, name: str) -> None:
        await self.client.call("shm_unregister", name=name)

    async def statistics(self, name: str, version: str) -> pb.ModelStatisticsResponse:
        encoded = await self.client.call("statistics", name=name, version=version)
        return pb.ModelStatisticsResponse.FromString(base64.b64decode(encoded))

    async def ready(self) -> bool:
        return bool(await self.client.call("ready"))
