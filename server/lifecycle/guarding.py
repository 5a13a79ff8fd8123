"""What the registry tells a latency guard, and what the guard leaves on a version.

The guard itself lives in ``warpserve.profiling.guard``; the registry only announces
when a new version starts serving (fully, as a canary, or in shadow) beside the
version it replaces, and keeps that version loaded while a guard holds it.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass


class ServingMode(str, enum.Enum):
    FULL = "full"
    CANARY = "canary"
    SHADOW = "shadow"


@dataclass(frozen=True)
class ServingChange:
    model: str
    candidate: int  # the version that now serves
    baseline: int  # the version it replaced (or runs beside)
    mode: ServingMode


ChangeListener = Callable[[ServingChange], None]

GUARD_REASONS = ("latency_guard", "error_rate_guard")


@dataclass
class GuardStatus:
    """The guard's latest view of a candidate version (shown by status and metrics)."""

    verdict: str  # watching, pass, improvement, regression, insufficient_data, ended
    baseline: int
    mode: str
    reason: str = ""
    rolled_back: str = ""  # the rollback reason, when the guard rolled back
    median_ratio: float = 0.0
    p99_ratio: float = 0.0
    candidate_samples: int = 0
    baseline_samples: int = 0
    candidate_error_rate: float = 0.0
    baseline_error_rate: float = 0.0
    trace: str = ""  # where the bad version's profiler trace was kept
    seconds_to_verdict: float = 0.0
