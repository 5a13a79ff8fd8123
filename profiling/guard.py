"""The live latency guard: compare a new version with the one it replaced, roll back.

When the registry announces that a version started serving (fully, as a canary or in
shadow) and the model's config enables the guard, a watch task compares, every tick,
the candidate's requests since it started serving with the baseline's latest window:

- error rate: the candidate fails more than ``guard.max_error_rate`` of its requests,
  significantly more than the baseline (Fisher) -> roll back, ``error_rate_guard``;
- latency (queue plus compute, from the batcher's timeline): the statistics of
  ``warpserve profile`` with ``guard.max_latency_ratio`` as the limit on both the
  median and the p99 ratio -> roll back, ``latency_guard``;
- a full window of samples without either -> pass (or improvement): the baseline is
  released to its usual grace period.

The baseline stays loaded until the verdict (the registry holds it). After a
rollback a short profiler trace of the bad version is captured from its files, off
the event loop, and kept beside the version.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path

from warpserve.profiling.guard_settings import GuardSettings, read_settings
from warpserve.profiling.stats import (
    Thresholds,
    Verdict,
    compare_errors,
    compare_latency,
)
from warpserve.server.errors import WarpserveError
from warpserve.server.lifecycle.guarding import GuardStatus, ServingChange, ServingMode
from warpserve.server.lifecycle.registry import ModelRegistry
from warpserve.server.lifecycle.version import ModelVersion
from warpserve.server.stats import TimelineWindow

log = logging.getLogger(__name__)

# (model, candidate version, serving mode, reason) -> whether this call rolled it back.
GuardRollback = Callable[[str, int, str, str], Awaitable[bool]]

# A guard that never gathers enough samples gives up after this many windows.
PATIENCE_WINDOWS = 4
# One-sided significance for the rank and Fisher tests; the effect-size limits do most
# of the work, this keeps an evaluation every tick from adding up to a false rollback.
GUARD_ALPHA = 0.001


@dataclass(frozen=True)
class Decision:
    verdict: Verdict | None  # None: keep watching
    rollback_reason: str  # latency_guard / error_rate_guard, for a regression
    status: GuardStatus


def decide(
    baseline: TimelineWindow,
    candidate: TimelineWindow,
    settings: GuardSettings,
    elapsed_s: float,
    status: GuardStatus,
) -> Decision:
    """One evaluation: a verdict, or None to keep watching (pure; tests feed it samples)."""
    errors = compare_errors(
        (baseline.errors, baseline.requests),
        (candidate.errors, candidate.requests),
        max_error_rate=settings.max_error_rate,
        alpha=GUARD_ALPHA,
        min_samples=settings.min_samples,
    )
    limits = Thresholds(
        alpha=GUARD_ALPHA,
        max_median_ratio=settings.max_latency_ratio,
        max_p99_ratio=settings.max_latency_ratio,
        min_samples=settings.min_samples,
    )
    latency = compare_latency(baseline.latencies_ms, candidate.latencies_ms, limits)
    seen = replace(
        status,
        median_ratio=latency.median_ratio,
        p99_ratio=latency.p99_ratio,
        candidate_samples=candidate.requests,
        baseline_samples=baseline.requests,
        candidate_error_rate=candidate.errors / candidate.requests if candidate.requests else 0.0,
        baseline_error_rate=baseline.errors / baseline.requests if baseline.requests else 0.0,
        seconds_to_verdict=elapsed_s,
    )
    if errors.verdict is Verdict.REGRESSION:
        return _final(Verdict.REGRESSION, "error_rate_guard", seen, errors.reason)
    if latency.verdict is Verdict.REGRESSION:
        return _final(Verdict.REGRESSION, "latency_guard", seen, latency.reason)
    short = latency.verdict is Verdict.INSUFFICIENT_DATA
    patience = (PATIENCE_WINDOWS if short else 1) * settings.window_seconds
    if elapsed_s < patience:
        return Decision(None, "", replace(seen, reason=latency.reason))
    return _final(latency.verdict, "", seen, latency.reason)


def _final(verdict: Verdict, rollback: str, status: GuardStatus, reason: str) -> Decision:
    return Decision(verdict, rollback, replace(status, verdict=verdict.value, reason=reason))


class LatencyGuard:
    """Watches every guarded rollout of one registry (one watch task per model)."""

    def __init__(
        self,
        registry: ModelRegistry,
        *,
        tick_s: float = 0.25,
        rollback: GuardRollback | None = None,
    ) -> None:
        self.registry = registry
        self.tick_s = tick_s
        # Where a regression's rollback goes: the server's control plane, so that with
        # several server processes one verdict rolls back every one of them.
        self.rollback = rollback if rollback is not None else self._local_rollback
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.captures: set[asyncio.Task[None]] = set()
        registry.on_serving = self.start

    def start(self, change: ServingChange) -> None:
        served = self.registry.models.get(change.model)
        candidate = served.versions.get(change.candidate) if served else None
        if served is None or candidate is None:
            return
        try:
            settings = read_settings(candidate.config)
        except WarpserveError as exc:
            candidate.guard = GuardStatus("off", change.baseline, change.mode.value, str(exc))
            log.error("latency guard for model '%s' is off: %s", change.model, exc)
            return
        if not settings.enabled:
            return
        running = self.tasks.get(change.model)
        if running is not None and not running.done():
            if getattr(running, "candidate", None) == change.candidate:
                return  # a canary promoted: its guard keeps watching
            running.cancel()
        served.hold(change.baseline)
        candidate.guard = GuardStatus("watching", change.baseline, change.mode.value)
        task = asyncio.get_running_loop().create_task(self._watch(change, settings))
        task.candidate = change.candidate  # type: ignore[attr-defined]
        self.tasks[change.model] = task

    async def _watch(self, change: ServingChange, settings: GuardSettings) -> None:
        started = time.monotonic_ns()
        window_ns = int(settings.window_seconds * 1e9)
        tick = min(self.tick_s, settings.window_seconds / 4)
        try:
            while True:
                await asyncio.sleep(tick)
                versions = self._versions(change)
                if versions is None:
                    return
                baseline, candidate = versions
                now = time.monotonic_ns()
                cand = candidate.stats.timeline.window(max(started, now - window_ns), now)
                end = baseline.stats.timeline.last_ns or now
                base = baseline.stats.timeline.window(end - window_ns, end)
                assert candidate.guard is not None
                decision = await asyncio.to_thread(
                    decide, base, cand, settings, (now - started) / 1e9, candidate.guard
                )
                candidate.guard = decision.status
                if decision.verdict is not None:
                    await self._conclude(change, candidate, decision)
                    return
        finally:
            served = self.registry.models.get(change.model)
            if served is not None:
                served.release(change.baseline)

    def _versions(self, change: ServingChange) -> tuple[ModelVersion, ModelVersion] | None:
        """Both versions while the candidate still serves as announced, else None."""
        served = self.registry.models.get(change.model)
        if served is None:
            return None
        baseline = served.versions.get(change.baseline)
        candidate = served.versions.get(change.candidate)
        router = served.router
        routed = {
            ServingMode.FULL: router.active == change.candidate,
            ServingMode.CANARY: change.candidate in router.canary
            or router.active == change.candidate,
            ServingMode.SHADOW: router.shadow_version == change.candidate,
        }[change.mode]
        if baseline is None or candidate is None or not candidate.ready or not routed:
            if candidate is not None and candidate.guard is not None:
                candidate.guard = replace(candidate.guard, verdict="ended")
            return None
        return baseline, candidate

    async def _local_rollback(self, name: str, candidate: int, mode: str, reason: str) -> bool:
        self.registry.rollback(name, reason, shadow=mode == ServingMode.SHADOW.value)
        return True

    async def _conclude(
        self, change: ServingChange, candidate: ModelVersion, decision: Decision
    ) -> None:
        status = decision.status
        log.log(
            logging.WARNING if decision.rollback_reason else logging.INFO,
            "latency guard: model '%s' version %d against %d: %s (%s)",
            change.model,
            change.candidate,
            change.baseline,
            status.verdict,
            status.reason,
        )
        if not decision.rollback_reason:
            return
        try:
            await self.rollback(
                change.model, change.candidate, change.mode.value, decision.rollback_reason
            )
        except WarpserveError as exc:
            candidate.guard = replace(status, reason=f"{status.reason}; rollback failed: {exc}")
            return
        candidate.guard = replace(status, rolled_back=decision.rollback_reason)
        task = asyncio.get_running_loop().create_task(self._capture(candidate))
        self.captures.add(task)
        task.add_done_callback(self.captures.discard)

    async def _capture(self, candidate: ModelVersion) -> None:
        from warpserve.profiling.evidence import capture_trace

        try:
            path = await asyncio.to_thread(
                capture_trace, candidate.path.parent.parent, candidate.name, candidate.version
            )
        except Exception as exc:  # evidence is best effort; the rollback already happened
            log.error("latency guard: no trace of model '%s' version %d: %s",
                      candidate.name, candidate.version, exc)  # fmt: skip
            return
        if candidate.guard is not None:
            candidate.guard = replace(candidate.guard, trace=str(path))
        log.warning("latency guard: trace of the rolled-back version kept at %s", path)

    async def close(self) -> None:
        tasks = [*self.tasks.values(), *self.captures]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def guard_path(model_dir: Path, version: int) -> Path:
    return model_dir / str(version) / "guard"
