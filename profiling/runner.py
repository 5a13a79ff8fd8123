"""Profile one version, or two interleaved: latency samples, a trace, op times, memory.

Each run is split into the three steps a served batch goes through: input staging
(rows gathered into one contiguous batch, as the executor gathers requests),
compute (the backend instance's ``execute``), and output staging (outputs copied
out per request). Three passes per version and batch size, after warm-up:

1. timed: plain runs, the latency samples (``perf_counter_ns`` around each step);
2. traced: a few runs under torch.profiler with a ``record_function`` range per
   step, for the Chrome/Perfetto trace and the profiler's overhead over pass 1;
3. ops: the backend's own op profiler, where it has one (``ops``).

With two versions every pass alternates them (ABAB, then BABA) so that a drift in
the machine's speed lands on both alike: a gating comparison is only fair that way.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from warpserve.profiling import machine, ops
from warpserve.profiling.stats import summary
from warpserve.profiling.versions import LoadedVersion, ProfileError, peak_rss_mb

FORMAT = 1
STEPS = ("input_staging", "compute", "output_staging")


@dataclass(frozen=True)
class Plan:
    batch_sizes: tuple[int, ...] = (1, 8, 32)
    iterations: int = 100
    warmup: int = 10
    traced_iterations: int = 10
    op_iterations: int = 20

    def __post_init__(self) -> None:
        if not self.batch_sizes or any(b < 1 for b in self.batch_sizes):
            raise ProfileError(f"batch sizes {list(self.batch_sizes)} must be whole numbers >= 1")
        if self.iterations < 1 or self.warmup < 0:
            raise ProfileError("iterations must be >= 1 and warm-up >= 0")


@dataclass
class Samples:
    """Milliseconds per run, one list per step and one for the whole run."""

    total: list[float] = field(default_factory=list)
    steps: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STEPS})
    traced_total: list[float] = field(default_factory=list)


@dataclass
class TraceEvent:
    name: str
    version: int
    batch: int
    start_ns: int
    end_ns: int


def _torch_profiler() -> Any:
    try:
        import torch.profiler as tp
    except ImportError:
        return None
    return tp


def batch_sizes_for(lv: LoadedVersion, wanted: tuple[int, ...]) -> tuple[int, ...]:
    if not lv.batched:
        return (1,)
    limit = lv.config.max_batch_size
    over = [b for b in wanted if b > limit]
    if over:
        raise ProfileError(
            f"model '{lv.model}' version {lv.version} takes at most max_batch_size={limit} "
            f"rows; batch sizes {over} are larger (choose --batch-sizes up to {limit})"
        )
    return wanted


class Runner:
    def __init__(self, versions: list[LoadedVersion], plan: Plan) -> None:
        self.versions = versions
        self.plan = plan
        sizes = [batch_sizes_for(lv, plan.batch_sizes) for lv in versions]
        self.batch_sizes = sizes[0]
        self.samples = {(lv.version, b): Samples() for lv in versions for b in self.batch_sizes}
        self.events: list[TraceEvent] = []
        self._range: Callable[[str], contextlib.AbstractContextManager[Any]] = _no_range

    def _order(self, i: int) -> list[LoadedVersion]:
        return self.versions if i % 2 == 0 else self.versions[::-1]

    def run_once(self, lv: LoadedVersion, size: int) -> tuple[int, int, int, int]:
        """One run; the perf_counter_ns at its start and after each step."""
        t0 = time.perf_counter_ns()
        with self._range("input_staging"):
            inputs = {k: np.ascontiguousarray(v) for k, v in lv.batch(size).items()}
        t1 = time.perf_counter_ns()
        with self._range("compute"):
            outputs = lv.instance.execute(inputs)
        t2 = time.perf_counter_ns()
        with self._range("output_staging"):
            _ = {k: np.array(v, copy=True) for k, v in outputs.items()}
        t3 = time.perf_counter_ns()
        return t0, t1, t2, t3

    def warm_up(self) -> None:
        for size in self.batch_sizes:
            for lv in self.versions:
                for _ in range(self.plan.warmup):
                    self.run_once(lv, size)

    def timed(self) -> None:
        for i in range(self.plan.iterations):
            for size in self.batch_sizes:
                for lv in self._order(i):
                    marks = self.run_once(lv, size)
                    record = self.samples[(lv.version, size)]
                    for name, a, b in zip(STEPS, marks, marks[1:], strict=False):
                        record.steps[name].append((b - a) / 1e6)
                    record.total.append((marks[3] - marks[0]) / 1e6)

    def traced(self, trace_path: Path) -> str:
        """Run the traced pass and write the Chrome trace; returns the profiler used."""
        tp = _torch_profiler()
        if tp is None:
            self._traced_loop(_no_range)
            write_chrome_trace(self.events, trace_path)
            return (
                "none: torch is not installed (pip install 'warpserve[torch]'); the trace "
                "holds the runner's own staging and compute ranges"
            )
        import torch

        activities = [tp.ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(tp.ProfilerActivity.CUDA)
        self._range = tp.record_function
        try:
            with tp.profile(activities=activities, profile_memory=True) as prof:
                self._traced_loop(tp.record_function)
        finally:
            self._range = _no_range
        prof.export_chrome_trace(str(trace_path))
        return f"torch.profiler {torch.__version__} ({', '.join(a.name for a in activities)})"

    def _traced_loop(self, outer: Callable[[str], contextlib.AbstractContextManager[Any]]) -> None:
        for i in range(self.plan.traced_iterations):
            for size in self.batch_sizes:
                for lv in self._order(i):
                    start = time.perf_counter_ns()
                    with outer(f"{lv.model} v{lv.version} batch {size}"):
                        marks = self.run_once(lv, size)
                    end = time.perf_counter_ns()
                    self.samples[(lv.version, size)].traced_total.append((end - start) / 1e6)
                    self.events.append(TraceEvent("run", lv.version, size, start, end))
                    for name, a, b in zip(STEPS, marks, marks[1:], strict=False):
                        self.events.append(TraceEvent(name, lv.version, size, a, b))

    def op_times(self) -> dict[int, ops.OpTimes | None]:
        """The backend's op profiler, versions interleaved as in the timed pass."""
        sessions = {lv.version: ops.op_session(lv) for lv in self.versions}
        for size in self.batch_sizes:
            for session in sessions.values():
                if session is not None:
                    session.run(size, counted=False)  # first-run allocations
        for i in range(self.plan.op_iterations):
            for size in self.batch_sizes:
                for lv in self._order(i):
                    session = sessions[lv.version]
                    if session is not None:
                        session.run(size)
        return {v: s.finish() if s is not None else None for v, s in sessions.items()}


