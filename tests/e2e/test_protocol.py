"""Every RPC of the KServe v2 / Triton gRPC protocol through the client users already have:
tritonclient.grpc (sync) and tritonclient.grpc.aio, plus grpc.health.v1.Health."""

from __future__ import annotations

import os
import queue
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient

from tests.e2e.conftest import (
    AFFINE,
    ECHO,
    NOBATCH,
    PAIR,
    SLOW,
    failure,
    fp32_input,
    health,
    output_array,
    raw_request,
    reference,
    rows,
)
from tests.e2e.harness import ServerProcess
from warpserve.protos import grpc_service_pb2 as pb
from warpserve.protos import grpc_service_pb2_grpc as pb_grpc

pytestmark = pytest.mark.e2e

TEST_MODELS = (AFFINE, NOBATCH, PAIR, ECHO, SLOW, "sleepy")


def assert_affine(result: Any, x: np.ndarray, output: str = "OUTPUT0") -> None:
    got = result.as_numpy(output)
    assert got.dtype == np.float32
    assert got.shape == (x.shape[0], 2)
    np.testing.assert_allclose(got, reference(x), rtol=1e-5, atol=1e-5)


# --- health and readiness ---------------------------------------------------------------


def test_health_check_serving(server: ServerProcess) -> None:
    assert health(server.url) == "SERVING"
    assert health(server.url, "inference.GRPCInferenceService") == "SERVING"


def test_server_live_and_ready(client: grpcclient.InferenceServerClient, run_aio: Any) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()

    async def check(aio: aioclient.InferenceServerClient) -> tuple[bool, bool]:
        return await aio.is_server_live(), await aio.is_server_ready()

    assert run_aio(check) == (True, True)


def test_model_ready(client: grpcclient.InferenceServerClient, run_aio: Any) -> None:
    for name in TEST_MODELS:
        assert client.is_model_ready(name), name
    assert client.is_model_ready(AFFINE, "1")
    assert not client.is_model_ready(AFFINE, "7")
    assert not client.is_model_ready("no_such_model")

    async def check(aio: aioclient.InferenceServerClient) -> list[bool]:
        return [
            await aio.is_model_ready(AFFINE),
            await aio.is_model_ready(AFFINE, "1"),
            await aio.is_model_ready(AFFINE, "7"),
            await aio.is_model_ready("no_such_model"),
        ]

    assert run_aio(check) == [True, True, False, False]


# --- metadata and configuration -----------------------------------------------------------


def test_server_metadata(client: grpcclient.InferenceServerClient, run_aio: Any) -> None:
    meta = client.get_server_metadata()
    assert meta.name == "warpserve"
    assert meta.version
    assert {"model_repository", "statistics", "model_configuration"} <= set(meta.extensions)
    as_json = client.get_server_metadata(as_json=True)
    assert as_json["name"] == "warpserve"

    async def check(aio: aioclient.InferenceServerClient) -> Any:
        return await aio.get_server_metadata()

    assert run_aio(check).name == "warpserve"


def test_model_metadata(client: grpcclient.InferenceServerClient, run_aio: Any) -> None:
    meta = client.get_model_metadata(AFFINE)
    assert meta.name == AFFINE
    assert list(meta.versions) == ["1"]
    assert meta.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("INPUT0", "FP32", [-1, 4])
    ]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [
        ("OUTPUT0", "FP32", [-1, 2])
    ]
    # Without max_batch_size there is no batch dimension in the shapes.
    nobatch = client.get_model_metadata(NOBATCH, "1", as_json=True)
    assert nobatch["inputs"] == [{"name": "INPUT0", "datatype": "FP32", "shape": ["-1", "4"]}]
    echo = client.get_model_metadata(ECHO)
    assert [(t.name, t.datatype) for t in echo.inputs] == [("TEXT", "BYTES")]

    async def check(aio: aioclient.InferenceServerClient) -> Any:
        return await aio.get_model_metadata(PAIR, "1", as_json=True)

    pair = run_aio(check)
    assert [t["name"] for t in pair["outputs"]] == ["OUTPUT0", "OUTPUT1"]


