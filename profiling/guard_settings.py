"""The guard's settings, per model, from config.pbtxt parameters (all optional).

parameters { key: "guard.enabled" value { string_value: "true" } }
parameters { key: "guard.max_latency_ratio" value { string_value: "1.3" } }
"""

from __future__ import annotations

from dataclasses import dataclass

from warpserve.protos import model_config_pb2 as mc
from warpserve.server.errors import ModelLoadError
from warpserve.server.repository import parameters as params

ENABLED = params.flag("guard.enabled", False, "compare a new version with the one it replaced")
MAX_LATENCY_RATIO = params.number(
    "guard.max_latency_ratio", 1.3, "candidate/baseline p99 (and median) that regresses, > 1"
)
WINDOW_SECONDS = params.number(
    "guard.window_seconds", 30.0, "seconds of requests compared; a pass needs one full window"
)
MIN_SAMPLES = params.integer(
    "guard.min_samples", 100, "requests per version before any verdict", minimum=10
)
MAX_ERROR_RATE = params.number(
    "guard.max_error_rate", 0.01, "share of failed requests above which a version regresses"
)
GUARD = (ENABLED, MAX_LATENCY_RATIO, WINDOW_SECONDS, MIN_SAMPLES, MAX_ERROR_RATE)


@dataclass(frozen=True)
class GuardSettings:
    enabled: bool = False
    max_latency_ratio: float = 1.3
    window_seconds: float = 30.0
    min_samples: int = 100
    max_error_rate: float = 0.01


def read_settings(config: mc.ModelConfig) -> GuardSettings:
    """The model's guard settings; ModelLoadError naming the key for a bad value."""
    settings = GuardSettings(
        enabled=ENABLED.read(config),
        max_latency_ratio=MAX_LATENCY_RATIO.read(config),
        window_seconds=WINDOW_SECONDS.read(config),
        min_samples=MIN_SAMPLES.read(config),
        max_error_rate=MAX_ERROR_RATE.read(config),
    )
    if settings.max_latency_ratio <= 1.0:
        raise ModelLoadError(
            f"model '{config.name}': parameter guard.max_latency_ratio="
            f"{settings.max_latency_ratio} must be above 1 (e.g. 1.3)"
        )
    if settings.window_seconds <= 0 or not settings.max_error_rate < 1.0:
        raise ModelLoadError(
            f"model '{config.name}': guard.window_seconds must be above 0 and "
            "guard.max_error_rate below 1"
        )
    return settings
