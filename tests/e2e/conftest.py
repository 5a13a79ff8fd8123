"""Session fixtures for the end-to-end tests: one model repository, servers, clients.

The repository holds tiny ONNX models built with onnx.helper (no torch):

- ``affine``: y = x @ W + b, INPUT0 FP32 [4] -> OUTPUT0 FP32 [2], dynamic batching, max 8;
- ``affine_nobatch``: the same graph with max_batch_size 0 (dims [-1, 4] -> [-1, 2]);
- ``affine_pair``: affine plus a second output (OUTPUT1 = INPUT0) for output selection;
- ``echo``: BYTES Identity, TEXT [1] -> TEXT_OUT [1], max 8;
- ``slow``: affine plus an input-dependent MatMul chain that ONNX Runtime cannot fold away,
  so one execution takes a few ms and batches form; max 16, two priority levels;
- ``sleepy``: the same with a long chain and max_batch_size 0, so requests queue one by one.

The demo models (``image_classifier``, ``fraud_scorer``, ``recommender``) are served by a
separate ``demo_server`` (``warpserve serve`` with no repository), built only when a test
asks for it.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from onnx import TensorProto, helper
from tritonclient.utils import InferenceServerException

from tests.e2e.harness import ServerProcess, answers, start_server
from tests.models import affine_model, affine_reference, write_golden
from warpserve.protos import grpc_service_pb2 as pb
from warpserve.protos import grpc_service_pb2_grpc as pb_grpc

T = TypeVar("T")

AFFINE, NOBATCH, PAIR, ECHO, SLOW, SLEEPY = (
    "affine",
    "affine_nobatch",
    "affine_pair",
    "echo",
    "slow",
    "sleepy",
)
DEMO_MODELS = ("image_classifier", "fraud_scorer", "recommender")
SLOW_MAX_BATCH = 16
BIG = 64 * 1024 * 1024  # client-side message limit, far above what the tests send


# --- models -----------------------------------------------------------------------------


def reference(x: np.ndarray) -> np.ndarray:
    """What every affine-based model here (version 1, scale 1.0) computes."""
    return affine_reference(x.astype(np.float32), scale=1.0).astype(np.float32)


def _config(
    name: str,
    max_batch: int,
    inputs: str,
    outputs: str,
    batching: str | None = None,
    extra: str = "",
) -> str:
    lines = [
        f'name: "{name}"',
        'platform: "onnxruntime_onnx"',
        f"max_batch_size: {max_batch}",
        f"input [{inputs}]",
        f"output [{outputs}]",
        "instance_group [{ count: 1 kind: KIND_CPU }]",
    ]
    if batching is not None:
        lines.append(f"dynamic_batching {{ {batching} }}")
    if extra:
        lines.append(extra)
    return "\n".join(lines) + "\n"


def _tensor(name: str, dtype: str, dims: str) -> str:
    return f'{{ name: "{name}" data_type: {dtype} dims: [ {dims} ] }}'


def _write(repo: Path, name: str, config: str, model: bytes, golden: bool = True) -> None:
    version = repo / name / "1"
    version.mkdir(parents=True)
    (repo / name / "config.pbtxt").write_text(config)
    (version / "model.onnx").write_bytes(model)
    if golden:
        write_golden(version, 1)


def _serialize(graph: Any) -> bytes:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def _affine_nodes(seed: int = 0, out: str = "OUTPUT0") -> tuple[list[Any], list[Any]]:
    """y = x @ W + b with the weights ``tests.models.affine_reference`` uses (scale 1.0)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((4, 2)).astype(np.float32)
    b = rng.standard_normal(2).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["INPUT0", "W"], ["XW"]),
        helper.make_node("Add", ["XW", "B"], [out]),
    ]
    weights = [
        helper.make_tensor("W", TensorProto.FLOAT, w.shape, w.flatten()),
        helper.make_tensor("B", TensorProto.FLOAT, b.shape, b),
    ]
    return nodes, weights


def _io(name: str, elem: int, features: int) -> Any:
    return helper.make_tensor_value_info(name, elem, ["batch", features])


