"""A frontend's calls about owner-placed models, answered by the model owner.

Everything but inference about a model placed on the owner (ModelReady, its metadata
and config, its statistics, loads and unloads, and the admin API: rollout, rollback,
split, shadow, status) is forwarded to the owner's control services, so the one
loaded copy is the one that answers, changes and counts. Calls that list every model
(RepositoryIndex, ModelStatistics and the admin Status without a name) answer with
the frontend's own models and the owner's together.

The server API's calls go through ``OwnerCalls``, which ``forward_owned`` sets beneath
the inference servicer's server API, so gRPC and REST (which share that object) both
reach the owner. The admin servicer's methods are wrapped by ``forward_owned_admin``
before it is registered with the gRPC server; admin calls are checked for credentials
there first: the owner's socket takes what the frontend forwards without asking again.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from warpserve.protos import admin_pb2 as apb
from warpserve.protos import admin_pb2_grpc as apb_grpc
from warpserve.protos import grpc_service_pb2 as pb
from warpserve.protos import grpc_service_pb2_grpc as pb_grpc
from warpserve.protos import model_config_pb2 as mc
from warpserve.server.errors import WarpserveError
from warpserve.server.owner.proxy import OwnerProxy

Handler = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
T = TypeVar("T")

ADMIN_CALLS = {
    name: "model"
    for name in ("Rollout", "Promote", "Rollback", "SetTrafficSplit", "SetShadow", "Load", "Unload")
}
# Lists of every model: the frontend's models and the owner's, in one answer.
ADMIN_LISTS = {"Status": "models"}
# gRPC's own words when the owner's socket is not there or drops: the owner is down,
# as opposed to the owner answering UNAVAILABLE itself (a model still loading).
_TRANSPORT = ("failed to connect", "Socket closed", "Connection reset", "Broken pipe")


def forward_owned(servicer: Any, proxy: OwnerProxy, channel: grpc.aio.Channel) -> None:
    """Route the server API's calls about owned models (under the inference servicer,
    and under any REST endpoint sharing its ``api``) to the owner."""
    servicer.api.owned = OwnerCalls(proxy, channel)


class OwnerCalls:
    """The server API's calls answered by the owner's inference service (an
    ``OwnedModels`` of ``warpserve.server.serverapi``). Its errors come back as
    WarpserveError with the owner's status and message."""

    def __init__(self, proxy: OwnerProxy, channel: grpc.aio.Channel) -> None:
        self.proxy = proxy
        self.stub = pb_grpc.GRPCInferenceServiceStub(channel)
        # The owner's control socket takes admin calls unchecked (see the module's doc).
        self.admin = apb_grpc.ModelAdminStub(channel)

    def owns(self, name: str) -> bool:
        return self.proxy.owns(name)

    async def model_ready(self, name: str, version: str) -> bool:
        request = pb.ModelReadyRequest(name=name, version=version)
        return bool((await _asked(self.stub.ModelReady(request))).ready)

    async def model_metadata(self, name: str, version: str) -> pb.ModelMetadataResponse:
        request = pb.ModelMetadataRequest(name=name, version=version)
        return await _asked(self.stub.ModelMetadata(request))

    async def model_config(self, name: str, version: str) -> mc.ModelConfig:
        request = pb.ModelConfigRequest(name=name, version=version)
        return (await _asked(self.stub.ModelConfig(request))).config

    async def statistics(self, name: str, version: str) -> pb.ModelStatisticsResponse:
        request = pb.ModelStatisticsRequest(name=name, version=version)
        return await _asked(self.stub.ModelStatistics(request))

    async def listed_statistics(self) -> list[pb.ModelStatistics]:
        try:
            answer = await self.stub.ModelStatistics(pb.ModelStatisticsRequest())
        except grpc.aio.AioRpcError:
            return []
        return list(answer.model_stats)

    async def listed_index(self, ready_only: bool) -> list[pb.RepositoryIndexResponse.ModelIndex]:
        try:
            answer = await self.stub.RepositoryIndex(pb.RepositoryIndexRequest(ready=ready_only))
        except grpc.aio.AioRpcError:
            return []
        return list(answer.models)

    async def listed_status(self) -> list[apb.ModelStatus]:
        """The owner's models with their versions; while it is down, the models it
        serves without versions (unavailable, not unknown)."""
        try:
            answer = await self.admin.Status(apb.StatusRequest())
        except grpc.aio.AioRpcError:
            return [apb.ModelStatus(model=name) for name in sorted(self.proxy.owned)]
        return list(answer.models)

    async def load(self, request: pb.RepositoryModelLoadRequest) -> None:
        await _asked(self.stub.RepositoryModelLoad(request))

    async def unload(self, name: str) -> None:
        await _asked(
            self.stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name=name))
        )


