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

from dataclasses import dataclass
from typing import Any

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
