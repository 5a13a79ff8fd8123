"""compile_report.json and compile_report.md: every variant, its errors, latencies, the choice."""

from __future__ import annotations

import datetime
import math
import platform
from typing import TYPE_CHECKING, Any

from warpserve.compile.specs import TensorSpec
from warpserve.compile.sweep import ROUNDS, Point
from warpserve.server.cpus import usable_cores

if TYPE_CHECKING:
    from warpserve.compile.pipeline import CompileRequest, VariantResult


def _number(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _tensor(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "dims": list(spec.dims), "dtype": spec.dtype}


def environment() -> dict[str, Any]:
    import onnxruntime
    import torch

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "eager_threads_tried": sorted({1, usable_cores()}),
        "rounds": ROUNDS,
        "onnxruntime": onnxruntime.__version__,
        "cpu": platform.processor() or platform.machine(),
        "usable_cores": usable_cores(),
        "gpu": gpu,
    }


def _variant(result: VariantResult) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": result.target.name,
        "description": result.target.description,
        "platform": result.target.platform,
        "precision": result.target.precision,
        "status": result.status,
        "reason": result.reason,
        "build_s": round(result.build_s, 3),
        "servable": result.servable,
        "runs_on": result.runs_on,
    }
    if result.parity is not None:
        entry["parity"] = {
            "atol": result.parity.tolerance.atol,
            "rtol": result.parity.tolerance.rtol,
            "passed": result.parity.passed,
            "outputs": {
                name: {
                    "max_abs": _number(o.max_abs),
                    "max_rel": _number(o.max_rel),
                    "within": o.within,
                    "problem": o.problem,
                }
                for name, o in result.parity.outputs.items()
            },
        }
    entry["points"] = [p.as_dict() for p in result.points]
    if result.serving is not None:
        entry["served"] = result.serving.as_dict()
        # Each curve measured, by threads; "points" above is the served one among them.
        entry["curves"] = {
            threads: [p.as_dict() for p in points] for threads, points in result.curves.items()
        }
    return entry


def build(
    request: CompileRequest,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    results: list[VariantResult],
    eager: list[Point],
    exported: bool,
) -> dict[str, Any]:
    return {
        "model": request.name,
        "source": request.source.description,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "environment": environment(),
        "inputs": [_tensor(s) for s in inputs],
        "outputs": [_tensor(s) for s in outputs],
        "max_batch_size": request.max_batch_size,
        "latency_budget_ms": request.budget_ms,
        "exported_with_torch_export": exported,
        "tolerances": {k: {"atol": t.atol, "rtol": t.rtol} for k, t in request.tolerances.items()},
        "eager": [p.as_dict() for p in eager],
        "variants": [_variant(r) for r in results],
    }


def add_failure(built: dict[str, Any], results: list[VariantResult], budget: float | None) -> None:
    passed = [r for r in results if r.status == "passed"]
    if not passed:
        lines = [f"{r.target.name}: {r.status} ({r.reason})" for r in results]
        built["failure"] = "no variant passed its checks: " + "; ".join(lines)
    elif not any(r.servable for r in passed):
        built["failure"] = (
            "the variants that passed ("
            + ", ".join(r.target.name for r in passed)
            + ") have no backend in this server; add an ONNX target (onnx, ort)"
        )
    else:
        fastest = min(p.p99_ms for r in passed if r.servable for p in r.points)
        built["failure"] = (
            f"no variant meets the latency budget of {budget:g} ms (p99); the lowest p99 "
            f"measured is {fastest:.3f} ms: raise --latency-budget-ms"
        )


def markdown(built: dict[str, Any]) -> str:
    lines = [f"# Compile report: {built['model']}", "", f"- source: {built['source']}"]
    env = built["environment"]
    lines += [
        f"- environment: torch {env['torch']} (eager: the best of {env['eager_threads_tried']} "
        f"threads per batch size; every contender measured in {env['rounds']} rounds side by "
        "side), onnxruntime "
        f"{env['onnxruntime']}, {env['usable_cores']} usable cores, GPU: {env['gpu'] or 'none'}",
        f"- max batch size {built['max_batch_size']}, latency budget "
        f"{built['latency_budget_ms'] or 'none'} ms (p99)",
        "",
        "## Variants",
        "",
        "| variant | status | runs on | max abs err | max rel err | tolerance | build s | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for v in built["variants"]:
        parity = v.get("parity")
        errors = ("", "")
        tolerance = ""
        if parity:
            abs_errors = [o["max_abs"] for o in parity["outputs"].values()]
            rel_errors = [o["max_rel"] for o in parity["outputs"].values()]
            errors = (_worst(abs_errors), _worst(rel_errors))
            tolerance = f"{parity['atol']:g} / {parity['rtol']:g}"
        lines.append(
            f"| {v['name']} | {v['status']} | {v['runs_on'] or '-'} | {errors[0]} | {errors[1]} "
            f"| {tolerance} | {v['build_s']:.1f} | {v['reason']} |"
        )
    lines += ["", "## Latency and throughput", ""]
    lines += _latency_table(built)
    if "choice" in built:
        c = built["choice"]
        lines += ["", "## Choice", "", f"**{c['variant']}** at batch {c['batch']}: {c['why']}."]
        if c.get("served"):
            lines.append(f"As served: {c['served']['why']}; measured that way.")
        lines += [
            f"Eager PyTorch at that batch: {c['eager_throughput']:,.0f} rows/s; the variant "
            f"ran {c['speedup_vs_eager']:.2f}x as fast (median over rounds measured side by "
            "side)."
        ]
        if c["best_batch"] != c["batch"]:
            lines.append(
                f"At batch {c['best_batch']}, its highest throughput: "
                f"{c['best_speedup_vs_eager']:.2f}x eager."
            )
        lines += [
            "",
            f"Config: {built['config']['why']}.",
        ]
        for v in built.get("versions", []):
            lines.append(f"- version {v['version']}: {v['variant']} ({v['path']})")
        lines += _drift_lines(built.get("drift_reference"))
    if "failure" in built:
        lines += ["", "## No variant written", "", built["failure"]]
    return "\n".join(lines) + "\n"


def _drift_lines(drift: dict[str, Any] | None) -> list[str]:
    if drift is None:
        return []
    if not drift["written"]:
        return ["", f"No drift reference written: {drift['why']}"]
    inputs = ", ".join(f"{name} ({n} features)" for name, n in drift["inputs"].items())
    return ["", f"Drift reference: {drift['rows']} rows of {inputs} (drift_reference.json)."]


def _worst(values: list[float | None]) -> str:
    if any(v is None for v in values):
        return "n/a"
    return f"{max(v for v in values if v is not None):.2e}"


def _latency_table(built: dict[str, Any]) -> list[str]:
    rows: list[tuple[str, str, list[dict[str, Any]]]] = [("eager", "", built["eager"])]
    for v in built["variants"]:
        served = v.get("served")
        for threads, points in (v.get("curves") or {"": v["points"]}).items():
            how = ""
            if served is not None:
                how = f"{threads}, served" if threads == served["threads"] else threads
            rows.append((v["name"], how, points))
    lines = [
        "| variant | threads | batch | median ms | p99 ms | rows/s | vs eager |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, how, points in rows:
        for p in points:
            ratio = p.get("vs_eager") or 1.0  # eager's own rows have none
            lines.append(
                f"| {name} | {how} | {p['batch']} | {p['median_ms']:.3f} | {p['p99_ms']:.3f} "
                f"| {p['throughput']:,.0f} | {ratio:.2f}x |"
            )
    return lines