def test_model_config(client: grpcclient.InferenceServerClient, run_aio: Any) -> None:
    config = client.get_model_config(AFFINE).config
    assert config.name == AFFINE
    assert config.max_batch_size == 8
    assert config.HasField("dynamic_batching")
    assert [t.name for t in config.input] == ["INPUT0"]
    assert list(config.input[0].dims) == [4]
    as_json = client.get_model_config(SLOW, as_json=True)["config"]
    assert as_json["max_batch_size"] == 16
    assert as_json["dynamic_batching"]["priority_levels"] in (2, "2")
    assert client.get_model_config(NOBATCH).config.max_batch_size == 0

    async def check(aio: aioclient.InferenceServerClient) -> Any:
        return (await aio.get_model_config(AFFINE, "1")).config

    assert run_aio(check).max_batch_size == 8


def test_repository_index(client: grpcclient.InferenceServerClient, run_aio: Any) -> None:
    index = client.get_model_repository_index()
    states = {(m.name, m.version): m.state for m in index.models}
    for name in TEST_MODELS:
        assert states[(name, "1")] == "READY", states

    async def check(aio: aioclient.InferenceServerClient) -> Any:
        return await aio.get_model_repository_index(as_json=True)

    names = {m["name"] for m in run_aio(check)["models"]}
    assert set(TEST_MODELS) <= names


# --- inference ------------------------------------------------------------------------------


def test_infer_raw(client: grpcclient.InferenceServerClient, run_aio: Any) -> None:
    x = rows(3, seed=1)
    result = client.infer(AFFINE, [fp32_input(x)], request_id="req-7")
    assert_affine(result, x)
    response = result.get_response()
    assert (response.model_name, response.model_version, response.id) == (AFFINE, "1", "req-7")
    pinned = client.infer(AFFINE, [fp32_input(x)], model_version="1")
    assert_affine(pinned, x)

    async def check(aio: aioclient.InferenceServerClient) -> Any:
        return await aio.infer(AFFINE, [fp32_input(x)])

    assert_affine(run_aio(check), x)


def test_infer_without_batch_dimension(client: grpcclient.InferenceServerClient) -> None:
    x = rows(5, seed=2)
    assert_affine(client.infer(NOBATCH, [fp32_input(x)]), x)