def slow_affine_model(steps: int, size: int) -> bytes:
    """Affine, plus ``steps`` (size x size) MatMul+Tanh steps whose result is added times 0.

    The chain starts from ReduceSum(INPUT0) * 0 + M, so it depends on the input and cannot
    be constant-folded; its cost hardly depends on the batch size, so batching pays.
    Inputs must be finite (a NaN would spread through the chain into every output).
    """
    nodes, weights = _affine_nodes(out="Y")
    m = np.random.default_rng(1).standard_normal((size, size)) / np.sqrt(size)
    weights += [
        helper.make_tensor("M", TensorProto.FLOAT, [size, size], m.astype(np.float32).flatten()),
        helper.make_tensor("ZERO", TensorProto.FLOAT, [], [0.0]),
    ]
    nodes += [
        helper.make_node("ReduceSum", ["INPUT0"], ["S"], keepdims=0),
        helper.make_node("Mul", ["S", "ZERO"], ["S0"]),
        helper.make_node("Add", ["M", "S0"], ["H0"]),
    ]
    for i in range(steps):
        nodes += [
            helper.make_node("MatMul", [f"H{i}", "M"], [f"P{i}"]),
            helper.make_node("Tanh", [f"P{i}"], [f"H{i + 1}"]),
        ]
    nodes += [
        helper.make_node("ReduceSum", [f"H{steps}"], ["T"], keepdims=0),
        helper.make_node("Mul", ["T", "ZERO"], ["T0"]),
        helper.make_node("Add", ["Y", "T0"], ["OUTPUT0"]),
    ]
    graph = helper.make_graph(
        nodes,
        "slow_affine",
        [_io("INPUT0", TensorProto.FLOAT, 4)],
        [_io("OUTPUT0", TensorProto.FLOAT, 2)],
        weights,
    )
    return _serialize(graph)


def affine_pair_model() -> bytes:
    nodes, weights = _affine_nodes()
    nodes.append(helper.make_node("Identity", ["INPUT0"], ["OUTPUT1"]))
    graph = helper.make_graph(
        nodes,
        "affine_pair",
        [_io("INPUT0", TensorProto.FLOAT, 4)],
        [_io("OUTPUT0", TensorProto.FLOAT, 2), _io("OUTPUT1", TensorProto.FLOAT, 4)],
        weights,
    )
    return _serialize(graph)


def echo_model() -> bytes:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["TEXT"], ["TEXT_OUT"])],
        "echo",
        [_io("TEXT", TensorProto.STRING, 1)],
        [_io("TEXT_OUT", TensorProto.STRING, 1)],
    )
    return _serialize(graph)


IN4, OUT2 = _tensor("INPUT0", "TYPE_FP32", "4"), _tensor("OUTPUT0", "TYPE_FP32", "2")
IN_ANY4 = _tensor("INPUT0", "TYPE_FP32", "-1, 4")
OUT_ANY2 = _tensor("OUTPUT0", "TYPE_FP32", "-1, 2")


def write_test_models(repo: Path) -> None:
    _write(repo, AFFINE, _config(AFFINE, 8, IN4, OUT2, ""), affine_model(scale=1.0))
    _write(repo, NOBATCH, _config(NOBATCH, 0, IN_ANY4, OUT_ANY2), affine_model(scale=1.0))
    _write(
        repo,
        PAIR,
        _config(PAIR, 8, IN4, f"{OUT2}, {_tensor('OUTPUT1', 'TYPE_FP32', '4')}", ""),
        affine_pair_model(),
        golden=False,
    )
    _write(
        repo,
        ECHO,
        _config(
            ECHO,
            8,
            _tensor("TEXT", "TYPE_STRING", "1"),
            _tensor("TEXT_OUT", "TYPE_STRING", "1"),
            "",
        ),
        echo_model(),
        golden=False,
    )
    slow_batching = (
        "priority_levels: 2 default_priority_level: 2 "
        "default_queue_policy { allow_timeout_override: true }"
    )
    _write(
        repo,
        SLOW,
        _config(SLOW, SLOW_MAX_BATCH, IN4, OUT2, slow_batching),
        slow_affine_model(steps=4, size=384),
    )
    # One intra-op thread: a run then takes about as long on a 16-core machine as on two
    # cores (0.1 s or more), so requests really wait behind it everywhere. At 32 steps it
    # took 40 ms on a faster CI machine, and six requests sent together were answered
    # before the last of them had arrived, so "all of them in the server" never held.
    one_thread = 'parameters { key: "intra_op_thread_count" value { string_value: "1" } }'
    _write(
        repo,
        SLEEPY,
        _config(SLEEPY, 0, IN_ANY4, OUT_ANY2, extra=one_thread),
        slow_affine_model(steps=96, size=512),
    )


