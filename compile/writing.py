"""Turn the chosen variant (or, with --all, every servable one) into repository files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from warpserve.compile import choice as choosing
from warpserve.compile import output, report
from warpserve.compile.modelconfig import base_config
from warpserve.compile.specs import TensorSpec
from warpserve.protos import model_config_pb2 as mc
from warpserve.server.drift import reference as drift

if TYPE_CHECKING:
    from warpserve.compile.pipeline import CompileRequest, VariantResult

GOLDEN_ROWS = 64
REPORT_JSON = "compile_report.json"
REPORT_MD = "compile_report.md"


def _kept(results: list[VariantResult], chosen: str, keep_all: bool) -> list[VariantResult]:
    """The chosen variant last, so the highest version (Triton's default policy) serves it."""
    by_name = {r.target.name: r for r in results}
    others = [
        r
        for r in results
        if keep_all and r.status == "passed" and r.servable and r.target.name != chosen
    ]
    return [*others, by_name[chosen]]


def model_config(
    request: CompileRequest,
    kept: list[VariantResult],
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    plan: choosing.Batching,
) -> mc.ModelConfig:
    platforms = {r.target.platform for r in kept}
    # Versions of one model in different formats: each version's platform is then read
    # from its model file (model.onnx, model.pt2, ...), as Triton does without a platform.
    platform = platforms.pop() if len(platforms) == 1 else ""
    config = base_config(request.name, platform, inputs, outputs, request.max_batch_size)
    config.dynamic_batching.preferred_batch_size.extend(plan.preferred)
    config.dynamic_batching.max_queue_delay_microseconds = plan.queue_delay_us
    config.instance_group.add(count=plan.instances, kind=mc.ModelInstanceGroup.KIND_AUTO)
    tolerances = [request.tolerances[r.target.precision] for r in kept]
    config.parameters["golden_atol"].string_value = repr(max(t.atol for t in tolerances))
    config.parameters["golden_rtol"].string_value = repr(max(t.rtol for t in tolerances))
    return config


def write(
    request: CompileRequest,
    built: dict[str, Any],
    results: list[VariantResult],
    chosen: choosing.Choice,
    examples: dict[str, np.ndarray],
    expected: dict[str, np.ndarray],
    outputs: list[TensorSpec],
) -> list[Path]:
    by_name = {r.target.name: r for r in results}
    result = by_name[chosen.variant]
    inline = None if result.serving is None else result.serving.inline
    plan = choosing.batching(result.points, chosen, request.budget_ms, inline)
    eager = next(p for p in built["eager"] if p["batch"] == chosen.point.batch)
    built["choice"] = {
        "variant": chosen.variant,
        "batch": chosen.point.batch,
        "throughput": chosen.point.throughput,
        "median_ms": chosen.point.median_ms,
        "p99_ms": chosen.point.p99_ms,
        "eager_throughput": eager["throughput"],
        # Measured side by side in rounds (see sweep), not this throughput over eager's.
        "speedup_vs_eager": chosen.point.vs_eager,
        "best_batch": chosen.best.batch,
        "best_throughput": chosen.best.throughput,
        "best_speedup_vs_eager": chosen.best.vs_eager,
        "why": chosen.why,
        "served": None if result.serving is None else result.serving.as_dict(),
    }
    built["config"] = {
        "preferred_batch_size": plan.preferred,
        "max_queue_delay_microseconds": plan.queue_delay_us,
        "instance_count": plan.instances,
        "why": plan.why,
    }
    kept = _kept(results, chosen.variant, request.keep_all)
    model_dir = request.repository / request.name
    numbers = output.plan_versions(model_dir, request.version, len(kept))
    built["versions"] = [
        {"version": n, "variant": r.target.name, "path": str(model_dir / str(n))}
        for n, r in zip(numbers, kept, strict=True)
    ]
    inputs = [s for s in _input_specs(built)]
    output.write_config(model_dir, model_config(request, kept, inputs, outputs, plan))
    rows = min(GOLDEN_ROWS, len(next(iter(examples.values()))))
    references = drift_reference(request, examples, built)
    texts = {
        REPORT_JSON: json.dumps(built, indent=2) + "\n",
        REPORT_MD: report.markdown(built),
        **request.extra_files,
        **references,
    }
    dirs = []
    for number, result in zip(numbers, kept, strict=True):
        assert result.folder is not None
        files = output.VersionFiles(
            result.folder / result.target.filename,
            {k: v[:rows] for k, v in examples.items()},
            {k: v[:rows] for k, v in expected.items()},
            texts,
            tuple(result.folder / name for name in result.target.companions),
        )
        dirs.append(output.write_version(model_dir, number, files))
    return dirs


def drift_reference(
    request: CompileRequest, examples: dict[str, np.ndarray], built: dict[str, Any]
) -> dict[str, str]:
    """The version's drift reference file, taken from the reference (or example) inputs;
    none, with the reason in the report, when they cannot describe a distribution."""
    inputs = request.reference_inputs if request.reference_inputs is not None else examples
    if request.reference_inputs is None and request.examples is None:
        why = "no example or reference inputs were given (random rows describe no data)"
        built["drift_reference"] = {"written": False, "why": why}
        return {}
    try:
        built_ref = drift.build_reference(inputs, feature_names=request.feature_names)
    except ValueError as exc:
        built["drift_reference"] = {"written": False, "why": str(exc)}
        return {}
    built["drift_reference"] = {
        "written": True,
        "rows": built_ref.rows,
        "inputs": {n: len(r.features) for n, r in built_ref.inputs.items()},
    }
    return {drift.REFERENCE_FILE: built_ref.to_json()}


def _input_specs(built: dict[str, Any]) -> list[TensorSpec]:
    return [TensorSpec(t["name"], tuple(t["dims"]), t["dtype"]) for t in built["inputs"]]
