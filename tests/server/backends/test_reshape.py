"""Triton's ``reshape``: the client's shapes are the config dims, the model's are
``reshape.shape``; ONNX models built here take and produce the reshaped tensors."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.protobuf import text_format
from onnx import TensorProto, helper

from warpserve.protos import model_config_pb2 as mc
from warpserve.server.backends.reshape import ReshapedInstance, plan
from warpserve.server.codec import InferRequest
from warpserve.server.dataplane import DataPlane
from warpserve.server.errors import BackendError, ModelLoadError
from warpserve.server.grpc import reports
from warpserve.server.lifecycle.registry import ModelRegistry
from warpserve.server.repository.repository import ModelRepository

M = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)  # not symmetric: a transposed row shows

BATCHED = """
name: "grid" platform: "onnxruntime_onnx" max_batch_size: 8
input [{ name: "X" data_type: TYPE_FP32 dims: [ 4 ] reshape: { shape: [ 2, 2 ] } }]
output [{ name: "ROWS" data_type: TYPE_FP32 dims: [ 4 ] reshape: { shape: [ 2, 2 ] } },
        { name: "TOTAL" data_type: TYPE_FP32 dims: [ 1 ] reshape: { shape: [ ] } }]
instance_group [{ count: 1 kind: KIND_CPU }]
"""

VARIABLE = """
name: "grid" platform: "onnxruntime_onnx" max_batch_size: 0
input [{ name: "X" data_type: TYPE_FP32 dims: [ -1, 4 ] reshape: { shape: [ -1, 2, 2 ] } }]
output [{ name: "ROWS" data_type: TYPE_FP32 dims: [ -1, 4 ] reshape: { shape: [ -1, 2, 2 ] } },
        { name: "TOTAL" data_type: TYPE_FP32 dims: [ -1 ] }]
