"""Fallback models: another model answers when a model's own answer cannot come.

A model names its fallback in its config (``fallback_model``). When its version raises
while running the request, is unavailable (loading, failed, draining, queue full, load
shed), or would miss the request's deadline, the data plane sends the request to the
fallback and the answer carries response parameters saying so:

    fallback: true, fallback_from: "<model asked for>", fallback_reason: error |
    unavailable | shed | deadline

"Would miss the deadline": a request with a client deadline leaves the primary's queue
``fallback_reserve_ms`` before it, leaving the fallback that long to answer. Bad input is
the client's to fix and never falls back; nor does the fallback's own fallback answer.
The fallback takes the request at its own default priority and queue policy.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from warpserve.protos import model_config_pb2 as mc
from warpserve.server.errors import (
    BackendError,
    DeadlineExceeded,
    LoadShed,
    ModelLoadError,
    Unavailable,
    WarpserveError,
)
from warpserve.server.repository import parameters as params

if TYPE_CHECKING:
    from warpserve.server.batching.request import Outputs
    from warpserve.server.codec import InferRequest
    from warpserve.server.dataplane import Answered
    from warpserve.server.lifecycle.registry import ModelRegistry

FALLBACK_MODEL = params.Parameter(
    "fallback_model", str, "", "a model name", "the model that answers when this one cannot"
)
FALLBACK_RESERVE_MS = params.number(
    "fallback_reserve_ms",
    5.0,
    "time before the client's deadline at which a queued request goes to the fallback",
)

_QUEUEING = frozenset({"priority", "timeout"})

# What the primary may fail with for the fallback to answer.
FALLBACK_ERRORS = (BackendError, Unavailable, DeadlineExceeded)


@dataclass(frozen=True)
class FallbackPlan:
    model: str
    reserve_s: float


def plan_of(config: mc.ModelConfig) -> FallbackPlan | None:
    name = FALLBACK_MODEL.read(config)
    if not name:
        return None
    if name == config.name:
        raise ModelLoadError(
            f"model '{config.name}': parameter fallback_model names the model itself; "
            "name another model, or remove the parameter"
        )
    return FallbackPlan(name, FALLBACK_RESERVE_MS.read(config) / 1000)


def reason_of(exc: WarpserveError) -> str:
    if isinstance(exc, BackendError):
        return "error"
    if isinstance(exc, DeadlineExceeded):
        return "deadline"
    if isinstance(exc, LoadShed):
        return "shed"
    return "unavailable"


def response_parameters(primary: str, reason: str) -> dict[str, bool | int | str]:
    return {"fallback": True, "fallback_from": primary, "fallback_reason": reason}


def fallback_parameters(parameters: dict[str, Any]) -> dict[str, Any]:
    """The request's parameters as the fallback gets them: without the queueing ones
    (priority, timeout), which name the primary's priority levels and queue policy."""
    if not parameters:
        return parameters
    return {k: v for k, v in parameters.items() if k not in _QUEUEING}


def both_failed(primary: WarpserveError, plan: FallbackPlan, exc: Exception) -> WarpserveError:
    """The primary's error (its status code), naming the fallback's failure too."""
    error = type(primary)(f"{primary}; fallback model '{plan.model}' failed too: {exc}")
    error.__cause__ = exc
    return error


def would_miss(plan: FallbackPlan, deadline_s: float) -> DeadlineExceeded | None:
    """The error that sends the request to the fallback at once, when the client's
    deadline leaves no more than the fallback's reserve."""
    if deadline_s > plan.reserve_s:
        return None
    return DeadlineExceeded(
        f"the request's deadline ({deadline_s * 1000:.1f} ms left) is within "
        f"fallback_reserve_ms ({plan.reserve_s * 1000:g} ms)"
    )


class _DataPlane(Protocol):
    """What routing to a fallback uses of the data plane."""

    registry: ModelRegistry

    async def infer(
        self, request: InferRequest, deadline_s: float | None = None, *, fall_back: bool = True
    ) -> tuple[Answered, Outputs]: ...

    def _fallback_plan(self, name: str) -> FallbackPlan | None: ...

    async def _fall_back(
        self,
        plan: FallbackPlan,
        request: InferRequest,
        primary: WarpserveError,
        deadline_s: float | None,
    ) -> tuple[Answered, Outputs]: ...


class FallbackRouting:
    """The data plane's routing of a failed request to its model's fallback."""

    async def recover(
        self: _DataPlane,
        request: InferRequest,
        failure: WarpserveError,
        deadline_s: float | None,
        fall_back: bool = True,
    ) -> tuple[Answered, Outputs]:
        """The model's fallback answers a request its version failed (raises the
        failure when the model has none)."""
        plan = self._fallback_plan(request.model_name) if fall_back else None
        if plan is None:
            raise failure
        return await self._fall_back(plan, request, failure, deadline_s)

    @staticmethod
    def _primary_deadline(plan: FallbackPlan, deadline_s: float) -> float:
        """The primary's share of the client's deadline: all but the fallback's reserve."""
        missed = would_miss(plan, deadline_s)
        if missed is not None:
            raise missed
        return deadline_s - plan.reserve_s

    def _fallback_plan(self: _DataPlane, name: str) -> FallbackPlan | None:
        """The fallback named by the model's newest version that names one, in any
        state (a version that failed to load still says who answers for it)."""
        served = self.registry.models.get(name)
        if served is None:
            return None
        for _, mv in sorted(served.versions.items(), reverse=True):
            if mv.fallback is not None:
                return mv.fallback
        return None

    async def _fall_back(
        self: _DataPlane,
        plan: FallbackPlan,
        request: InferRequest,
        primary: WarpserveError,
        deadline_s: float | None,
    ) -> tuple[Answered, Outputs]:
        reason = reason_of(primary)
        rerouted = dataclasses.replace(
            request,
            model_name=plan.model,
            model_version="",
            parameters=fallback_parameters(request.parameters),
        )
        try:
            mv, outputs = await self.infer(rerouted, deadline_s, fall_back=False)
        except WarpserveError as exc:
            raise both_failed(primary, plan, exc) from exc
        key = (request.model_name, plan.model, reason)
        table = self.registry.events.fallbacks
        table[key] = table.get(key, 0) + 1
        request.response_parameters = response_parameters(request.model_name, reason)
        return mv, outputs
