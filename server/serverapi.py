"""What a transport asks of the server besides inference, the same for every transport.

The gRPC servicer and the REST routes translate their wire formats and call these:
health, metadata, configuration, statistics, the repository API and client shared
memory. Inference goes through the data plane. Errors leave as WarpserveError. The calls
whose answer or effect is server-wide (readiness, statistics, loads and unloads, shared
memory regions) go through the control plane, which with several server processes
applies or sums them across all of them (``warpserve.server.control``). Calls about a
model placed in the model owner are answered by the owner (``owned``, set by
``warpserve.server.owner``), for every transport alike; lists take both.
"""

from __future__ import annotations

from typing import Protocol

from warpserve import __version__
from warpserve.protos import admin_pb2 as apb
from warpserve.protos import grpc_service_pb2 as pb
from warpserve.protos import model_config_pb2 as mc
from warpserve.server.control.local import LocalControlPlane
from warpserve.server.control.plane import ControlPlane
from warpserve.server.dataplane import DataPlane
from warpserve.server.errors import InvalidInput
from warpserve.server.grpc import reports
from warpserve.server.lifecycle.registry import ModelRegistry
from warpserve.server.lifecycle.served import parse_version
from warpserve.server.shm import Region, SharedMemoryRegions

SERVER_NAME = "warpserve"
EXTENSIONS = ["classification", "model_repository", "statistics", "model_configuration"]
SHM_EXTENSION = "system_shared_memory"
ONLY_DEFAULT_REPOSITORY = "only the default repository (empty repository_name) exists"


class OwnedModels(Protocol):
    """Models another process serves (the model owner) and the calls it answers about
    them. The ``listed_*`` calls answer with nothing while that process is down: its
    models are unavailable then, not unknown, and the rest of a list still answers."""

    def owns(self, name: str) -> bool: ...

    async def model_ready(self, name: str, version: str) -> bool: ...

    async def model_metadata(self, name: str, version: str) -> pb.ModelMetadataResponse: ...

    async def model_config(self, name: str, version: str) -> mc.ModelConfig: ...

    async def statistics(self, name: str, version: str) -> pb.ModelStatisticsResponse: ...

    async def listed_statistics(self) -> list[pb.ModelStatistics]: ...

    async def listed_index(
        self, ready_only: bool
    ) -> list[pb.RepositoryIndexResponse.ModelIndex]: ...

    async def listed_status(self) -> list[apb.ModelStatus]: ...

    async def load(self, request: pb.RepositoryModelLoadRequest) -> None: ...

    async def unload(self, name: str) -> None: ...


class ServerApi:
    """Health, metadata, statistics, repository and shared-memory calls."""

    def __init__(
        self,
        dataplane: DataPlane,
        registry: ModelRegistry,
        shm: SharedMemoryRegions,
        control: ControlPlane | None = None,
    ) -> None:
        self.dataplane = dataplane
        self.registry = registry
        self.shm = shm
        self.control = control if control is not None else LocalControlPlane(registry, shm)
        self.live = True
        self.owned: OwnedModels | None = None

    def _owner_of(self, name: str) -> OwnedModels | None:
        owned = self.owned
        return owned if owned is not None and name and owned.owns(name) else None

    async def server_ready(self) -> bool:
        ready = not self.dataplane.calls.draining and all(
            served.ready_versions() for served in self.registry.models.values()
        )
        return ready and await self.control.ready()

    async def model_ready(self, name: str, version: str = "") -> bool:
        if (owner := self._owner_of(name)) is not None:
            return await owner.model_ready(name, version)
        if self.dataplane.calls.draining:
            return False
        return self.registry.is_ready(name, version)

    def extensions(self) -> list[str]:
        return [*EXTENSIONS, SHM_EXTENSION] if self.shm.allowed else list(EXTENSIONS)

    def server_metadata(self) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(
            name=SERVER_NAME, version=__version__, extensions=self.extensions()
        )

    async def model_metadata(self, name: str, version: str = "") -> pb.ModelMetadataResponse:
        if (owner := self._owner_of(name)) is not None:
            return await owner.model_metadata(name, version)
        mv = self.registry.describe(name, version)
        return reports.metadata(mv, self.registry.model(name).ready_versions())

    async def model_config(self, name: str, version: str = "") -> mc.ModelConfig:
        if (owner := self._owner_of(name)) is not None:
            return await owner.model_config(name, version)
        return self.registry.describe(name, version).config

    async def statistics(self, name: str = "", version: str = "") -> pb.ModelStatisticsResponse:
        if (owner := self._owner_of(name)) is not None:
            return await owner.statistics(name, version)
        if name:
            self.registry.model(name)  # an unknown model is NOT_FOUND, not an empty answer
        if version:
            parse_version(version)
        answer = await self.control.statistics(name, version)
        if not name and self.owned is not None:
            answer.model_stats.extend(await self.owned.listed_statistics())
        return answer

    async def repository_index(self, ready_only: bool = False) -> pb.RepositoryIndexResponse:
        index = reports.index(self.registry, ready_only=ready_only)
        if self.owned is not None:
            index.models.extend(await self.owned.listed_index(ready_only))
        return index

    async def load(self, request: pb.RepositoryModelLoadRequest) -> None:
        if (owner := self._owner_of(request.model_name)) is not None:
            await owner.load(request)
        else:
            await self.control.load_request(request)

    async def unload(self, name: str, repository_name: str = "") -> None:
        if repository_name:
            raise InvalidInput(ONLY_DEFAULT_REPOSITORY)
        if (owner := self._owner_of(name)) is not None:
            await owner.unload(name)
        else:
            await self.control.unload(name, None)

    def shm_status(self, name: str = "") -> list[Region]:
        return self.shm.status(name)

    async def shm_register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        await self.control.shm_register(name, key, offset, byte_size)

    async def shm_unregister(self, name: str = "") -> None:
        await self.control.shm_unregister(name)