@contextlib.contextmanager
def _no_range(name: str) -> Iterator[None]:
    yield


def write_chrome_trace(events: list[TraceEvent], path: Path) -> None:
    """A Chrome/Perfetto trace (one process per version, one thread per batch size)."""
    if not events:
        path.write_text(json.dumps({"traceEvents": []}))
        return
    origin = min(e.start_ns for e in events)
    trace = [
        {
            "name": e.name,
            "ph": "X",
            "ts": (e.start_ns - origin) / 1000,
            "dur": (e.end_ns - e.start_ns) / 1000,
            "pid": f"version {e.version}",
            "tid": f"batch {e.batch}",
        }
        for e in events
    ]
    path.write_text(json.dumps({"traceEvents": trace, "displayTimeUnit": "ms"}))


def _version_record(
    runner: Runner, lv: LoadedVersion, op_times: ops.OpTimes | None
) -> dict[str, Any]:
    batches = {}
    for size in runner.batch_sizes:
        s = runner.samples[(lv.version, size)]
        plain = float(np.median(s.total)) if s.total else 0.0
        traced = float(np.median(s.traced_total)) if s.traced_total else 0.0
        batches[str(size)] = {
            "latency_ms": s.total,
            "steps_ms": s.steps,
            "summary": summary(s.total),
            "step_medians_ms": {k: float(np.median(v)) for k, v in s.steps.items() if v},
            "throughput_rows_per_s": size * 1000 / plain if plain else 0.0,
            "traced_median_ms": traced,
            "profiling_overhead": traced / plain if plain else 0.0,
        }
    return {
        "version": lv.version,
        "path": str(lv.path),
        "platform": lv.config.platform or lv.config.backend,
        "batched": lv.batched,
        "batches": batches,
        "ops": {str(b): o for b, o in op_times.items()} if op_times is not None else None,
        "memory": {"load_rss_mb": lv.load_rss_mb},
    }


def profile(
    versions: list[LoadedVersion], plan: Plan, trace_path: Path, *, subject: int
) -> dict[str, Any]:
    """Run every pass and return the profile (the trace is written to ``trace_path``)."""
    runner = Runner(versions, plan)
    started = time.perf_counter()
    runner.warm_up()
    runner.timed()
    profiler = runner.traced(trace_path)
    op_times = runner.op_times()
    lv0 = versions[0]
    return {
        "format": FORMAT,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "model": lv0.model,
        "subject_version": subject,
        "batch_sizes": list(runner.batch_sizes),
        "plan": {
            "iterations": plan.iterations,
            "warmup": plan.warmup,
            "traced_iterations": plan.traced_iterations,
            "op_iterations": plan.op_iterations,
            "interleaved": len(versions) > 1,
        },
        "profiler": profiler,
        "machine": machine.describe(),
        "memory": {"peak_rss_mb": peak_rss_mb()},
        "duration_s": time.perf_counter() - started,
        "versions": {
            str(lv.version): _version_record(runner, lv, op_times[lv.version]) for lv in versions
        },
    }
