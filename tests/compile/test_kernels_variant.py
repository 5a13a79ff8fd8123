"""The kernels variant through ``warpserve compile``: lowered, checked, measured, written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("numba")

import torch

from tests.compile import models
from warpserve.compile.choice import runs_inline
from warpserve.compile.sweep import Point
from warpserve.server.backends import spec as backend_spec
from warpserve.server.cli import main
from warpserve.server.repository import config as cfg

FAST = ["--max-batch-size", "8", "--batch-sizes", "1,8", "--seconds-per-point", "0.02"]


def _compile(repo: Path, model: str, targets: str, *extra: str) -> int:
    return main(
        [
            "compile",
            f"tests.compile.models:{model}",
            "--name",
            "m",
            "--model-repository",
            str(repo),
            "--input",
            "x:16:FP32",
            "--targets",
            targets,
            "--json",
            *FAST,
            *extra,
        ]
    )


def _serve(folder: Path, x: np.ndarray) -> tuple[str, dict[str, np.ndarray]]:
    """The written version's platform, and its outputs for ``x`` from the backend that
    the server loads for it."""
    config = cfg.complete(cfg.read_config(folder.parent), folder)
    instance = backend_spec.loader_for(config)(config, folder, 0, 1)
    try:
        return config.platform, instance.execute({"x": x})
    finally:
        instance.close()


def test_kernels_alone_is_checked_measured_chosen_and_served(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = _compile(tmp_path, "sequential_mlp", "kernels")
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    (entry,) = report["variants"]
    assert entry["status"] == "passed", entry["reason"]
    assert entry["runs_on"] == "server backend for warpserve_kernels" and entry["servable"]
    parity = entry["parity"]
    assert parity["passed"] and (parity["atol"], parity["rtol"]) == (1e-4, 1e-3)
    assert 0 <= parity["outputs"]["OUTPUT0"]["max_abs"] <= 1e-4
    assert [p["batch"] for p in entry["points"]] == [1, 8]
    assert report["choice"]["variant"] == "kernels"
    # Served inline where the server's rule says so, on the kernels' own thread count.
    served = entry["served"]
    assert served["inline"] == runs_inline([Point(**p) for p in entry["points"]])
    assert served["threads"] == "every core" and "never runs inline" not in served["why"]

    folder = tmp_path / "m" / "1"
    assert {"plan.json", "weights.npz"} <= {p.name for p in folder.iterdir()}
    x = np.random.default_rng(5).standard_normal((5, 16)).astype(np.float32)
    platform, outputs = _serve(folder, x)
    assert platform == "warpserve_kernels"
    got = outputs["OUTPUT0"]
    with torch.no_grad():
        want = models.sequential_mlp().eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-3)
    assert np.ptp(want) > 0.05  # outputs that differ per row: a constant would not pass


def test_an_unsupported_module_rejects_kernels_naming_it_and_others_continue(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = _compile(tmp_path, "tanh_mlp", "onnx,kernels")
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    by_name = {v["name"]: v for v in report["variants"]}
    assert by_name["kernels"]["status"] == "rejected"
    assert "model.1 (Tanh)" in by_name["kernels"]["reason"]
    assert by_name["onnx"]["status"] == "passed"
    assert report["choice"]["variant"] == "onnx"


def test_only_kernels_on_an_unsupported_model_exits_1_with_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = _compile(tmp_path, "tanh_mlp", "kernels")
    err = capsys.readouterr().err
    assert code == 1
    assert "kernels: rejected (unsupported: model.1 (Tanh)" in err
    assert not (tmp_path / "m" / "1").exists()


def test_a_recommenders_scoring_module_compiles_to_kernels_and_serves_top_k(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = _compile(tmp_path, "scoring", "kernels", "--output-names", "ITEM_IDS,SCORES")
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    (entry,) = report["variants"]
    assert entry["status"] == "passed", entry["reason"]
    assert entry["parity"]["outputs"]["ITEM_IDS"]["max_abs"] == 0
    folder = tmp_path / "m" / "1"
    x = np.random.default_rng(6).standard_normal((4, 16)).astype(np.float32)
    platform, got = _serve(folder, x)
    assert platform == "warpserve_kernels"
    with torch.no_grad():
        ids, scores = models.scoring().eval()(torch.from_numpy(x))
    np.testing.assert_array_equal(got["ITEM_IDS"], ids.numpy())
    np.testing.assert_allclose(got["SCORES"], scores.numpy(), atol=1e-4, rtol=1e-4)
    assert len({tuple(row) for row in ids.numpy()}) > 1  # users get different items


def test_a_module_with_its_own_forward_lowers_from_its_graph_and_serves(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Standardisation by buffers, a Sequential, a sigmoid in forward (the demo fraud
    scorer's shape): the constants fold into the first layer; served as eager computes."""
    code = _compile(tmp_path, "standardised_mlp", "kernels")
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    (entry,) = report["variants"]
    assert entry["status"] == "passed", entry["reason"]
    folder = tmp_path / "m" / "1"
    plan = json.loads((folder / "plan.json").read_text())
    assert [step["activation"] for step in plan["steps"]] == ["relu", "sigmoid"]
    x = (np.random.default_rng(7).standard_normal((6, 16)) * 4).astype(np.float32)
    got = _serve(folder, x)[1]["OUTPUT0"]
    with torch.no_grad():
        want = models.standardised_mlp().eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)
    assert np.ptp(want) > 0.05


def test_a_pt2_program_lowers_to_kernels_from_the_program_given(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = models.standardised_mlp().eval()
    batch = torch.export.Dim("batch", min=1, max=8)
    program = torch.export.export(model, (torch.randn(4, 16),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(tmp_path / "model.pt2"))
    repo = tmp_path / "repo"
    code = main(
        ["compile", str(tmp_path / "model.pt2"), "--name", "m", "--model-repository", str(repo),
         "--targets", "kernels", "--json", *FAST]
    )  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    (entry,) = report["variants"]
    assert entry["status"] == "passed", entry["reason"]
    (parity,) = entry["parity"]["outputs"].values()
    assert parity["max_abs"] <= 1e-5