# --- session fixtures --------------------------------------------------------------------


@pytest.fixture(scope="session")
def e2e_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="session")
def log_dir(e2e_tmp: Path) -> Path:
    path = e2e_tmp / "logs"
    path.mkdir()
    return path


@pytest.fixture(scope="session")
def repo(e2e_tmp: Path) -> Path:
    path = e2e_tmp / "repo"
    path.mkdir()
    write_test_models(path)
    return path


@pytest.fixture(scope="session")
def server(repo: Path, log_dir: Path) -> Iterator[ServerProcess]:
    """One server for the tests that leave its state alone (shared memory regions they
    register, they unregister)."""
    process = start_server(repo, "--allow-client-shm", log_dir=log_dir)
    yield process
    process.stop()


@pytest.fixture(autouse=True)
def shared_server_still_answers(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test that used the shared server: it must still answer. A test that
    stalls it fails here, by name, with the server's log, instead of every later test
    timing out against it."""
    yield
    if "server" not in request.fixturenames:
        return
    shared: ServerProcess = request.getfixturevalue("server")
    if not answers(shared.url):
        log = shared.log()[-4000:]
        pytest.fail(f"the shared server stopped answering during this test; its log ends:\n{log}")


@pytest.fixture(scope="session")
def explicit_repo(e2e_tmp: Path) -> Path:
    """A repository with two affine models, and a valid model *outside* it (the decoy)
    that path-traversal names, and the symlink ``escape`` pointing at it, must never reach."""
    path = e2e_tmp / "explicit"
    path.mkdir()
    for name in (AFFINE, "affine_b"):
        _write(path, name, _config(name, 8, IN4, OUT2, ""), affine_model(scale=1.0))
    _write(e2e_tmp, "decoy", _config("decoy", 8, IN4, OUT2, ""), affine_model(scale=1.0))
    (path / "escape").symlink_to(e2e_tmp / "decoy", target_is_directory=True)
    return path


@pytest.fixture(scope="session")
def explicit_server(explicit_repo: Path, log_dir: Path) -> Iterator[ServerProcess]:
    """Loads nothing at start: models come and go through RepositoryModelLoad/Unload."""
    process = start_server(explicit_repo, "--model-control-mode", "explicit", log_dir=log_dir)
    yield process
    process.stop()


@pytest.fixture(scope="session")
def demo_cache(e2e_tmp: Path) -> Path:
    """WARPSERVE_CACHE_DIR with the demo repository built in it (skips when it cannot be).

    The cache lives in the session's tmp dir, so a session never trusts a stale build.
    Training takes from seconds to a couple of minutes on 2 cores: only the demo
    tests ask for it.
    """
    if importlib.util.find_spec("warpserve.server.demo.build") is None:
        pytest.skip("warpserve.server.demo.build is not there yet: no demo repository")
    from warpserve.server.demo.build import ensure_demo_repository

    cache = e2e_tmp / "cache"
    saved = os.environ.get("WARPSERVE_CACHE_DIR")
    os.environ["WARPSERVE_CACHE_DIR"] = str(cache)
    try:
        ensure_demo_repository(progress=False)
    except Exception as exc:  # torch missing (the [torch] extra), or the demo failed its check
        pytest.skip(f"the demo repository could not be built: {type(exc).__name__}: {exc}")
    finally:
        if saved is None:
            os.environ.pop("WARPSERVE_CACHE_DIR", None)
        else:
            os.environ["WARPSERVE_CACHE_DIR"] = saved
    return cache


@pytest.fixture(scope="session")
def demo_server(demo_cache: Path, log_dir: Path) -> Iterator[ServerProcess]:
    """``warpserve serve`` without --model-repository: the built-in demo models."""
    process = start_server(None, log_dir=log_dir, env={"WARPSERVE_CACHE_DIR": str(demo_cache)})
    yield process
    process.stop()


@pytest.fixture(scope="session")
def client(server: ServerProcess) -> Iterator[grpcclient.InferenceServerClient]:
    triton = grpcclient.InferenceServerClient(server.url)
    yield triton
    triton.close()


@pytest.fixture(scope="session")
def run_aio(server: ServerProcess) -> Callable[..., Any]:
    """``run_aio(fn, url=None)``: run ``await fn(aio_client)`` on a fresh event loop.

    grpc.aio channels belong to the loop that made them, so each call opens its own
    client inside ``asyncio.run`` (pytest-asyncio is not a dependency).
    """

    def run(
        fn: Callable[[aioclient.InferenceServerClient], Awaitable[T]], url: str | None = None
    ) -> T:
        async def main() -> T:
            async with aioclient.InferenceServerClient(url or server.url) as triton:
                return await fn(triton)

        return asyncio.run(main())

    return run


@pytest.fixture(scope="session")
def stub(server: ServerProcess) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    """warpserve's own stubs, for requests tritonclient will not build."""
    with grpc.insecure_channel(server.url, options=channel_options()) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


# --- helpers the test modules import -------------------------------------------------------


def channel_options(limit: int = BIG) -> list[tuple[str, int]]:
    return [("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit)]


def health(url: str, service: str = "") -> str:
    """grpc.health.v1 Check: 'SERVING', 'NOT_SERVING', ... (raises grpc.RpcError)."""
    with grpc.insecure_channel(url) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5.0
        )
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def rows(n: int, seed: int, low: float = -3.0, high: float = 3.0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(low, high, (n, 4)).astype(np.float32)


def fp32_input(x: np.ndarray, name: str = "INPUT0") -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return tensor


def raw_request(
    model: str,
    x: np.ndarray,
    *,
    name: str = "INPUT0",
    datatype: str = "FP32",
    version: str = "",
) -> pb.ModelInferRequest:
    """A ModelInfer request carrying ``x`` as raw bytes (edit it afterwards to break it)."""
    request = pb.ModelInferRequest(model_name=model, model_version=version)
    request.inputs.add(name=name, datatype=datatype, shape=list(x.shape))
    request.raw_input_contents.append(np.ascontiguousarray(x).tobytes())
    return request


def output_array(response: pb.ModelInferResponse, name: str = "OUTPUT0") -> np.ndarray:
    for i, tensor in enumerate(response.outputs):
        if tensor.name == name:
            assert tensor.datatype == "FP32"
            flat = np.frombuffer(response.raw_output_contents[i], dtype=np.float32)
            return flat.reshape(list(tensor.shape))
    raise AssertionError(f"response has no output {name}: {[t.name for t in response.outputs]}")


def failure(call: Callable[[], Any]) -> tuple[str, str]:
    """Run ``call``, expect it to fail; return (status code name, message)."""
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code().name, str(exc.details())
    except InferenceServerException as exc:
        return str(exc.status()).removeprefix("StatusCode."), str(exc.message())
    raise AssertionError("the call succeeded but was expected to fail")


def metrics_text(metrics_port: int) -> str:
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as reply:
        return str(reply.read().decode())


def metric_value(text: str, sample: str) -> float | None:
    """The value of one exposition line, e.g. 'nv_inference_count{model="a",version="1"}'."""
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    return None


def pending_requests(metrics_port: int, model: str, version: str = "1") -> float:
    text = metrics_text(metrics_port)
    value = metric_value(
        text, f'nv_inference_pending_request_count{{model="{model}",version="{version}"}}'
    )
    return value or 0.0


def model_stats(client: grpcclient.InferenceServerClient, model: str) -> Any:
    (stats,) = client.get_inference_statistics(model, "1").model_stats
    return stats


def new_batch_sizes(before: Any, after: Any) -> list[int]:
    """Batch sizes (rows per execution) that ran between two ModelStatistics snapshots."""
    counts = {b.batch_size: b.compute_infer.count for b in before.batch_stats}
    return sorted(
        b.batch_size
        for b in after.batch_stats
        if b.compute_infer.count > counts.get(b.batch_size, 0)
    )


def wait_pending(server: ServerProcess, model: str, count: int, timeout: float = 30.0) -> None:
    """Block until the server holds ``count`` requests for ``model`` (queued or running)."""
    deadline = time.monotonic() + timeout
    while pending_requests(server.metrics_port, model) < count:
        assert time.monotonic() < deadline, f"{model}: {count} requests never reached the server"
        time.sleep(0.005)  # poll interval, not a wait for a race to settle
