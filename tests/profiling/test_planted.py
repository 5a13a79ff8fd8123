"""The slowed copy: the same outputs from twice the graph (the regression control)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tests.models import write_mlp
from warpserve.profiling.planted import write_slowed_copy


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"INPUT0": x})[0])


@pytest.mark.parametrize("factor", [2, 3])
def test_slowed_copy_computes_the_same_outputs_with_factor_times_the_graph(
    tmp_path: Path, factor: int
) -> None:
    model_dir = write_mlp(tmp_path)
    write_slowed_copy(model_dir / "1", model_dir / "2", factor=factor)
    original = onnx.load(str(model_dir / "1" / "model.onnx"))
    slowed = onnx.load(str(model_dir / "2" / "model.onnx"))
    onnx.checker.check_model(slowed)
    matmuls = [sum(n.op_type == "MatMul" for n in m.graph.node) for m in (original, slowed)]
    assert matmuls[1] == factor * matmuls[0]
    x = np.random.default_rng(0).standard_normal((5, 64)).astype(np.float32)
    np.testing.assert_array_equal(
        _run(model_dir / "2" / "model.onnx", x), _run(model_dir / "1" / "model.onnx", x)
    )
    assert (model_dir / "2" / "golden" / "outputs.npz").is_file()


def test_slowed_copy_refuses_to_overwrite_or_to_not_slow(tmp_path: Path) -> None:
    model_dir = write_mlp(tmp_path)
    with pytest.raises(FileExistsError):
        write_slowed_copy(model_dir / "1", model_dir / "1")
    with pytest.raises(ValueError, match="at least 2"):
        write_slowed_copy(model_dir / "1", model_dir / "5", factor=1)
