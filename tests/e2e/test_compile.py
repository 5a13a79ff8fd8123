"""`warpserve compile` output served by the real server, checked through tritonclient."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

pytest.importorskip("torch")

import torch

from tests.compile import models
from tests.compile.conftest import fast_request
from tests.e2e.harness import ServerProcess, start_server
from warpserve.compile.pipeline import compile_model
from warpserve.compile.progress import silent
from warpserve.compile.source import ModelSource
from warpserve.compile.specs import parse_input


def _compile(repo: Path, module: torch.nn.Module, name: str, **fields: Any) -> Path:
    """The pipeline behind `warpserve compile`, in-process (the CLI has its own tests)."""
    request = fast_request(
        source=ModelSource(module, "module", name), name=name, repository=repo, **fields
    )
    return compile_model(request, silent).version_dir


@pytest.fixture(scope="module")
def compiled_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("compiled")
    mlp = _compile(repo, models.mlp(), "mlp", inputs=[parse_input("x:16:FP32")], targets=["onnx"])
    assert mlp == repo / "mlp" / "1"
    _compile(
        repo,
        models.cnn(),
        "cnn",
        inputs=[parse_input("image:3x16x16:FP32")],
        output_names=["LOGITS", "CLASS"],
        targets=["ort"],
    )
    kernels = _compile(
        repo, models.sequential_mlp(), "seq", inputs=[parse_input("x:16:FP32")], targets=["kernels"]
    )
    assert (kernels / "plan.json").is_file() and (kernels / "weights.npz").is_file()
    return repo


@pytest.fixture(scope="module")
def compiled_server(compiled_repo: Path, log_dir: Path) -> Iterator[ServerProcess]:
    process = start_server(
        compiled_repo,
        "--model-control-mode",
        "poll",
        "--repository-poll-secs",
        "0.5",
        log_dir=log_dir,
    )
    yield process
    process.stop()


def _eager(module: torch.nn.Module, x: np.ndarray) -> list[np.ndarray]:
    with torch.no_grad():
        out = module.eval()(torch.from_numpy(x))
    return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]


def _infer(url: str, model: str, name: str, x: np.ndarray, outputs: list[str]) -> list[np.ndarray]:
    with grpcclient.InferenceServerClient(url) as client:
        tensor = grpcclient.InferInput(name, list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        result = client.infer(model, [tensor])
    return [result.as_numpy(o) for o in outputs]


def test_compiled_models_serve_what_eager_pytorch_computes(compiled_server: ServerProcess) -> None:
    rng = np.random.default_rng(11)
    x = rng.standard_normal((5, 16)).astype(np.float32)
    (got,) = _infer(compiled_server.url, "mlp", "x", x, ["OUTPUT0"])
    np.testing.assert_allclose(got, _eager(models.mlp(), x)[0], atol=1e-4, rtol=1e-3)
    images = rng.standard_normal((3, 3, 16, 16)).astype(np.float32)
    logits, classes = _infer(compiled_server.url, "cnn", "image", images, ["LOGITS", "CLASS"])
    want_logits, want_classes = _eager(models.cnn(), images)
    np.testing.assert_allclose(logits, want_logits, atol=1e-4, rtol=1e-3)
    np.testing.assert_array_equal(classes, want_classes)
    (scores,) = _infer(compiled_server.url, "seq", "x", x, ["OUTPUT0"])  # the kernels variant
    np.testing.assert_allclose(scores, _eager(models.sequential_mlp(), x)[0], atol=1e-4, rtol=1e-3)


def test_a_new_compile_is_picked_up_by_a_polling_server(
    compiled_server: ServerProcess, compiled_repo: Path
) -> None:
    written = _compile(
        compiled_repo, models.mlp(), "mlp", inputs=[parse_input("x:16:FP32")], targets=["ort"]
    )
    assert written == compiled_repo / "mlp" / "2"
    x = np.random.default_rng(12).standard_normal((2, 16)).astype(np.float32)
    deadline = time.monotonic() + 60
    with grpcclient.InferenceServerClient(compiled_server.url) as client:
        while not client.is_model_ready("mlp", "2"):
            assert time.monotonic() < deadline, compiled_server.log()[-3000:]
            time.sleep(0.2)  # poll interval of the readiness check
        tensor = grpcclient.InferInput("x", [2, 16], "FP32")
        tensor.set_data_from_numpy(x)
        result = client.infer("mlp", [tensor], model_version="2")
    want = _eager(models.mlp(), x)[0]
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), want, atol=1e-4, rtol=1e-3)