def test_infer_typed_contents(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    """``contents.fp32_contents`` instead of raw bytes (what JSON-minded clients send)."""
    x = rows(2, seed=3)
    request = pb.ModelInferRequest(model_name=AFFINE)
    tensor = request.inputs.add(name="INPUT0", datatype="FP32", shape=[2, 4])
    tensor.contents.fp32_contents.extend(x.flatten().tolist())
    response = stub.ModelInfer(request, timeout=10)
    np.testing.assert_allclose(output_array(response), reference(x), rtol=1e-5, atol=1e-5)


def test_infer_bytes(client: grpcclient.InferenceServerClient) -> None:
    text = np.array([[b"hello"], ["w\u00f6rld".encode()], [b""]], dtype=np.object_)
    tensor = grpcclient.InferInput("TEXT", [3, 1], "BYTES")
    tensor.set_data_from_numpy(text)
    result = client.infer(ECHO, [tensor])
    assert result.as_numpy("TEXT_OUT").tolist() == text.tolist()


def test_large_requests_unary_and_streamed(
    client: grpcclient.InferenceServerClient, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    """Requests large enough that their raw tensors are served as views of the received
    bytes (``codec.VIEW_RAW_FROM_BYTES``): numbers and BYTES, unary and streamed."""
    x = rows(4096, seed=8)  # 64 KiB of FP32
    assert_affine(client.infer(NOBATCH, [fp32_input(x)]), x)
    text = np.array([[bytes([65 + i]) * 9000] for i in range(8)], dtype=np.object_)
    tensor = grpcclient.InferInput("TEXT", [8, 1], "BYTES")
    tensor.set_data_from_numpy(text)
    assert client.infer(ECHO, [tensor]).as_numpy("TEXT_OUT").tolist() == text.tolist()
    requests = [raw_request(NOBATCH, x * i) for i in range(3)]
    for i, request in enumerate(requests):
        request.id = str(i)
    answers = {a.infer_response.id: a for a in stub.ModelStreamInfer(iter(requests), timeout=10)}
    for i in range(3):
        assert not answers[str(i)].error_message
        np.testing.assert_allclose(
            output_array(answers[str(i)].infer_response), reference(x * i), rtol=1e-5, atol=1e-4
        )


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
def test_idle_server_leaves_the_cpu_alone(
    server: ServerProcess, client: grpcclient.InferenceServerClient
) -> None:
    """The event loop busy-polls after requests (--busy-poll-us, 1 ms by default), then
    sleeps: a server nobody calls takes no CPU."""
    for _ in range(50):
        assert_affine(client.infer(AFFINE, [fp32_input(rows(1, seed=1))]), rows(1, seed=1))
    time.sleep(0.2)
    before = _cpu_seconds(server.process.pid)
    time.sleep(1.0)
    assert _cpu_seconds(server.process.pid) - before < 0.1


def _cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of every thread of process ``pid``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_requested_outputs_subset(client: grpcclient.InferenceServerClient, run_aio: Any) -> None:
    x = rows(4, seed=4)
    both = client.infer(PAIR, [fp32_input(x)])
    assert [o.name for o in both.get_response().outputs] == ["OUTPUT0", "OUTPUT1"]
    wanted = [grpcclient.InferRequestedOutput("OUTPUT1")]
    only1 = client.infer(PAIR, [fp32_input(x)], outputs=wanted)
    assert [o.name for o in only1.get_response().outputs] == ["OUTPUT1"]
    np.testing.assert_array_equal(only1.as_numpy("OUTPUT1"), x)
    assert only1.as_numpy("OUTPUT0") is None

    async def check(aio: aioclient.InferenceServerClient) -> Any:
        return await aio.infer(
            PAIR, [fp32_input(x)], outputs=[aioclient.InferRequestedOutput("OUTPUT0")]
        )

    only0 = run_aio(check)
    assert [o.name for o in only0.get_response().outputs] == ["OUTPUT0"]
    assert_affine(only0, x)


def test_stream_infer_sync(server: ServerProcess) -> None:
    """start_stream / async_stream_infer: responses carry their request id; a bad request
    answers with an error on the stream and the stream goes on."""
    results: queue.Queue[tuple[Any, Any]] = queue.Queue()
    inputs = {f"r{i}": rows(1 + i % 3, seed=10 + i) for i in range(6)}
    with grpcclient.InferenceServerClient(server.url) as triton:
        triton.start_stream(callback=lambda result, error: results.put((result, error)))
        for request_id, x in inputs.items():
            triton.async_stream_infer(AFFINE, [fp32_input(x)], request_id=request_id)
        triton.async_stream_infer(AFFINE, [fp32_input(rows(1, seed=0), "WRONG")], request_id="bad")
        triton.async_stream_infer(AFFINE, [fp32_input(inputs["r0"])], request_id="after")
        answers = [results.get(timeout=30) for _ in range(len(inputs) + 2)]
        triton.stop_stream()
    errors = [error for result, error in answers if error is not None]
    assert len(errors) == 1
    assert AFFINE in errors[0].message() and "INPUT0" in errors[0].message()
    by_id = {result.get_response().id: result for result, error in answers if error is None}
    assert set(by_id) == {*inputs, "after"}
    for request_id, x in inputs.items():
        assert_affine(by_id[request_id], x)
    assert_affine(by_id["after"], inputs["r0"])


def test_stream_infer_aio(run_aio: Any) -> None:
    inputs = {f"a{i}": rows(1 + i % 4, seed=20 + i) for i in range(8)}

    async def requests() -> Any:
        for request_id, x in inputs.items():
            yield {"model_name": AFFINE, "inputs": [fp32_input(x)], "request_id": request_id}

    async def check(aio: aioclient.InferenceServerClient) -> dict[str, Any]:
        answers = {}
        async for result, error in aio.stream_infer(requests()):
            assert error is None, error
            answers[result.get_response().id] = result
            if len(answers) == len(inputs):
                break
        return answers

    answers = run_aio(check)
    assert set(answers) == set(inputs)
    for request_id, x in inputs.items():
        assert_affine(answers[request_id], x)


def test_inference_statistics(client: grpcclient.InferenceServerClient, run_aio: Any) -> None:
    def affine_stats() -> Any:
        stats = client.get_inference_statistics(AFFINE, "1").model_stats
        assert [(s.name, s.version) for s in stats] == [(AFFINE, "1")]
        return stats[0]

    before = affine_stats()
    x = rows(3, seed=5)
    client.infer(AFFINE, [fp32_input(x)])
    after = affine_stats()
    assert after.inference_stats.success.count == before.inference_stats.success.count + 1
    assert after.inference_count == before.inference_count + 3
    assert after.execution_count == before.execution_count + 1
    assert after.last_inference >= before.last_inference
    assert after.inference_stats.compute_infer.count > 0
    assert after.inference_stats.queue.count > 0
    assert any(b.batch_size == 3 for b in after.batch_stats)
    all_stats = client.get_inference_statistics(as_json=True)["model_stats"]
    assert set(TEST_MODELS) <= {s["name"] for s in all_stats}

    async def check(aio: aioclient.InferenceServerClient) -> Any:
        return await aio.get_inference_statistics(AFFINE)

    assert run_aio(check).model_stats[0].inference_count >= after.inference_count
    code, message = failure(lambda: client.get_inference_statistics("no_such_model"))
    assert code == "NOT_FOUND" and "no_such_model" in message


# --- explicit model control: load and unload ------------------------------------------------


def test_load_and_unload(explicit_server: ServerProcess) -> None:
    x = rows(2, seed=6)
    with grpcclient.InferenceServerClient(explicit_server.url) as triton:
        assert not triton.is_model_ready(AFFINE)
        index = {m.name: m for m in triton.get_model_repository_index().models}
        assert index[AFFINE].state != "READY"
        code, message = failure(lambda: triton.infer(AFFINE, [fp32_input(x)]))
        assert code == "UNAVAILABLE" and AFFINE in message

        triton.load_model(AFFINE)
        assert triton.is_model_ready(AFFINE)
        assert triton.is_model_ready(AFFINE, "1")
        ready = triton.get_model_repository_index(as_json=True)["models"]
        assert {"name": AFFINE, "version": "1", "state": "READY"} in [
            {k: m.get(k) for k in ("name", "version", "state")} for m in ready
        ]
        assert_affine(triton.infer(AFFINE, [fp32_input(x)]), x)

        triton.unload_model(AFFINE)
        assert not triton.is_model_ready(AFFINE)
        code, _ = failure(lambda: triton.infer(AFFINE, [fp32_input(x)]))
        assert code in ("UNAVAILABLE", "NOT_FOUND")

        code, message = failure(lambda: triton.load_model("no_such_model"))
        assert code == "NOT_FOUND" and "no_such_model" in message
    assert health(explicit_server.url) == "SERVING"


def test_load_and_unload_aio(explicit_server: ServerProcess, run_aio: Any) -> None:
    x = rows(2, seed=7)

    async def cycle(aio: aioclient.InferenceServerClient) -> list[bool]:
        seen = [await aio.is_model_ready("affine_b")]
        await aio.load_model("affine_b")
        seen.append(await aio.is_model_ready("affine_b"))
        assert_affine(await aio.infer("affine_b", [fp32_input(x)]), x)
        await aio.unload_model("affine_b")
        seen.append(await aio.is_model_ready("affine_b"))
        return seen

    assert run_aio(cycle, url=explicit_server.url) == [False, True, False]


# --- raw stub, for what tritonclient hides ----------------------------------------------------


def test_health_watch_and_unknown_service(server: ServerProcess) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(server.url) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        watch = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()


# --- the built-in demo models (built on demand; skipped when they cannot be) ------------------


DEMO_EXPECTED = {
    "image_classifier": ("IMAGE", [3, 32, 32], {"PROBS": ("FP32", [2])}),
    "fraud_scorer": ("TRANSACTION", [16], {"FRAUD_PROBABILITY": ("FP32", [1])}),
    "recommender": ("USER_FEATURES", None, {"ITEM_IDS": ("INT64", [10]), "SCORES": ("FP32", [10])}),
}


@pytest.mark.parametrize("model", sorted(DEMO_EXPECTED))
def test_demo_model(demo_server: ServerProcess, model: str) -> None:
    input_name, dims, outputs = DEMO_EXPECTED[model]
    with grpcclient.InferenceServerClient(demo_server.url) as triton:
        meta = triton.get_model_metadata(model)
        assert [t.name for t in meta.inputs] == [input_name]
        shape = [int(d) for d in meta.inputs[0].shape][1:]
        if dims is not None:
            assert shape == dims
        x = np.random.default_rng(0).standard_normal((3, *shape)).astype(np.float32)
        result = triton.infer(model, [fp32_input(x, input_name)])
    for name, (datatype, out_dims) in outputs.items():
        got = result.as_numpy(name)
        assert got is not None, name
        assert got.shape == (3, *out_dims)
        assert got.dtype == np.dtype(np.int64 if datatype == "INT64" else np.float32)
        if datatype == "FP32":
            assert np.isfinite(got).all()
    if model == "image_classifier":
        np.testing.assert_allclose(result.as_numpy("PROBS").sum(axis=1), 1.0, atol=1e-4)
    if model == "fraud_scorer":
        assert (
            (result.as_numpy("FRAUD_PROBABILITY") >= 0)
            & (result.as_numpy("FRAUD_PROBABILITY") <= 1)
        ).all()
