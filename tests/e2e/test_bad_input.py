"""Bad requests get the right status code and a message that names the tensor or model and
says what to do; afterwards the server still answers health checks SERVING.

Most requests are built by hand with warpserve's own stubs: tritonclient refuses to send
many of them (mismatched byte sizes, duplicated inputs, contents plus raw data...).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tests.e2e.conftest import (
    AFFINE,
    ECHO,
    SLOW,
    channel_options,
    failure,
    fp32_input,
    health,
    output_array,
    raw_request,
    reference,
    rows,
)
from tests.e2e.harness import ServerProcess, start_server
from warpserve.protos import grpc_service_pb2 as pb
from warpserve.protos import grpc_service_pb2_grpc as pb_grpc

pytestmark = pytest.mark.e2e

Build = Callable[[], pb.ModelInferRequest]


def _x(n: int = 2) -> np.ndarray:
    return rows(n, seed=99)


def _missing_input() -> pb.ModelInferRequest:
    return pb.ModelInferRequest(model_name=AFFINE)


def _extra_input() -> pb.ModelInferRequest:
    request = raw_request(AFFINE, _x())
    request.inputs.add(name="EXTRA", datatype="FP32", shape=[2, 4])
    request.raw_input_contents.append(_x().tobytes())
    return request


def _misnamed_input() -> pb.ModelInferRequest:
    request = raw_request(AFFINE, _x())
    request.inputs[0].name = "input0"
    return request


def _duplicated_input() -> pb.ModelInferRequest:
    request = raw_request(AFFINE, _x())
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[2, 4])
    request.raw_input_contents.append(_x().tobytes())
    return request


def _raw_count_mismatch() -> pb.ModelInferRequest:
    request = raw_request(AFFINE, _x())
    request.raw_input_contents.append(b"\0" * 32)
    return request


def _wrong_byte_size() -> pb.ModelInferRequest:
    request = raw_request(AFFINE, _x())
    request.raw_input_contents[0] = request.raw_input_contents[0][:-4]
    return request


def _contents_and_raw() -> pb.ModelInferRequest:
    request = raw_request(AFFINE, _x())
    request.inputs[0].contents.fp32_contents.extend(_x().flatten().tolist())
    return request


def _contents_count_mismatch() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=AFFINE)
    tensor = request.inputs.add(name="INPUT0", datatype="FP32", shape=[2, 4])
    tensor.contents.fp32_contents.extend([1.0] * 7)
    return request


def _bytes_request(raw: bytes) -> Build:
    def build() -> pb.ModelInferRequest:
        request = pb.ModelInferRequest(model_name=ECHO)
        request.inputs.add(name="TEXT", datatype="BYTES", shape=[1, 1])
        request.raw_input_contents.append(raw)
        return request

    return build


def _with_parameter(key: str, value: Any) -> Build:
    def build() -> pb.ModelInferRequest:
        request = raw_request(SLOW, _x())
        param = request.parameters[key]
        if isinstance(value, str):
            param.string_param = value
        else:
            param.int64_param = value
        return request

    return build


def _unknown_output() -> pb.ModelInferRequest:
    request = raw_request(AFFINE, _x())
    request.outputs.add(name="NOPE")
    return request


# (id, request builder, status code, substrings the message must hold)
CASES: list[tuple[str, Build, str, list[str]]] = [
    ("unknown model", lambda: raw_request("no_such_model", _x()), "NOT_FOUND", ["no_such_model"]),
    (
        "unknown version",
        lambda: raw_request(AFFINE, _x(), version="7"),
        "NOT_FOUND",
        [AFFINE, "7", "loaded"],
    ),
    (
        "version not a number",
        lambda: raw_request(AFFINE, _x(), version="latest"),
        "INVALID_ARGUMENT",
        ["latest", "positive integer"],
    ),
    ("missing input", _missing_input, "INVALID_ARGUMENT", [AFFINE, "INPUT0", "lacks"]),
    ("extra input", _extra_input, "INVALID_ARGUMENT", [AFFINE, "EXTRA", "it takes"]),
    (
        "misnamed input",
        _misnamed_input,
        "INVALID_ARGUMENT",
        ["'input0'", "lacks ['INPUT0']", "did you mean 'INPUT0'"],
    ),
    ("duplicated input", _duplicated_input, "INVALID_ARGUMENT", ["INPUT0", "more than once"]),
    (
        "raw entries do not match inputs",
        _raw_count_mismatch,
        "INVALID_ARGUMENT",
        ["raw_input_contents", "one raw entry per input"],
    ),
    (
        "wrong dtype",
        lambda: raw_request(AFFINE, _x().astype(np.float64), datatype="FP64"),
        "INVALID_ARGUMENT",
        [AFFINE, "INPUT0", "FP64", "FP32", "convert"],
    ),
    (
        "unknown dtype",
        lambda: raw_request(AFFINE, _x(), datatype="FP99"),
        "INVALID_ARGUMENT",
        ["INPUT0", "FP99", "FP32"],
    ),
    (
        "wrong shape",
        lambda: raw_request(AFFINE, rows(2, seed=1).reshape(4, 2)),
        "INVALID_ARGUMENT",
        [AFFINE, "INPUT0", "[4, 2]", "[-1, 4]"],
    ),
    (
        "wrong rank",
        lambda: raw_request(AFFINE, _x().reshape(-1)),
        "INVALID_ARGUMENT",
        [AFFINE, "INPUT0", "[8]", "[-1, 4]"],
    ),
    ("raw byte size", _wrong_byte_size, "INVALID_ARGUMENT", ["INPUT0", "28 bytes", "32"]),
    ("contents count", _contents_count_mismatch, "INVALID_ARGUMENT", ["INPUT0", "7", "8"]),
    (
        "batch above max",
        lambda: raw_request(AFFINE, rows(9, seed=2)),
        "INVALID_ARGUMENT",
        [AFFINE, "INPUT0", "max_batch_size 8", "split"],
    ),
    (
        "empty batch",
        lambda: raw_request(AFFINE, np.zeros((0, 4), np.float32)),
        "INVALID_ARGUMENT",
        [AFFINE, "INPUT0", "0 rows", "at least one row"],
    ),
    (
        "contents and raw",
        _contents_and_raw,
        "INVALID_ARGUMENT",
        ["INPUT0", "raw_input_contents", "one form"],
    ),
    (
        "bytes length prefix too long",
        _bytes_request(struct.pack("<I", 100) + b"abc"),
        "INVALID_ARGUMENT",
        ["TEXT", "100 bytes", "length prefix"],
    ),
    (
        "bytes length prefix cut",
        _bytes_request(b"\x05\x00"),
        "INVALID_ARGUMENT",
        ["TEXT", "4-byte little-endian length prefix"],
    ),
    (
        "bytes trailing data",
        _bytes_request(struct.pack("<I", 1) + b"ab"),
        "INVALID_ARGUMENT",
        ["TEXT", "1 bytes left", "shape"],
    ),
    (
        "bytes not utf-8",
        _bytes_request(struct.pack("<I", 2) + b"\xff\xfe"),
        "INVALID_ARGUMENT",
        ["TEXT", "UTF-8"],
    ),
    ("unknown output", _unknown_output, "INVALID_ARGUMENT", [AFFINE, "NOPE", "OUTPUT0"]),
    (
        "priority out of range",
        _with_parameter("priority", 5),
        "INVALID_ARGUMENT",
        ["priority", "5", "1..2"],
    ),
    (
        "timeout not an integer",
        _with_parameter("timeout", "soon"),
        "INVALID_ARGUMENT",
        ["timeout", "integer"],
    ),
]


def assert_still_serving(server: ServerProcess, stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    assert health(server.url) == "SERVING"
    x = rows(1, seed=5)
    good = stub.ModelInfer(raw_request(AFFINE, x), timeout=10)
    np.testing.assert_allclose(output_array(good), reference(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("build", "code", "needles"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_request(
    server: ServerProcess,
    stub: pb_grpc.GRPCInferenceServiceStub,
    build: Build,
    code: str,
    needles: list[str],
) -> None:
    got, message = failure(lambda: stub.ModelInfer(build(), timeout=10))
    assert got == code, message
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    assert_still_serving(server, stub)


def test_bad_requests_through_tritonclient(
    server: ServerProcess,
    client: grpcclient.InferenceServerClient,
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    """The same rejections as tritonclient users see them."""
    code, message = failure(lambda: client.infer(AFFINE, [fp32_input(rows(9, seed=3))]))
    assert code == "INVALID_ARGUMENT" and "max_batch_size 8" in message
    wrong = grpcclient.InferInput("INPUT0", [2, 4], "INT32")
    wrong.set_data_from_numpy(np.zeros((2, 4), np.int32))
    code, message = failure(lambda: client.infer(AFFINE, [wrong]))
    assert code == "INVALID_ARGUMENT" and "INT32" in message and "FP32" in message
    code, message = failure(lambda: client.infer(AFFINE, [fp32_input(_x())], model_version="3"))
    assert code == "NOT_FOUND" and AFFINE in message
    code, message = failure(lambda: client.get_model_metadata("no_such_model"))
    assert code == "NOT_FOUND" and "no_such_model" in message
    code, message = failure(lambda: client.get_model_config(AFFINE, "9"))
    assert code == "NOT_FOUND" and AFFINE in message
    assert_still_serving(server, stub)


def test_triton_wording_for_unknown_models_versions_and_outputs(
    server: ServerProcess,
    client: grpcclient.InferenceServerClient,
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    """Clients tell "no such model" and "no such output" apart by Triton's words; the
    message keeps warpserve's detail after them."""
    unknown = "Request for unknown model: "
    calls = {
        "infer, unknown model": lambda: client.infer("no_such_model", [fp32_input(_x())]),
        "infer, unknown version": lambda: client.infer(
            AFFINE, [fp32_input(_x())], model_version="7"
        ),
        "metadata, unknown model": lambda: client.get_model_metadata("no_such_model"),
        "config, unknown version": lambda: client.get_model_config(AFFINE, "9"),
        "statistics, unknown model": lambda: client.get_inference_statistics("no_such_model"),
    }
    for what, call in calls.items():
        code, message = failure(call)
        assert code == "NOT_FOUND" and message.startswith(unknown), (what, message)
    code, message = failure(lambda: client.infer("no_such_model", [fp32_input(_x())]))
    assert message.startswith(f"{unknown}'no_such_model' is not known to this server"), message
    _, message = failure(lambda: client.infer(AFFINE, [fp32_input(_x())], model_version="7"))
    assert message.startswith(f"{unknown}'{AFFINE}' version 7 is not found"), message

    nope = grpcclient.InferRequestedOutput("NOPE")
    code, message = failure(lambda: client.infer(AFFINE, [fp32_input(_x())], outputs=[nope]))
    assert code == "INVALID_ARGUMENT", message
    assert message.startswith(f"unexpected inference output 'NOPE' for model '{AFFINE}'")
    assert "OUTPUT0" in message  # the outputs it does have
    assert_still_serving(server, stub)


