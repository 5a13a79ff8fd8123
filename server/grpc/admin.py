"""warpserve.admin.v1.ModelAdmin: rollout, promote, rollback, split, shadow, load, status.

Thin: check the caller's token, call the registry, report the model's status.

Where the admin API is served (``admin_exposure``):
- on a loopback ``--grpc-address``: always (with a token configured, calls must carry it);
- on any other address: only with a token, and every call must carry it;
- otherwise (Triton's default 0.0.0.0, no token) inference is served without the
  admin API and a warning says how to enable it. ``warpserve serve --admin`` turns
  that case into a refusal to start.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias, TypeVar

import grpc

from warpserve.protos import admin_pb2 as apb
from warpserve.protos import admin_pb2_grpc as apb_grpc
from warpserve.server.control.local import LocalControlPlane
from warpserve.server.control.plane import ControlPlane
from warpserve.server.drift.monitor import DriftMonitor
from warpserve.server.errors import (
    InvalidInput,
    ModelNotFound,
    PermissionDenied,
    Unauthenticated,
)
from warpserve.server.grpc.admin_auth import TOKEN_ENV, is_loopback, token_matches
from warpserve.server.grpc.limits import add_bounded
from warpserve.server.grpc.status import maps_errors
from warpserve.server.lifecycle.events import RegistryEvents
from warpserve.server.lifecycle.guarding import GuardStatus
from warpserve.server.lifecycle.registry import ModelRegistry
from warpserve.server.lifecycle.router import VersionRouter
from warpserve.server.lifecycle.served import ServedModel
from warpserve.server.lifecycle.version import ModelVersion
from warpserve.server.options import ServerOptions
from warpserve.server.repository.repository import check_model_name

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
Context: TypeAlias = grpc.aio.ServicerContext

ENABLE_HINT = (
    f"set {TOKEN_ENV} or --admin-token-file (clients then send 'authorization: Bearer "
    "<token>'), or bind --grpc-address 127.0.0.1"
)


class AdminExposureError(ValueError):
    """The admin API was required on a non-loopback address without a token."""


def admin_exposure(address: str, token: str | None, *, required: bool = False) -> bool:
    """Whether to serve the admin API; raises when required but it cannot be served safely."""
    if token or is_loopback(address):
        return True
    if required:
        raise AdminExposureError(
            f"refusing to start: the admin API would listen on {address!r}, which is not "
            f"loopback, without a token; {ENABLE_HINT}"
        )
    return False


def add_admin_service(
    server: grpc.aio.Server,
    registry: ModelRegistry,
    options: ServerOptions,
    control: ControlPlane | None = None,
    *,
    prepare: Callable[[AdminServicer], None] | None = None,
) -> None:
    """``prepare`` adjusts the servicer before it is registered (the model owner's
    forwarding wraps its methods)."""
    if not admin_exposure(options.grpc_address, options.admin_token):
        log.warning(
            "admin API (warpserve models) not served: --grpc-address %s is not loopback and "
            "no admin token is set; to enable it, %s",
            options.grpc_address,
            ENABLE_HINT,
        )
        return
    servicer = AdminServicer(registry, options.admin_token, control)
    if prepare is not None:
        prepare(servicer)
    add_bounded(
        apb_grpc.add_ModelAdminServicer_to_server, servicer, server, options.max_message_bytes
    )


def authorized(method: F) -> F:
    """Refuse the call unless it carries the configured token (when one is set)."""

    @functools.wraps(method)
    async def wrapper(self: AdminServicer, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.check_credentials(context.invocation_metadata())
        return await method(self, request, context)

    return wrapper  # type: ignore[return-value]


class AdminServicer(apb_grpc.ModelAdminServicer):
    def __init__(
        self, registry: ModelRegistry, token: str | None, control: ControlPlane | None = None
    ) -> None:
        self.registry = registry
        self.token = token
        # Changes apply server-wide: to every server process when there are several.
        self.control = control if control is not None else LocalControlPlane(registry, None)

    def check_credentials(self, metadata: Any) -> None:
        if self.token is None:
            return
        verdict = token_matches(self.token, tuple(metadata or ()))
        if verdict is None:
            raise Unauthenticated(
                "admin call without credentials: send metadata 'authorization: Bearer "
                f"<token>' (warpserve models reads --token-file or {TOKEN_ENV})"
            )
        if not verdict:
            raise PermissionDenied(
                "admin token does not match the server's; check --token-file or "
                f"{TOKEN_ENV} on the client"
            )

    @maps_errors
    @authorized
    async def Rollout(self, request: apb.RolloutRequest, context: Context) -> apb.RolloutResponse:
        name = _name(request.model)
        await self.control.rollout(name, _version(request.version), request.canary_percent)
        return apb.RolloutResponse(status=self._status(name))

    @maps_errors
    @authorized
    async def Promote(self, request: apb.PromoteRequest, context: Context) -> apb.PromoteResponse:
        await self.control.promote(_name(request.model))
        return apb.PromoteResponse(status=self._status(request.model))

    @maps_errors
    @authorized
    async def Rollback(
        self, request: apb.RollbackRequest, context: Context
    ) -> apb.RollbackResponse:
        await self.control.rollback(_name(request.model), request.reason or "manual")
        return apb.RollbackResponse(status=self._status(request.model))

    @maps_errors
    @authorized
    async def SetTrafficSplit(
        self, request: apb.SetTrafficSplitRequest, context: Context
    ) -> apb.SetTrafficSplitResponse:
        weights = {_version(v): w for v, w in request.weights.items()}
        await self.control.set_split(_name(request.model), weights)
        return apb.SetTrafficSplitResponse(status=self._status(request.model))

    @maps_errors
    @authorized
    async def SetShadow(
        self, request: apb.SetShadowRequest, context: Context
    ) -> apb.SetShadowResponse:
        if request.version < 0:
            raise InvalidInput(f"shadow version {request.version} is negative; 0 clears it")
        await self.control.set_shadow(_name(request.model), request.version, request.percent)
        return apb.SetShadowResponse(status=self._status(request.model))

    @maps_errors
    @authorized
    async def Load(self, request: apb.LoadRequest, context: Context) -> apb.LoadResponse:
        name = _name(request.model)
        if request.version:
            await self.control.load(name, [_version(request.version)], activate=False)
        else:
            await self.control.load(name, None, activate=True)
        return apb.LoadResponse(status=self._status(name))

    @maps_errors
    @authorized
    async def Unload(self, request: apb.UnloadRequest, context: Context) -> apb.UnloadResponse:
        name = _name(request.model)
        if request.version < 0:
            raise InvalidInput(f"unload version {request.version} is negative; 0 unloads all")
        await self.control.unload(name, request.version or None)
        return apb.UnloadResponse(status=self._status(name))

    @maps_errors
    @authorized
    async def Status(self, request: apb.StatusRequest, context: Context) -> apb.StatusResponse:
        if request.model:
            names = [self._known(request.model)]
        else:
            names = sorted(set(self.registry.repository.model_names()) | set(self.registry.models))
        return apb.StatusResponse(models=[self._status(n) for n in names])

    def _known(self, name: str) -> str:
        check_model_name(name)
        if name in self.registry.models or name in self.registry.repository.model_names():
            return name
        raise ModelNotFound(
            f"model '{name}' is not known to this server; 'warpserve models status' lists "
            "the models"
        )

    def _status(self, name: str) -> apb.ModelStatus:
        return model_status(name, self.registry.models.get(name), self.registry.events)


def model_status(
    name: str, served: ServedModel | None, events: RegistryEvents | None = None
) -> apb.ModelStatus:
    """Every version with its state, routing and counters; no versions when not loaded."""
    status = apb.ModelStatus(model=name)
    if served is None:
        return status
    events = events or RegistryEvents()
    router = served.router
    weights = router.weights()
    for number, mv in sorted(served.versions.items()):
        status.versions.append(version_status(mv, router, weights.get(number, 0.0)))
    status.previous_version = router.previous or 0
    plans = [mv.fallback for _, mv in sorted(served.versions.items()) if mv.fallback]
    if plans:
        status.fallback_model = plans[-1].model
    status.fallback_count = sum(n for (m, _, _), n in list(events.fallbacks.items()) if m == name)
    return status


def version_status(mv: ModelVersion, router: VersionRouter, weight: float) -> apb.VersionStatus:
    stats = mv.stats
    p50, p90, p99 = stats.latency.percentiles_ms()
    return apb.VersionStatus(
        version=mv.version,
        state=mv.state.value,
        reason=mv.reason,
        weight=weight,
        active=router.active == mv.version,
        shadow=router.shadow_version == mv.version,
        success_count=stats.success.count,
        failure_count=stats.fail.count,
        in_flight=mv.batcher.in_flight if mv.batcher is not None else 0,
        latency=apb.LatencySummary(count=len(stats.latency), p50_ms=p50, p90_ms=p90, p99_ms=p99),
        shadow_max_abs_diff=stats.shadow_max_abs_diff,
        guard=_guard_status(mv.guard),
        drift=drift_status(mv.drift),
        shed_count=sum(mv.batcher.shed) if mv.batcher is not None else 0,
    )


def drift_status(monitor: DriftMonitor | None) -> apb.DriftStatus | None:
    if monitor is None:
        return None
    report = monitor.report()
    settings = report.settings
    return apb.DriftStatus(
        alarm=report.alarm,
        window_rows=report.rows,
        window_seconds=settings.window_s,
        min_rows=settings.min_rows,
        psi_threshold=settings.psi_threshold,
        ks_threshold=settings.ks_threshold,
        alarms_raised=monitor.alarms_raised,
        features=[
            apb.FeatureDrift(
                input=f.input, feature=f.feature, psi=f.psi, ks=f.ks, over=report.over(f)
            )
            for f in report.features
        ],
    )


def _guard_status(guard: GuardStatus | None) -> apb.GuardStatus | None:
    if guard is None:
        return None
    fields = dataclasses.asdict(guard)
    fields["baseline_version"] = fields.pop("baseline")
    return apb.GuardStatus(**fields)


def _name(model: str) -> str:
    if not model:
        raise InvalidInput("admin call without a model name; set 'model'")
    return check_model_name(model)


def _version(version: int) -> int:
    if version <= 0:
        raise InvalidInput(f"model version {version} is not a positive integer")
    return version
