"""TensorRT engines: the cache key (pure, runs anywhere) and a build that needs a GPU."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")

import torch

from tests.compile import models
from warpserve.compile.source import ModelSource
from warpserve.compile.specs import parse_input
from warpserve.compile.tensorrt import cache_key, profile_shapes
from warpserve.compile.variants import BuildContext

BASE = {
    "gpu_name": "NVIDIA H100",
    "capability": (9, 0),
    "trt_version": "10.3.0",
    "onnx_digest": "ab" * 32,
    "shapes": {"x": [[1, 16], [4, 16], [8, 16]]},
    "precision": "fp16",
}
CHANGES = {
    "gpu_name": "NVIDIA A100",
    "capability": (8, 0),
    "trt_version": "10.4.0",
    "onnx_digest": "cd" * 32,
    "shapes": {"x": [[1, 16], [8, 16], [16, 16]]},
    "precision": "int8",
}
HAS_TRT = importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()


@pytest.mark.parametrize("field", list(CHANGES))
def test_engine_cache_key_changes_with_everything_an_engine_depends_on(field: str) -> None:
    assert _key(BASE) == _key(dict(BASE))
    assert _key({**BASE, field: CHANGES[field]}) != _key(BASE)


def _key(fields: dict[str, Any]) -> str:
    return cache_key(**fields)


def _context(tmp_path: Path) -> BuildContext:
    x = np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32)
    return BuildContext(
        ModelSource(models.mlp(), "module", "test MLP"),
        None,
        [parse_input("x:16:FP32")],
        ["OUTPUT0"],
        {"x": x},
        8,
        tmp_path,
    )


def test_profile_covers_batch_one_to_max(tmp_path: Path) -> None:
    assert profile_shapes(_context(tmp_path)) == {"x": [[1, 16], [4, 16], [8, 16]]}


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_TRT, reason="TensorRT engines need the tensorrt package and a GPU")
def test_engine_builds_and_is_reused_from_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from warpserve.compile.tensorrt import build_engine, cache_dir

    monkeypatch.setenv("WARPSERVE_CACHE_DIR", str(tmp_path / "cache"))
    ctx = _context(tmp_path)
    ctx.program = torch.export.export(
        ctx.source.module,
        (torch.zeros(4, 16),),
        dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=8)},),
    )
    build_engine(ctx, tmp_path / "a.plan", "fp16")
    (engine,) = cache_dir().glob("*.plan")
    stamp = engine.stat().st_mtime_ns
    build_engine(ctx, tmp_path / "b.plan", "fp16")
    assert engine.stat().st_mtime_ns == stamp
    assert (tmp_path / "a.plan").read_bytes() == (tmp_path / "b.plan").read_bytes()