async def _asked(call: Awaitable[T]) -> T:
    """The owner's answer, or its status as a WarpserveError (UNAVAILABLE while it is
    down, with a hint that says so)."""
    try:
        return await call
    except grpc.aio.AioRpcError as exc:
        code, details = exc.code(), _owner_details(exc)
    error = WarpserveError(details)
    error.code = code
    raise error


def _owner_details(exc: grpc.aio.AioRpcError) -> str:
    code, details = exc.code(), exc.details() or ""
    if code is grpc.StatusCode.UNAVAILABLE and any(m in details for m in _TRANSPORT):
        details = (
            "the model owner process, which serves this model, is not reachable (it is "
            f"being started or restarted); retry shortly ({details})"
        )
    return details


def forward_owned_admin(servicer: Any, proxy: OwnerProxy, channel: grpc.aio.Channel) -> None:
    """Route the admin servicer's calls about owned models to the owner (after its own
    credentials check)."""
    stub = apb_grpc.ModelAdminStub(channel)
    check = servicer.check_credentials
    for method, field in ADMIN_CALLS.items():
        routed = _routed(getattr(servicer, method), getattr(stub, method), proxy, field, None)
        setattr(servicer, method, _checked(routed, check))
    status = _routed(servicer.Status, stub.Status, proxy, "model", ADMIN_LISTS["Status"])
    servicer.Status = _checked(status, check)


def _routed(
    local: Handler, remote: Any, proxy: OwnerProxy, field: str, merged: str | None
) -> Handler:
    @functools.wraps(local)
    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        name = getattr(request, field)
        if name and proxy.owns(name):
            return await _forward(remote, request, context)
        if not name and merged is not None:
            return await _both(local, remote, merged, request, context)
        return await local(request, context)

    return call


def _checked(handler: Handler, check: Callable[[Any], None]) -> Handler:
    """The admin servicer's credentials check before anything is forwarded. (Its own
    methods check again when they run locally, which costs nothing that matters.)"""

    @functools.wraps(handler)
    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            check(context.invocation_metadata())
        except Exception as exc:
            code = getattr(exc, "code", grpc.StatusCode.UNAUTHENTICATED)
            await context.abort(code, str(exc))
        return await handler(request, context)

    return call


async def _forward(remote: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
    """The owner's answer, or its status (UNAVAILABLE while it is down)."""
    try:
        return await remote(request, timeout=context.time_remaining())
    except grpc.aio.AioRpcError as exc:
        code, details = exc.code(), _owner_details(exc)
    await context.abort(code, details)


async def _both(
    local: Handler, remote: Any, field: str, request: Any, context: grpc.aio.ServicerContext
) -> Any:
    """The local answer with the owner's list appended. While the owner is down, only
    the local models are listed (the owner's models are UNAVAILABLE, not unknown)."""
    answer = await local(request, context)
    try:
        theirs = await remote(request, timeout=context.time_remaining())
    except grpc.aio.AioRpcError:
        return answer
    getattr(answer, field).extend(getattr(theirs, field))
    return answer