@pytest.mark.parametrize(
    "data",
    [
        b"\x0a\x05af",  # a model name cut short
        raw_request(AFFINE, _x()).SerializeToString()[:-3] + b"\x3a\xff\xff\x7f" + bytes(70000),
    ],
    ids=["small", "large"],
)
def test_bytes_that_are_not_a_request(
    server: ServerProcess, stub: pb_grpc.GRPCInferenceServiceStub, data: bytes
) -> None:
    with grpc.insecure_channel(server.url, options=channel_options()) as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        code, message = failure(lambda: infer(data, timeout=10))
    assert code == "INVALID_ARGUMENT" and "not a valid ModelInferRequest" in message, message
    assert_still_serving(server, stub)


def test_stream_bad_request_keeps_stream(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    x = rows(2, seed=4)
    requests = [_missing_input(), raw_request(AFFINE, x)]
    requests[0].id, requests[1].id = "bad", "good"
    answers = {r.infer_response.id: r for r in stub.ModelStreamInfer(iter(requests), timeout=10)}
    assert "INPUT0" in answers["bad"].error_message
    assert not answers["good"].error_message
    np.testing.assert_allclose(
        output_array(answers["good"].infer_response), reference(x), rtol=1e-5, atol=1e-5
    )


def test_nan_and_inf_pass_through(
    server: ServerProcess,
    client: grpcclient.InferenceServerClient,
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    x = rows(4, seed=6)
    x[0, :] = np.nan
    x[1, 0] = np.inf
    x[2, 3] = -np.inf
    with np.errstate(invalid="ignore"):
        want = reference(x)
    assert np.isnan(want).any() and np.isinf(want).any()  # the check below is not vacuous
    for got in (
        output_array(stub.ModelInfer(raw_request(AFFINE, x), timeout=10)),
        client.infer(AFFINE, [fp32_input(x)]).as_numpy("OUTPUT0"),
    ):
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_array_equal(np.isposinf(got), np.isposinf(want))
        np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want))
        finite = np.isfinite(want)
        np.testing.assert_allclose(got[finite], want[finite], rtol=1e-5, atol=1e-5)
    assert health(server.url) == "SERVING"


