"""compile writes the version's drift reference from real example (or reference) rows,
and says why it wrote none from random ones."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.compile import models
from tests.compile.conftest import fast_request
from warpserve.compile.pipeline import compile_model
from warpserve.compile.progress import silent
from warpserve.compile.source import ModelSource
from warpserve.compile.specs import parse_input
from warpserve.server.drift.reference import REFERENCE_FILE, read_reference


def test_example_rows_become_the_versions_drift_reference(tmp_path: Path) -> None:
    x = np.random.default_rng(0).normal(3.0, 1.0, (400, 16)).astype(np.float32)
    outcome = compile_model(
        fast_request(
            source=ModelSource(models.mlp(), "module", "test MLP"),
            name="mlp",
            repository=tmp_path,
            examples={"x": x},
            targets=["onnx"],
            feature_names={"x": [f"f{i}" for i in range(16)]},
        ),
        silent,
    )
    reference = read_reference(outcome.version_dir)
    assert reference is not None and reference.rows == 400
    edges = reference.inputs["x"].edges
    assert reference.inputs["x"].features[0] == "f0"
    assert np.median(edges[0][np.isfinite(edges[0])]) == pytest.approx(3.0, abs=0.3)
    report = json.loads((outcome.version_dir / "compile_report.json").read_text())
    assert report["drift_reference"] == {"written": True, "rows": 400, "inputs": {"x": 16}}
    assert (
        "Drift reference: 400 rows of x (16 features)"
        in (outcome.version_dir / "compile_report.md").read_text()
    )


def test_random_examples_write_no_reference_and_the_report_says_why(tmp_path: Path) -> None:
    outcome = compile_model(
        fast_request(
            source=ModelSource(models.mlp(), "module", "test MLP"),
            name="mlp",
            repository=tmp_path,
            inputs=[parse_input("x:16:FP32")],
            targets=["onnx"],
        ),
        silent,
    )
    assert not (outcome.version_dir / REFERENCE_FILE).exists()
    report = json.loads((outcome.version_dir / "compile_report.json").read_text())
    assert not report["drift_reference"]["written"]
    assert "random rows" in report["drift_reference"]["why"]
