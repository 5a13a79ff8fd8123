"""Compiled MLP and CNN repositories, built once per session (AOTInductor compiles are slow)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")

from tests.compile import models
from warpserve.compile.pipeline import CompileRequest, Outcome, compile_model
from warpserve.compile.progress import silent
from warpserve.compile.source import ModelSource
from warpserve.compile.specs import parse_input

CPU_TARGETS = ["onnx", "ort", "ort-int8", "torchscript", "aoti"]


def fast_request(**fields: Any) -> CompileRequest:
    """A request with a short sweep: these tests check what is written, not speed."""
    defaults: dict[str, Any] = {
        "max_batch_size": 8,
        "batch_sizes": [1, 8],
        "seconds_per_point": 0.02,
    }
    defaults.update(fields)
    return CompileRequest(**defaults)


@pytest.fixture(scope="session")
def compiled_mlp(tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    request = fast_request(
        source=ModelSource(models.mlp(), "module", "test MLP"),
        name="mlp",
        repository=tmp_path_factory.mktemp("mlp_repo"),
        inputs=[parse_input("x:16:FP32")],
        targets=CPU_TARGETS,
    )
    return compile_model(request, silent)


@pytest.fixture(scope="session")
def compiled_cnn(tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    request = fast_request(
        source=ModelSource(models.cnn(), "module", "test CNN"),
        name="cnn",
        repository=tmp_path_factory.mktemp("cnn_repo"),
        inputs=[parse_input("image:3x16x16:FP32")],
        output_names=["LOGITS", "CLASS"],
        targets=CPU_TARGETS,
    )
    return compile_model(request, silent)


def variant(outcome: Outcome, name: str) -> dict:
    return next(v for v in outcome.report["variants"] if v["name"] == name)


__all__ = ["CPU_TARGETS", "Path", "fast_request", "variant"]