instance_group [{ count: 1 kind: KIND_CPU }]
"""


def grid_model() -> bytes:
    """X [n, 2, 2] -> ROWS = X @ M [n, 2, 2] and TOTAL = sum of each X [n]."""
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["X", "M"], ["ROWS"]),
            helper.make_node("ReduceSum", ["X", "AXES"], ["TOTAL"], keepdims=0),
        ],
        "grid",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["n", 2, 2])],
        [
            helper.make_tensor_value_info("ROWS", TensorProto.FLOAT, ["n", 2, 2]),
            helper.make_tensor_value_info("TOTAL", TensorProto.FLOAT, ["n"]),
        ],
        [
            helper.make_tensor("M", TensorProto.FLOAT, [2, 2], M.flatten()),
            helper.make_tensor("AXES", TensorProto.INT64, [2], [1, 2]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def rows(x: np.ndarray) -> np.ndarray:
    return (x.reshape(-1, 2, 2) @ M).reshape(-1, 4)


def write(repo: Path, config: str, golden: dict[str, dict[str, np.ndarray]] | None = None) -> None:
    version = repo / "grid" / "1"
    version.mkdir(parents=True)
    (repo / "grid" / "config.pbtxt").write_text(config)
    (version / "model.onnx").write_bytes(grid_model())
    if golden is not None:
        (version / "golden").mkdir()
        np.savez(version / "golden" / "inputs.npz", **golden["inputs"])  # type: ignore[arg-type]
        np.savez(version / "golden" / "outputs.npz", **golden["outputs"])  # type: ignore[arg-type]


def serve(repo: Path, *requests: dict[str, np.ndarray]) -> tuple[Any, list[dict[str, np.ndarray]]]:
    """Load ``grid`` and answer the requests concurrently (so they may share a batch)."""

    async def main() -> tuple[Any, list[dict[str, np.ndarray]]]:
        registry = ModelRegistry(ModelRepository(repo))
        await registry.load("grid")
        plane = DataPlane(registry)
        try:
            answers = await asyncio.gather(
                *(plane.infer(InferRequest("grid", "", str(i), r)) for i, r in enumerate(requests))
            )
            mv = registry.describe("grid")
            return reports.metadata(mv, [1]), [outputs for _, outputs in answers]
        finally:
            await registry.close()

    return asyncio.run(main())


def test_batched_inputs_and_outputs_travel_in_dims_and_reach_the_model_reshaped(
    tmp_path: Path,
) -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    golden = {"inputs": {"X": x}, "outputs": {"ROWS": rows(x), "TOTAL": x.sum(1, keepdims=True)}}
    write(tmp_path, BATCHED, golden)  # golden data in the client's shapes passes the check
    a, b = x[:2] - 5, np.ones((1, 4), np.float32)
    metadata, (got_a, got_b) = serve(tmp_path, {"X": a}, {"X": b})
    np.testing.assert_allclose(got_a["ROWS"], rows(a))
    np.testing.assert_allclose(got_b["ROWS"], rows(b))
    assert got_a["TOTAL"].shape == (2, 1)  # the model's [batch] vector, as dims [1]
    np.testing.assert_allclose(got_a["TOTAL"], a.sum(1, keepdims=True))
    np.testing.assert_allclose(got_b["TOTAL"], [[4.0]])
    assert [list(t.shape) for t in metadata.inputs] == [[-1, 4]]
    assert [list(t.shape) for t in metadata.outputs] == [[-1, 4], [-1, 1]]


def test_variable_dimensions_take_their_size_from_the_request(tmp_path: Path) -> None:
    write(tmp_path, VARIABLE)
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    _, (got,) = serve(tmp_path, {"X": x})
    assert got["ROWS"].shape == (5, 4)
    np.testing.assert_allclose(got["ROWS"], rows(x), rtol=1e-6)
    np.testing.assert_allclose(got["TOTAL"], x.sum(1), rtol=1e-5)


def _io(text: str, batch: int = 4) -> mc.ModelConfig:
    config = f'name: "m" max_batch_size: {batch} {text}'
    return text_format.Parse(config, mc.ModelConfig())


@pytest.mark.parametrize(
    ("text", "batch", "match"),
    [
        ('input [{ name: "a" dims: [ 4 ] reshape: { shape: [ 3 ] } }]', 4, "different size"),
        ('output [{ name: "a" dims: [ 2 ] reshape: { shape: [ ] } }]', 4, "different size"),
        ('input [{ name: "a" dims: [ 1 ] reshape: { shape: [ ] } }]', 0, "empty reshape"),
        ('input [{ name: "a" dims: [ 4 ] reshape: { shape: [ 0, 4 ] } }]', 4, "integer >= 1"),
        ('input [{ name: "a" dims: [ -1, 4 ] reshape: { shape: [ 4 ] } }]', 4, "different size"),
        (
            'input [{ name: "a" dims: [ 2, -1, 6 ] reshape: { shape: [ -1, 12 ] } }]',
            4,
            "variable-size",
        ),
    ],
)
def test_reshapes_triton_refuses_fail_the_load_naming_the_tensor(
    text: str, batch: int, match: str
) -> None:
    with pytest.raises(ModelLoadError, match=match) as raised:
        plan(_io(text, batch), "m/config.pbtxt")
    assert "'a'" in str(raised.value)


def test_reshapes_triton_accepts() -> None:
    accepted = plan(
        _io(
            'input [{ name: "a" dims: [ 2, 4, -1, 6 ] reshape: { shape: [ 8, -1, 1, 6 ] } },'
            ' { name: "b" dims: [ 1 ] reshape: { shape: [ ] } }, { name: "c" dims: [ 3 ] }]'
        ),
        "m/config.pbtxt",
    )
    assert accepted.inputs == {"a": ((2, 4, -1, 6), (8, -1, 1, 6)), "b": ((1,), ())}


class _Fixed:
    def __init__(self, output: np.ndarray) -> None:
        self.output = output

    def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"y": self.output}

    def close(self) -> None:
        pass


def test_an_output_that_does_not_match_its_reshape_fails_the_request() -> None:
    config = _io('output [{ name: "y" dims: [ 4 ] reshape: { shape: [ 2, 2 ] } }]')
    instance = ReshapedInstance(_Fixed(np.zeros((3, 4), np.float32)), plan(config, "m"))
    with pytest.raises(BackendError, match=r"output 'y' came out as \[3, 4\]"):
        instance.execute({})
    assert plan(_io(""), "m").wrap(instance) is instance  # nothing to reshape: no wrapper
