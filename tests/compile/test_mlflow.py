"""MLflow models of the pytorch flavour, logged locally (a file store, no server), compiled."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("mlflow", reason="the MLflow input needs the mlflow extra")

import torch

from tests.compile import models
from warpserve.server.cli import main

FAST = ["--max-batch-size", "4", "--batch-sizes", "1,4", "--seconds-per-point", "0.02"]


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The test MLP logged by mlflow.pytorch.log_model in both serialisations."""
    import mlflow
    import mlflow.pytorch

    root = tmp_path_factory.mktemp("mlflow")
    patch = pytest.MonkeyPatch()
    # MLflow 3 keeps the file store only on request; a database store needs SQLAlchemy.
    patch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    mlflow.set_tracking_uri((root / "mlruns").as_uri())
    example = np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32)
    try:
        with mlflow.start_run():
            pt2 = mlflow.pytorch.log_model(
                models.mlp(),
                name="pt2",
                input_example=example,
                serialization_format="pt2",
                pip_requirements=["torch"],  # skips inferring them in a subprocess (slow)
            )
            pickled = mlflow.pytorch.log_model(
                models.mlp(),
                name="pickle",
                input_example=example,
                serialization_format="pickle",
                pip_requirements=["torch"],
            )
        paths = {
            "pt2": Path(mlflow.artifacts.download_artifacts(pt2.model_uri)),
            "pickle": Path(mlflow.artifacts.download_artifacts(pickled.model_uri)),
        }
    finally:
        mlflow.set_tracking_uri("")
        patch.undo()
    return paths


@pytest.mark.parametrize("serialisation", ["pt2", "pickle"])
def test_a_logged_model_compiles_without_input_flags_and_matches_eager(
    logged: dict[str, Path], serialisation: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = logged[serialisation]
    assert (model / "MLmodel").is_file()
    repo = tmp_path / "repo"
    args = ["compile", str(model), "--name", "m", "--model-repository", str(repo)]
    # TorchScript: the quickest target to build, and these tests are about the input.
    assert main([*args, "--targets", "torchscript", *FAST]) == 0
    capsys.readouterr()
    report = json.loads((repo / "m" / "1" / "compile_report.json").read_text())
    assert report["source"].startswith(f"MLflow model {model}")
    # The inputs come from the program (pt2) or from the logged signature (pickle).
    assert [(t["dims"], t["dtype"]) for t in report["inputs"]] == [([16], "FP32")]
    with np.load(repo / "m" / "1" / "golden" / "inputs.npz") as f:
        rows = next(f[k] for k in f.files)
    with np.load(repo / "m" / "1" / "golden" / "outputs.npz") as f:
        written = next(f[k] for k in f.files)
    with torch.no_grad():
        expected = models.mlp().eval()(torch.from_numpy(rows)).numpy()
    np.testing.assert_allclose(written, expected, atol=1e-6)


def test_another_flavour_is_refused_naming_the_flavours(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "sklearn_model"
    folder.mkdir()
    (folder / "MLmodel").write_text("flavors:\n  sklearn:\n    pickled_model: model.pkl\n")
    args = ["compile", str(folder), "--name", "m", "--model-repository", str(tmp_path / "r")]
    assert main([*args, "--input", "x:16:FP32"]) == 2
    error = capsys.readouterr().err
    assert "without the pytorch flavour (it has sklearn)" in error