# --- message size limit -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_server(repo: Path, log_dir: Path) -> Iterator[ServerProcess]:
    process = start_server(
        repo,
        "--grpc-max-message-bytes",
        "1048576",
        "--model-control-mode",
        "explicit",
        "--load-model",
        AFFINE,
        log_dir=log_dir,
    )
    yield process
    process.stop()


def test_message_over_size_limit(small_server: ServerProcess) -> None:
    big = np.zeros((2 * 1024 * 1024 // 16, 4), np.float32)  # 2 MiB of raw data
    with grpc.insecure_channel(small_server.url, options=channel_options()) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        code, message = failure(lambda: stub.ModelInfer(raw_request(AFFINE, big), timeout=30))
        assert code == "RESOURCE_EXHAUSTED", message
        assert "1048576" in message
        assert_still_serving(small_server, stub)


# --- path traversal ----------------------------------------------------------------------------


TRAVERSAL = [
    "../decoy",
    "..%2Fdecoy",
    "..%2F..%2Fetc%2Fpasswd",
    "../../etc/passwd",
    "/etc/passwd",
    "affine/../decoy",
    "..",
    "",
    "escape/../../decoy",
    "%2e%2e%2fdecoy",
    "..\\decoy",
]


@pytest.mark.parametrize("name", TRAVERSAL)
def test_path_traversal_in_model_name(explicit_server: ServerProcess, name: str) -> None:
    """The repository's parent holds a valid model, ``decoy``: no name reaches it."""
    with grpc.insecure_channel(explicit_server.url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        calls = {
            "load": lambda: stub.RepositoryModelLoad(
                pb.RepositoryModelLoadRequest(model_name=name), timeout=30
            ),
            "infer": lambda: stub.ModelInfer(raw_request(name, _x()), timeout=10),
            "metadata": lambda: stub.ModelMetadata(pb.ModelMetadataRequest(name=name), timeout=10),
            "config": lambda: stub.ModelConfig(pb.ModelConfigRequest(name=name), timeout=10),
            "statistics": lambda: stub.ModelStatistics(
                pb.ModelStatisticsRequest(name=name), timeout=10
            ),
            "unload": lambda: stub.RepositoryModelUnload(
                pb.RepositoryModelUnloadRequest(model_name=name), timeout=10
            ),
        }
        if not name:
            del calls["statistics"]  # an empty name asks for every model's statistics
        for what, call in calls.items():
            code, message = failure(call)
            assert code in ("INVALID_ARGUMENT", "NOT_FOUND"), (what, code, message)
        ready = stub.ModelReady(pb.ModelReadyRequest(name=name), timeout=10)
        assert not ready.ready
        index = stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=10)
        assert "decoy" not in {m.name for m in index.models}
    assert health(explicit_server.url) == "SERVING"


def test_symlink_out_of_repository(explicit_server: ServerProcess) -> None:
    """``escape`` is a folder in the repository linking to the decoy outside it."""
    with grpc.insecure_channel(explicit_server.url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        code, message = failure(
            lambda: stub.RepositoryModelLoad(
                pb.RepositoryModelLoadRequest(model_name="escape"), timeout=30
            )
        )
        assert code in ("INVALID_ARGUMENT", "NOT_FOUND"), message
        assert not stub.ModelReady(pb.ModelReadyRequest(name="escape"), timeout=10).ready
    assert health(explicit_server.url) == "SERVING"
