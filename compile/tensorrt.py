"""TensorRT engines built from the exported ONNX, written against TensorRT 10's Python API.

Not run in this project's CI (no GPU, no tensorrt): the builders raise ``Skipped`` with the
reason there. An engine is tied to the GPU model, compute capability and TensorRT version
it was built with, and to its optimisation profile and precision, so engines are cached
under a key of all of these: a mismatch builds a new engine instead of failing at load.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from warpserve.compile.variants import BuildContext, Skipped

WORKSPACE_BYTES = 1 << 30


def cache_dir() -> Path:
    root = os.environ.get("WARPSERVE_CACHE_DIR") or Path.home() / ".cache" / "warpserve"
    return Path(root) / "tensorrt"


def cache_key(
    gpu_name: str,
    capability: tuple[int, int],
    trt_version: str,
    onnx_digest: str,
    shapes: dict[str, list[list[int]]],
    precision: str,
) -> str:
    """A digest of everything an engine depends on; also written beside it, readable."""
    fields = {
        "gpu": gpu_name,
        "compute_capability": f"{capability[0]}.{capability[1]}",
        "tensorrt": trt_version,
        "onnx_sha256": onnx_digest,
        "profile": shapes,
        "precision": precision,
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:24]


def profile_shapes(ctx: BuildContext) -> dict[str, list[list[int]]]:
    """min, opt, max per input: batch 1, half the maximum, the maximum."""
    top = max(ctx.max_batch_size, 1)
    opt = max(1, top // 2)
    return {s.name: [[1, *s.dims], [opt, *s.dims], [top, *s.dims]] for s in ctx.inputs}


def _toolchain() -> tuple[Any, Any]:
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise Skipped(f"tensorrt is not installed ({exc}); pip install 'warpserve[gpu]'") from exc
    import torch

    if not torch.cuda.is_available():
        raise Skipped("TensorRT needs a CUDA GPU; torch sees none here")
    return trt, torch


def build_engine(ctx: BuildContext, path: Path, precision: str) -> None:
    trt, torch = _toolchain()
    onnx_path = ctx.onnx_file()
    shapes = profile_shapes(ctx)
    key = cache_key(
        torch.cuda.get_device_name(),
        torch.cuda.get_device_capability(),
        trt.__version__,
        hashlib.sha256(onnx_path.read_bytes()).hexdigest(),
        shapes,
        precision,
    )
    cached = cache_dir() / f"{key}.plan"
    if not cached.is_file():
        cached.parent.mkdir(parents=True, exist_ok=True)
        engine = _build(trt, onnx_path, shapes, precision, ctx.examples)
        staging = cached.with_suffix(f".{os.getpid()}.tmp")
        staging.write_bytes(engine)
        os.replace(staging, cached)  # a concurrent builder's engine is equally valid
    shutil.copyfile(cached, path)


def _build(
    trt: Any,
    onnx_path: Path,
    shapes: dict[str, list[list[int]]],
    precision: str,
    examples: dict[str, np.ndarray],
) -> bytes:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT's ONNX parser rejected the model: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    profile = builder.create_optimization_profile()
    for name, (low, opt, high) in shapes.items():
        profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(profile)
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        config.set_flag(trt.BuilderFlag.FP16)  # layers INT8 cannot take fall back to FP16
        config.int8_calibrator = _calibrator(trt, examples, shapes)
        config.set_calibration_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT could not build an engine (see its log above)")
    return bytes(serialized)


def _calibrator(trt: Any, examples: dict[str, np.ndarray], shapes: dict[str, Any]) -> Any:
    """Entropy calibration over the example rows, one batch of all of them."""
    import torch

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            super().__init__()
            self._batches = [
                {n: torch.from_numpy(np.ascontiguousarray(a)).cuda() for n, a in examples.items()}
            ]
            self._rows = len(next(iter(examples.values())))

        def get_batch_size(self) -> int:
            return self._rows

        def get_batch(self, names: list[str]) -> list[int] | None:
            if not self._batches:
                return None
            batch = self._batches.pop()
            return [int(batch[name].data_ptr()) for name in names]

        def read_calibration_cache(self) -> None:
            return None

        def write_calibration_cache(self, cache: bytes) -> None:
            return None

    return Calibrator()
