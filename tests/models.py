"""Tiny ONNX models and repositories for tests, built with onnx.helper (no torch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from onnx import TensorProto, helper

from warpserve.server.repository import versionfolder


def affine_model(features: int = 4, outputs: int = 2, scale: float = 2.0, seed: int = 0) -> bytes:
    """y = x @ W * scale + b with a dynamic batch dimension."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((features, outputs)).astype(np.float32) * scale
    b = rng.standard_normal(outputs).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["INPUT0", "W"], ["XW"]),
            helper.make_node("Add", ["XW", "B"], ["OUTPUT0"]),
        ],
        "affine",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", outputs])],
        [
            helper.make_tensor("W", TensorProto.FLOAT, w.shape, w.flatten()),
            helper.make_tensor("B", TensorProto.FLOAT, b.shape, b),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def affine_reference(
    x: np.ndarray, features: int = 4, outputs: int = 2, scale: float = 2.0, seed: int = 0
) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((features, outputs)).astype(np.float32) * scale
    b = rng.standard_normal(outputs).astype(np.float32)
    return x @ w + b


AFFINE_CONFIG = """
name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: {max_batch}
input [{{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] }}]
output [{{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 2 ] }}]
dynamic_batching {{ {batching} }}
instance_group [{{ count: {instances} kind: KIND_CPU }}]
{extra}
"""


def write_affine(
    repo: Path,
    name: str = "affine",
    versions: tuple[int, ...] = (1,),
    *,
    max_batch: int = 8,
    batching: str = "",
    instances: int = 1,
    extra: str = "",
    golden: bool = True,
    config: bool = True,
) -> Path:
    model_dir = repo / name
    model_dir.mkdir(parents=True, exist_ok=True)
    if config:
        (model_dir / "config.pbtxt").write_text(
            AFFINE_CONFIG.format(
                name=name, max_batch=max_batch, batching=batching, instances=instances, extra=extra
            )
        )
    for v in versions:
        vdir = model_dir / str(v)
        vdir.mkdir(exist_ok=True)
        (vdir / "model.onnx").write_bytes(affine_model(scale=float(v)))
        if golden:
            write_golden(vdir, v)
    return model_dir


def write_golden(vdir: Path, version: int, *, corrupt: bool = False) -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4) / 10
    y = affine_reference(x, scale=float(version))
    if corrupt:
        y = y + 1.0
    versionfolder.write_golden(vdir, versionfolder.Golden({"INPUT0": x}, {"OUTPUT0": y}))


def mlp_model(width: int = 256, depth: int = 4, features: int = 64, seed: int = 0) -> bytes:
    """A ReLU MLP whose runs take long enough (tenths of a millisecond at batch 32) for
    compute, not per-call overhead, to dominate their latency."""
    rng = np.random.default_rng(seed)
    nodes, weights = [], []
    previous, dim = "INPUT0", features
    for i in range(depth):
        w = (rng.standard_normal((dim, width)) / np.sqrt(dim)).astype(np.float32)
        weights.append(helper.make_tensor(f"W{i}", TensorProto.FLOAT, w.shape, w.flatten()))
        nodes.append(helper.make_node("MatMul", [previous, f"W{i}"], [f"h{i}"]))
        nodes.append(helper.make_node("Relu", [f"h{i}"], [f"r{i}"]))
        previous, dim = f"r{i}", width
    w = (rng.standard_normal((dim, 4)) / np.sqrt(dim)).astype(np.float32)
    weights.append(helper.make_tensor("WO", TensorProto.FLOAT, w.shape, w.flatten()))
    nodes.append(helper.make_node("MatMul", [previous, "WO"], ["OUTPUT0"]))
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", 4])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


MLP_CONFIG = """
name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: 64
input [{{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 64 ] }}]
output [{{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] }}]
instance_group [{{ count: 1 kind: KIND_CPU }}]
{extra}
"""


def write_mlp(repo: Path, name: str = "mlp", *, width: int = 256, extra: str = "") -> Path:
    """Version 1 of an MLP with golden data computed by ONNX Runtime."""
    import onnxruntime as ort

    model_dir = repo / name
    vdir = model_dir / "1"
    (vdir / "golden").mkdir(parents=True)
    (model_dir / "config.pbtxt").write_text(MLP_CONFIG.format(name=name, extra=extra))
    (vdir / "model.onnx").write_bytes(mlp_model(width))
    x = np.random.default_rng(1).standard_normal((8, 64)).astype(np.float32)
    session = ort.InferenceSession(str(vdir / "model.onnx"), providers=["CPUExecutionProvider"])
    np.savez(vdir / "golden" / "inputs.npz", INPUT0=x)
    np.savez(vdir / "golden" / "outputs.npz", OUTPUT0=session.run(None, {"INPUT0": x})[0])
    return model_dir
