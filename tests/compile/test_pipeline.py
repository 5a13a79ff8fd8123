"""The compile pipeline on an MLP and a small CNN: variants, parity, report, written files."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from tests.compile import models
from tests.compile.conftest import CPU_TARGETS, fast_request, variant
from warpserve.compile import choice
from warpserve.compile.pipeline import Outcome, compile_model
from warpserve.compile.progress import silent
from warpserve.compile.source import ModelSource
from warpserve.compile.specs import parse_input
from warpserve.compile.sweep import Point
from warpserve.protos import model_config_pb2 as mc
from warpserve.server.backends import spec as backend_spec
from warpserve.server.repository import config as cfg

FP32 = ("onnx", "ort", "torchscript", "aoti")


@pytest.fixture(params=["mlp", "cnn"])
def outcome(request: pytest.FixtureRequest) -> Outcome:
    return request.getfixturevalue(f"compiled_{request.param}")


def _eager(outcome: Outcome, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    module = models.mlp() if outcome.report["model"] == "mlp" else models.cnn()
    with torch.no_grad():
        result = module.eval()(*(torch.from_numpy(v) for v in inputs.values()))
    return [t.numpy() for t in (result if isinstance(result, tuple) else (result,))]


def test_every_cpu_variant_is_built_checked_and_measured(outcome: Outcome) -> None:
    assert [v["name"] for v in outcome.report["variants"]] == CPU_TARGETS
    for name in FP32:
        entry = variant(outcome, name)
        assert entry["status"] == "passed", (name, entry["reason"])
        assert [p["batch"] for p in entry["points"]] == [1, 8]
        assert all(p["median_ms"] > 0 and p["throughput"] > 0 for p in entry["points"])
        assert entry["runs_on"]
    assert variant(outcome, "onnx")["runs_on"] == "server backend for onnxruntime_onnx"
    int8 = variant(outcome, "ort-int8")
    # INT8 may flip an argmax: then it is rejected, with the numbers.
    assert int8["status"] in ("passed", "rejected"), int8["reason"]
    if int8["status"] == "rejected":
        assert int8["reason"].startswith("parity:") and "atol 0.05" in int8["reason"]


def test_each_variant_is_reported_as_the_server_will_run_it(outcome: Outcome) -> None:
    # The test models are tiny: ONNX Runtime runs them inline on the server's event loop,
    # on one thread, so that curve is the one reported and chosen on; the every-core curve
    # stays beside it. TorchScript and AOTInductor never run inline.
    for name in ("onnx", "ort"):
        entry = variant(outcome, name)
        served, curves = entry["served"], entry["curves"]
        assert set(curves) == {"every core", "1 thread"}
        assert served["inline"] == choice.runs_inline(_points(curves["every core"]))
        assert served["inline"], entry  # a batch-1 run of these takes microseconds
        assert served["threads"] == "1 thread" and entry["points"] == curves["1 thread"]
        assert [p["batch"] for p in curves["every core"]] == [1, 8]
    for name in ("torchscript", "aoti"):
        served = variant(outcome, name)["served"]
        assert (served["inline"], served["threads"]) == (False, "every core")
        assert "never runs inline" in served["why"]
    chosen = variant(outcome, outcome.report["choice"]["variant"])
    assert outcome.report["choice"]["served"] == chosen["served"]
    markdown = (outcome.version_dir / "compile_report.md").read_text()
    assert "| ort | 1 thread, served | 1 |" in markdown and "| ort | every core | 1 |" in markdown


def _points(rows: list[dict]) -> list[Point]:
    return [Point(**row) for row in rows]


def test_parity_numbers_are_recorded_within_tolerance(outcome: Outcome) -> None:
    for name in FP32:
        parity = variant(outcome, name)["parity"]
        assert parity["passed"] and (parity["atol"], parity["rtol"]) == (1e-4, 1e-3)
        for output in parity["outputs"].values():
            assert 0 <= output["max_abs"] <= 1e-3 and output["max_rel"] >= 0
    int8 = variant(outcome, "ort-int8")["parity"]
    assert (int8["atol"], int8["rtol"]) == (0.05, 0.05)
    errors = [o["max_abs"] for o in int8["outputs"].values()]
    assert max(errors) > 0  # quantized weights really change the numbers


def test_report_explains_the_choice_and_is_written(outcome: Outcome) -> None:
    report, folder = outcome.report, outcome.version_dir
    choice = report["choice"]
    passed = [v for v in report["variants"] if v["status"] == "passed" and v["servable"]]
    best = max(p["throughput"] for v in passed for p in v["points"])
    assert choice["best_throughput"] == best
    curve = variant(outcome, choice["variant"])["points"]
    # The smallest batch of the best variant that reaches 90% of its best throughput.
    knee = min(p["batch"] for p in curve if p["throughput"] >= 0.9 * best)
    assert choice["batch"] == knee
    chosen = next(p for p in curve if p["batch"] == knee)
    assert choice["speedup_vs_eager"] == chosen["vs_eager"] > 0
    assert [p["batch"] for p in report["eager"]] == [1, 8]
    assert json.loads((folder / "compile_report.json").read_text()) == report
    markdown = (folder / "compile_report.md").read_text()
    for name in CPU_TARGETS:
        assert f"| {name} |" in markdown
    assert f"**{choice['variant']}** at batch {choice['batch']}" in markdown


def test_config_and_golden_data(outcome: Outcome) -> None:
    folder = outcome.version_dir
    text = (folder.parent / "config.pbtxt").read_text()
    config = text_format.Parse(text, mc.ModelConfig())
    chosen = variant(outcome, outcome.report["choice"]["variant"])
    assert config.platform == chosen["platform"]
    assert config.max_batch_size == 8
    assert all(1 < b <= 8 for b in config.dynamic_batching.preferred_batch_size)
    assert config.dynamic_batching.max_queue_delay_microseconds >= 100
    assert config.instance_group[0].count in (1, 2)
    assert float(config.parameters["golden_atol"].string_value) > 0
    with np.load(folder / "golden" / "inputs.npz") as f:
        inputs = {k: f[k] for k in f.files}
    with np.load(folder / "golden" / "outputs.npz") as f:
        outputs = [f[k] for k in f.files]
    for got, want in zip(outputs, _eager(outcome, inputs), strict=True):
        np.testing.assert_array_equal(got, want)


def test_written_version_loads_in_the_server_backend_and_matches_eager(outcome: Outcome) -> None:
    folder = outcome.version_dir
    config = cfg.complete(cfg.read_config(folder.parent), folder)
    instance = backend_spec.loader_for(config)(config, folder, 0, 1)
    with np.load(folder / "golden" / "inputs.npz") as f:
        inputs = {k: f[k][:3] for k in f.files}  # the rows parity was checked on
    try:
        got = instance.execute(inputs)
    finally:
        instance.close()
    # The chosen variant may be INT8 (fastest on a noisy run): its precision's tolerance.
    atol = float(config.parameters["golden_atol"].string_value)
    rtol = float(config.parameters["golden_rtol"].string_value)
    for output, expected in zip(config.output, _eager(outcome, inputs), strict=True):
        np.testing.assert_allclose(got[output.name], expected, atol=atol, rtol=rtol)


def test_next_free_version_and_all_keeps_every_servable_variant(compiled_mlp: Outcome) -> None:
    repo = compiled_mlp.version_dir.parent.parent
    request = fast_request(
        source=ModelSource(models.mlp(), "module", "test MLP"),
        name="mlp",
        repository=repo,
        inputs=[parse_input("x:16:FP32")],
        targets=["onnx", "ort"],
        keep_all=True,
    )
    again = compile_model(request, silent)
    assert [d.name for d in again.version_dirs] == ["2", "3"]
    kept = [v["variant"] for v in again.report["versions"]]
    assert sorted(kept) == ["onnx", "ort"] and kept[-1] == again.report["choice"]["variant"]
    assert all((d / "model.onnx").is_file() for d in again.version_dirs)
    assert not [p for p in (repo / "mlp").iterdir() if p.name.startswith(".")]


def test_taken_version_is_refused_before_compiling(compiled_mlp: Outcome, tmp_path: Path) -> None:
    from warpserve.compile.errors import UsageError

    request = fast_request(
        source=ModelSource(models.mlp(), "module", "test MLP"),
        name="mlp",
        repository=compiled_mlp.version_dir.parent.parent,
        version=1,
        inputs=[parse_input("x:16:FP32")],
        targets=["onnx"],
    )
    with pytest.raises(UsageError, match="version 1 exists already"):
        compile_model(request, silent)


def test_tensorrt_skipped_is_listed_with_the_reason_and_a_wrapped_mlp_lowers(
    tmp_path: Path,
) -> None:
    request = fast_request(
        source=ModelSource(models.mlp(), "module", "test MLP"),
        name="m",
        repository=tmp_path,
        inputs=[parse_input("x:16:FP32")],
        targets=["onnx", "tensorrt-fp32", "tensorrt-fp16", "tensorrt-int8", "kernels"],
        batch_sizes=[1],
    )
    outcome = compile_model(request, silent)
    for name in ("tensorrt-fp32", "tensorrt-fp16", "tensorrt-int8", "kernels"):
        entry = variant(outcome, name)
        if entry["status"] == "skipped":
            assert entry["reason"], name
    # The test MLP wraps its Sequential in a module with its own forward(): lowered from
    # its exported graph, and checked against eager like every variant.
    kernels = variant(outcome, "kernels")
    if importlib.util.find_spec("numba") is None:
        assert kernels["status"] == "skipped" and "numba" in kernels["reason"]
    else:
        assert kernels["status"] == "passed", kernels["reason"]
        assert kernels["parity"]["passed"]
    trt = variant(outcome, "tensorrt-fp16")
    if trt["status"] == "skipped":
        assert "tensorrt" in trt["reason"].lower() or "GPU" in trt["reason"]
