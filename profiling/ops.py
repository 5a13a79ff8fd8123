"""Per-op self time from the backend's own profiler, where it has one.

torch.profiler sees an ONNX Runtime run as one opaque call, so the ops inside come
from ONNX Runtime's profiler: a second session of the same model file, with the
serving backend's session options plus profiling, run on the same inputs (profiling
must be chosen when a session is made, so the served instance cannot be reused). Its
"Node" events carry each kernel's duration and op type.
"""

from __future__ import annotations

import bisect
import json
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from warpserve.profiling.versions import LoadedVersion
from warpserve.server.backends import spec as formats
from warpserve.server.repository import config as cfg

# batch size -> op type -> {"self_us": per run, "calls": per run}
OpTimes = dict[int, dict[str, dict[str, float]]]


class OpSession(Protocol):
    """A profiled twin of a version's instance: ``run`` one batch, then ``finish``."""

    def run(self, size: int, *, counted: bool = True) -> None: ...

    def finish(self) -> OpTimes: ...


def op_session(lv: LoadedVersion) -> OpSession | None:
    """A profiled session for ``lv``; None when its backend exposes no ops."""
    factory = _PROFILERS.get(formats.platform_of(lv.config))
    return factory(lv) if factory is not None else None


class OnnxRuntimeOps:
    def __init__(self, lv: LoadedVersion) -> None:
        import onnxruntime as ort

        from warpserve.server.backends.onnxruntime import session_options

        served = getattr(lv.instance, "session", None)
        providers = served.get_providers() if served is not None else ["CPUExecutionProvider"]
        self._tmp = tempfile.TemporaryDirectory(prefix="warpserve-ort-")
        options = session_options(lv.config, 1)
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(self._tmp.name) / "ort")
        self._session = ort.InferenceSession(
            str(lv.path / cfg.model_filename(lv.config)), sess_options=options, providers=providers
        )
        self._names = {i.name for i in self._session.get_inputs()}
        self._lv = lv
        self._plan: list[int | None] = []  # the batch size of each run (None: not counted)

    def run(self, size: int, *, counted: bool = True) -> None:
        feed = {k: v for k, v in self._lv.batch(size).items() if k in self._names}
        self._session.run(None, feed)
        self._plan.append(size if counted else None)

    def finish(self) -> OpTimes:
        try:
            trace = json.loads(Path(self._session.end_profiling()).read_text())
        finally:
            self._tmp.cleanup()
        return aggregate(trace, self._plan)


def aggregate(trace: list[dict[str, Any]], plan: list[int | None]) -> OpTimes:
    """Sum ONNX Runtime's kernel events per run, then average per batch size."""
    runs = sorted(
        e["ts"] for e in trace if e.get("cat") == "Session" and e.get("name") == "model_run"
    )
    totals: dict[int, dict[str, dict[str, float]]] = {}
    counted = {size: plan.count(size) for size in set(plan) if size is not None}
    for event in trace:
        if event.get("cat") != "Node" or not str(event.get("name", "")).endswith("_kernel_time"):
            continue
        run = bisect.bisect_right(runs, event["ts"]) - 1
        size = plan[run] if 0 <= run < len(plan) else None
        if size is None:
            continue
        op = str(event.get("args", {}).get("op_name", "?"))
        entry = totals.setdefault(size, {}).setdefault(op, {"self_us": 0.0, "calls": 0.0})
        entry["self_us"] += float(event.get("dur", 0))
        entry["calls"] += 1
    return {
        size: {op: {k: v / counted[size] for k, v in e.items()} for op, e in ops.items()}
        for size, ops in totals.items()
    }


_PROFILERS: Mapping[str, Callable[[LoadedVersion], OpSession]] = {
    "onnxruntime_onnx": OnnxRuntimeOps,
}


def top_ops(ops: Mapping[str, Mapping[str, float]], limit: int = 10) -> list[tuple[str, float]]:
    ranked = sorted(((op, e["self_us"]) for op, e in ops.items()), key=lambda p: -p[1])
    return ranked[:limit]


def compare_ops(
    baseline: Mapping[str, Mapping[str, float]],
    candidate: Mapping[str, Mapping[str, float]],
    slower_ratio: float,
) -> dict[str, list[dict[str, Any]]]:
    """Ops the candidate added, dropped, or spends noticeably longer in.

    An op is slower when its self time grew by ``slower_ratio`` and by at least 2 % of
    the candidate's total op time, so microsecond noise in tiny ops is not reported.
    """
    total = float(np.sum([e["self_us"] for e in candidate.values()])) or 1.0
    new: list[dict[str, Any]] = [
        {"op": op, "candidate_us": e["self_us"]}
        for op, e in candidate.items()
        if op not in baseline
    ]
    gone: list[dict[str, Any]] = [
        {"op": op, "baseline_us": e["self_us"]} for op, e in baseline.items() if op not in candidate
    ]
    slower: list[dict[str, Any]] = []
    for op, e in candidate.items():
        before = baseline.get(op)
        if before is None:
            continue
        a, b = before["self_us"], e["self_us"]
        if b >= a * slower_ratio and b - a >= 0.02 * total:
            slower.append(
                {
                    "op": op,
                    "baseline_us": a,
                    "candidate_us": b,
                    "ratio": b / a if a else float("inf"),
                }
            )
    slower.sort(key=lambda s: float(s["baseline_us"]) - float(s["candidate_us"]))
    new.sort(key=lambda s: -float(s["candidate_us"]))
    return {"new": new, "gone": gone, "slower": slower}
