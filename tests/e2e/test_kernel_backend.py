"""Models served by the kernel backend through the normal request path and batcher."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.e2e.harness import ServerProcess, answers, start_server
from tests.server.backends.test_kernels import mlp_plan, mlp_reference, mlp_weights, topk_plan
from warpserve.server.backends.kernel_plan import write_plan

pytestmark = pytest.mark.e2e

BATCHING = "max_batch_size: 16\ndynamic_batching { max_queue_delay_microseconds: 2000 }\n"


def _model(repo: Path, name: str) -> Path:
    folder = repo / name
    folder.mkdir(parents=True)
    config = f'name: "{name}"\nbackend: "warpserve_kernels"\n{BATCHING}'
    (folder / "config.pbtxt").write_text(config)
    return folder / "1"


@pytest.fixture(scope="module")
def kernel_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("kernel-e2e")
    repo = root / "repo"
    write_plan(_model(repo, "fraud_kernels"), mlp_plan(), mlp_weights())
    plan, weights = topk_plan(k=5)
    write_plan(_model(repo, "recommender_kernels"), plan, weights)
    logs = root / "logs"
    logs.mkdir()
    server = start_server(repo, log_dir=logs)
    yield server
    server.stop()


def _fp32(name: str, x: np.ndarray) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return tensor


def test_the_mlp_model_answers_concurrent_clients_as_the_reference(
    kernel_server: ServerProcess,
) -> None:
    client = grpcclient.InferenceServerClient(kernel_server.url)
    rng = np.random.default_rng(5)
    requests = [rng.standard_normal((1 + i % 3, 16)).astype(np.float32) for i in range(24)]

    def infer(x: np.ndarray) -> np.ndarray:
        result = client.infer("fraud_kernels", [_fp32("TRANSACTION", x)])
        return np.asarray(result.as_numpy("FRAUD_PROBABILITY"))

    with ThreadPoolExecutor(8) as pool:
        answers_ = list(pool.map(infer, requests))
    for x, got in zip(requests, answers_, strict=True):
        np.testing.assert_allclose(got, mlp_reference(x, mlp_weights()), atol=1e-5)
    stats = client.get_inference_statistics("fraud_kernels").model_stats[0]
    assert stats.inference_count == sum(len(x) for x in requests)


def test_the_scoring_model_answers_ids_and_scores(kernel_server: ServerProcess) -> None:
    client = grpcclient.InferenceServerClient(kernel_server.url)
    _, weights = topk_plan(k=5)
    user = np.random.default_rng(6).standard_normal((3, 6)).astype(np.float32)
    result = client.infer("recommender_kernels", [_fp32("USER", user)])
    full = (user @ weights["tower"].T) @ weights["items"].T + weights["popularity"]
    want = np.argsort(-full, axis=1)[:, :5]
    np.testing.assert_array_equal(result.as_numpy("ITEM_IDS"), want)
    np.testing.assert_allclose(
        result.as_numpy("SCORES"), np.take_along_axis(full, want, 1), atol=1e-4
    )


def test_a_bad_request_is_invalid_argument_and_the_server_keeps_serving(
    kernel_server: ServerProcess,
) -> None:
    client = grpcclient.InferenceServerClient(kernel_server.url)
    wrong = np.zeros((2, 15), np.float32)
    with pytest.raises(InferenceServerException) as raised:
        client.infer("fraud_kernels", [_fp32("TRANSACTION", wrong)])
    assert raised.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert answers(kernel_server.url)
    ok = client.infer("fraud_kernels", [_fp32("TRANSACTION", np.zeros((1, 16), np.float32))])
    assert ok.as_numpy("FRAUD_PROBABILITY").shape == (1, 1)
