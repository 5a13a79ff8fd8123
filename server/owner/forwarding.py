"""A frontend's calls about owner-placed models, answered by the model owner.

Everything but inference about a model placed on the owner (ModelReady, its metadata
and config, its statistics, loads and unloads, and the admin API: rollout, rollback,
split, shadow, status) is forwarded to the owner's control services, so the one
loaded copy is the one that answers, changes and counts. Calls that list every model
(RepositoryIndex, ModelStatistics and the admin Status without a name) answer with
the frontend's own models and the owner's together.

``forward_owned`` wraps a servicer's methods before it is registered with the gRPC
server. Admin calls are checked for credentials here first: the owner's socket takes
what the frontend forwards without asking again.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from warpserve.protos import admin_pb2_grpc as apb_grpc
from warpserve.protos import grpc_service_pb2_grpc as pb_grpc
from warpserve.server.owner.proxy import OwnerProxy

Handler = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]

# Method -> the request field naming the model.
INFERENCE_CALLS = {
    "ModelReady": "name",
    "ModelMetadata": "name",
    "ModelConfig": "name",
    "ModelStatistics": "name",
    "RepositoryModelLoad": "model_name",
    "RepositoryModelUnload": "model_name",
}
ADMIN_CALLS = {
    name: "model"
    for name in ("Rollout", "Promote", "Rollback", "SetTrafficSplit", "SetShadow", "Load", "Unload")
}
# Lists of every model: the frontend's models and the owner's, in one answer.
INFERENCE_LISTS = {"RepositoryIndex": "models", "ModelStatistics": "model_stats"}
ADMIN_LISTS = {"Status": "models"}
# gRPC's own words when the owner's socket is not there or drops: the owner is down,
# as opposed to the owner answering UNAVAILABLE itself (a model still loading).
_TRANSPORT = ("failed to connect", "Socket closed", "Connection reset", "Broken pipe")


def forward_owned(servicer: Any, proxy: OwnerProxy, channel: grpc.aio.Channel) -> None:
    """Route the inference servicer's calls about owned models to the owner."""
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    for method, field in INFERENCE_CALLS.items():
        local = getattr(servicer, method)
        remote = getattr(stub, method)
        merged = INFERENCE_LISTS.get(method)
        setattr(servicer, method, _routed(local, remote, proxy, field, merged))
    index = INFERENCE_LISTS["RepositoryIndex"]
    servicer.RepositoryIndex = _merged(servicer.RepositoryIndex, stub.RepositoryIndex, index)


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


def _merged(local: Handler, remote: Any, field: str) -> Handler:
    @functools.wraps(local)
    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await _both(local, remote, field, request, context)

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
        code, details = exc.code(), exc.details() or ""
        if code is grpc.StatusCode.UNAVAILABLE and any(m in details for m in _TRANSPORT):
            details = (
                "the model owner process, which serves this model, is not reachable (it is "
                f"being started or restarted); retry shortly ({details})"
            )
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
