"""The KServe v2 REST endpoint through ``tritonclient.http``, as its users call it, and
with raw HTTP for what the client never sends (bad JSON, wrong lengths, large bodies)."""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from multiprocessing import shared_memory
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.e2e.conftest import AFFINE, ECHO, PAIR, reference, rows
from tests.e2e.harness import ServerProcess, start_server
from tests.e2e.test_images import _stripes as stripes

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def rest(server: ServerProcess) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(server.http_url)
    yield client
    client.close()


def fp32(x: np.ndarray, binary: bool, name: str = "INPUT0") -> httpclient.InferInput:
    tensor = httpclient.InferInput(name, list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    return tensor


def status_of(call: object) -> str:
    with pytest.raises(InferenceServerException) as caught:
        call()  # type: ignore[operator]
    return str(caught.value.status())


def post(server: ServerProcess, path: str, body: bytes, **headers: str) -> tuple[int, dict]:
    """A raw POST; returns the status and the JSON answer ({} when there is none)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
    try:
        connection.request("POST", path, body=body, headers=headers)
        reply = connection.getresponse()
        data = reply.read()
    finally:
        connection.close()
    return reply.status, json.loads(data) if data else {}


def test_health_metadata_and_config(rest: httpclient.InferenceServerClient) -> None:
    assert rest.is_server_live() and rest.is_server_ready()
    assert rest.is_model_ready(AFFINE) and rest.is_model_ready(AFFINE, "1")
    assert not rest.is_model_ready("no_such_model")  # control: a false answer exists
    metadata = rest.get_server_metadata()
    assert metadata["name"] == "warpserve" and "model_repository" in metadata["extensions"]
    model = rest.get_model_metadata(AFFINE)
    assert model["versions"] == ["1"] and model["platform"] == "onnxruntime_onnx"
    assert model["inputs"] == [{"name": "INPUT0", "datatype": "FP32", "shape": [-1, 4]}]
    config = rest.get_model_config(AFFINE, "1")
    assert config["max_batch_size"] == 8 and config["input"][0]["dims"] == [4]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_infer_matches_the_model(rest: httpclient.InferenceServerClient, binary: bool) -> None:
    x = rows(3, seed=7)
    output = httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary)
    result = rest.infer(AFFINE, [fp32(x, binary)], outputs=[output], request_id="r-7")
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), reference(x), rtol=1e-5, atol=1e-5)
    answer = result.get_response()
    assert answer["id"] == "r-7" and answer["model_version"] == "1"
    sent_as = answer["outputs"][0]
    assert ("parameters" in sent_as) is binary and ("data" in sent_as) is not binary


def test_outputs_default_to_every_output_and_can_be_selected(
    rest: httpclient.InferenceServerClient,
) -> None:
    x = rows(2, seed=3)
    every = rest.infer(PAIR, [fp32(x, True)])
    assert [o["name"] for o in every.get_response()["outputs"]] == ["OUTPUT0", "OUTPUT1"]
    np.testing.assert_array_equal(every.as_numpy("OUTPUT1"), x)
    one = rest.infer(PAIR, [fp32(x, True)], outputs=[httpclient.InferRequestedOutput("OUTPUT1")])
    assert [o["name"] for o in one.get_response()["outputs"]] == ["OUTPUT1"]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_bytes_tensors(rest: httpclient.InferenceServerClient, binary: bool) -> None:
    text = np.array([[b"hello"], ["\u00e9t\u00e9".encode()]], dtype=np.object_)
    tensor = httpclient.InferInput("TEXT", [2, 1], "BYTES")
    tensor.set_data_from_numpy(text, binary_data=binary)
    output = httpclient.InferRequestedOutput("TEXT_OUT", binary_data=binary)
    result = rest.infer(ECHO, [tensor], outputs=[output])
    got = [v if isinstance(v, bytes) else v.encode() for v in result.as_numpy("TEXT_OUT").flat]
    assert got == [b"hello", "\u00e9t\u00e9".encode()]  # tritonclient gives JSON text as str


def test_classification(rest: httpclient.InferenceServerClient) -> None:
    x = rows(2, seed=11)
    top = httpclient.InferRequestedOutput("OUTPUT0", class_count=1)
    got = rest.infer(AFFINE, [fp32(x, True)], outputs=[top]).as_numpy("OUTPUT0")
    best = reference(x).argmax(axis=1)
    assert [item.decode().split(":")[1] for item in got.reshape(-1)] == [str(i) for i in best]


def test_rest_and_grpc_share_one_data_plane(
    rest: httpclient.InferenceServerClient, client: grpcclient.InferenceServerClient
) -> None:
    """A REST request counts in the statistics gRPC reports, and the other way round."""

    def grpc_count() -> int:
        stats = client.get_inference_statistics(AFFINE, "1").model_stats[0]
        return int(stats.inference_stats.success.count)

    def rest_count() -> int:
        stats = rest.get_inference_statistics(AFFINE, "1")["model_stats"][0]
        return int(stats["inference_stats"]["success"]["count"])

    before = grpc_count()
    assert rest_count() == before
    rest.infer(AFFINE, [fp32(rows(1, seed=1), True)])
    assert grpc_count() == before + 1
    inp = grpcclient.InferInput("INPUT0", [1, 4], "FP32")
    inp.set_data_from_numpy(rows(1, seed=2))
    client.infer(AFFINE, [inp])
    assert rest_count() == before + 2
    every = rest.get_inference_statistics()["model_stats"]
    assert {s["name"] for s in every} >= {AFFINE, ECHO}


def test_errors_map_to_http_status_as_triton_maps_them(
    rest: httpclient.InferenceServerClient,
) -> None:
    x = rows(1, seed=0)
    assert status_of(lambda: rest.infer("no_such_model", [fp32(x, True)])) == "404"
    assert status_of(lambda: rest.infer(AFFINE, [fp32(x, True)], model_version="9")) == "404"
    assert status_of(lambda: rest.get_model_metadata("no_such_model")) == "404"
    wrong_shape = fp32(np.zeros((1, 3), np.float32), True)
    assert status_of(lambda: rest.infer(AFFINE, [wrong_shape])) == "400"
    misnamed = fp32(x, True, name="INPUT9")
    assert status_of(lambda: rest.infer(AFFINE, [misnamed])) == "400"
    assert status_of(lambda: rest.get_inference_statistics("no_such_model")) == "404"
    assert status_of(lambda: rest.get_cuda_shared_memory_status()) == "501"
    assert rest.is_server_ready()  # and it still serves


def test_system_shared_memory(
    rest: httpclient.InferenceServerClient,
) -> None:
    block = shared_memory.SharedMemory(create=True, size=8192)
    try:
        x = rows(3, seed=5)
        np.ndarray(x.shape, np.float32, block.buf, 0)[:] = x
        key = "/" + block.name
        rest.register_system_shared_memory("rest_in", key, 4096, 0)
        rest.register_system_shared_memory("rest_out", key, 4096, 4096)
        try:
            status = {r["name"]: r for r in rest.get_system_shared_memory_status()}
            assert status["rest_in"] == {
                "name": "rest_in",
                "key": key,
                "offset": 0,
                "byte_size": 4096,
            }
            assert (
                status_of(lambda: rest.register_system_shared_memory("rest_in", key, 16)) == "400"
            )
            tensor = httpclient.InferInput("INPUT0", [3, 4], "FP32")
            tensor.set_shared_memory("rest_in", x.nbytes)
            output = httpclient.InferRequestedOutput("OUTPUT0")
            output.set_shared_memory("rest_out", 3 * 2 * 4)
            result = rest.infer(AFFINE, [tensor], outputs=[output])
            (answered,) = result.get_response()["outputs"]
            assert "data" not in answered and answered["shape"] == [3, 2]
            written = np.ndarray((3, 2), np.float32, block.buf, 4096).copy()
            np.testing.assert_allclose(written, reference(x), rtol=1e-5, atol=1e-5)
        finally:
            rest.unregister_system_shared_memory("rest_in")
            rest.unregister_system_shared_memory("rest_out")
        assert "rest_in" not in {r["name"] for r in rest.get_system_shared_memory_status()}
    finally:
        block.close()
        block.unlink()


def test_repository_load_and_unload(explicit_server: ServerProcess) -> None:
    rest = httpclient.InferenceServerClient(explicit_server.http_url)
    try:
        assert not rest.is_model_ready(AFFINE)
        rest.load_model(AFFINE)
        assert rest.is_model_ready(AFFINE)
        index = {
            (m["name"], m.get("version", "")): m["state"] for m in rest.get_model_repository_index()
        }
        assert index[(AFFINE, "1")] == "READY"
        x = rows(2, seed=9)
        got = rest.infer(AFFINE, [fp32(x, True)]).as_numpy("OUTPUT0")
        np.testing.assert_allclose(got, reference(x), rtol=1e-5, atol=1e-5)
        rest.unload_model(AFFINE)
        assert not rest.is_model_ready(AFFINE)
        assert status_of(lambda: rest.load_model("../escape")) in ("400", "404")
        assert status_of(lambda: rest.infer(AFFINE, [fp32(x, True)])) == "503"  # not loaded
    finally:
        rest.close()


# --- raw HTTP: what tritonclient never sends ----------------------------------------------


INFER = f"/v2/models/{AFFINE}/infer"


def infer_json(x: np.ndarray, binary_size: int | None = None) -> bytes:
    tensor: dict = {"name": "INPUT0", "datatype": "FP32", "shape": list(x.shape)}
    if binary_size is None:
        tensor["data"] = x.reshape(-1).tolist()
    else:
        tensor["parameters"] = {"binary_data_size": binary_size}
    return json.dumps({"inputs": [tensor]}).encode()


def test_a_plain_json_request_works(server: ServerProcess) -> None:
    """The positive control for the refusals below: the same path, well formed."""
    x = rows(2, seed=4)
    status, answer = post(server, INFER, infer_json(x))
    assert status == 200, answer
    got = np.array(answer["outputs"][0]["data"], np.float32).reshape(2, 2)
    np.testing.assert_allclose(got, reference(x), rtol=1e-5, atol=1e-5)
    head = infer_json(x, binary_size=x.nbytes)
    status, answer = post(
        server, INFER, head + x.tobytes(), **{"Inference-Header-Content-Length": str(len(head))}
    )
    assert status == 200, answer


@pytest.mark.parametrize(
    ("body", "headers", "says"),
    [
        (b'{"inputs": [', {}, "not valid JSON"),
        (b"[1, 2]", {}, "JSON object"),
        (b'{"inputs": []}', {}, "needs 'inputs'"),
        (
            b'{"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 4], '
            b'"data": [1, 2]}]}',
            {},
            "needs 4",
        ),
        (
            b'{"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 4], '
            b'"data": ["a", "b", "c", "d"]}]}',
            {},
            "FP32 does not take",
        ),
        (
            infer_json(np.zeros((1, 4), np.float32)),
            {"Inference-Header-Content-Length": "9999"},
            "Inference-Header-Content-Length",
        ),
        (
            infer_json(np.zeros((1, 4), np.float32)),
            {"Inference-Header-Content-Length": "x"},
            "Inference-Header-Content-Length",
        ),
    ],
    ids=[
        "truncated-json",
        "not-an-object",
        "no-inputs",
        "element-count",
        "wrong-type",
        "header-past-end",
        "header-not-a-number",
    ],
)
def test_malformed_requests_get_400(
    server: ServerProcess, body: bytes, headers: dict[str, str], says: str
) -> None:
    status, answer = post(server, INFER, body, **headers)
    assert status == 400, answer
    assert says in answer["error"], answer


@pytest.mark.parametrize(("claimed", "sent"), [(32, 16), (16, 32)], ids=["short", "extra"])
def test_binary_sizes_that_disagree_with_the_body_get_400(
    server: ServerProcess, claimed: int, sent: int
) -> None:
    head = infer_json(np.zeros((1, 4), np.float32), binary_size=claimed)
    status, answer = post(
        server, INFER, head + bytes(sent), **{"Inference-Header-Content-Length": str(len(head))}
    )
    assert status == 400 and "binary_data_size" in answer["error"], answer


def _raw_exchange(server: ServerProcess, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=30) as sock:
        sock.sendall(request)
        reply = b""
        while b"\r\n\r\n" not in reply or len(reply.split(b"\r\n\r\n", 1)[1]) < _length(reply):
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    return reply


def _length(reply: bytes) -> int:
    for line in reply.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 0


def test_a_body_over_the_limit_gets_413_before_it_is_sent(server: ServerProcess) -> None:
    """Only the headers go: the answer comes from the Content-Length alone."""
    size = 64 * 1024 * 1024 + 1  # the default --http-max-input-size, plus one
    head = f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n".encode()
    reply = _raw_exchange(server, head)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert b"--http-max-input-size" in reply, reply


def test_a_content_length_shorter_than_the_json_gets_400(server: ServerProcess) -> None:
    body = infer_json(np.zeros((1, 4), np.float32))
    head = f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body) - 5}\r\n\r\n"
    reply = _raw_exchange(server, head.encode() + body[:-5])
    assert reply.startswith(b"HTTP/1.1 400"), reply[:200]
    assert b"not valid JSON" in reply, reply


def test_an_empty_body_with_content_length_zero_is_an_empty_body(server: ServerProcess) -> None:
    # As aiohttp's and requests' clients send a POST without data.
    status, index = post(server, "/v2/repository/index", b"", **{"Content-Length": "0"})
    assert status == 200 and AFFINE in [m["name"] for m in index]


def test_unknown_paths_and_wrong_methods(server: ServerProcess) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
    try:
        connection.request("GET", INFER)
        reply = connection.getresponse()
        assert reply.status == 405 and reply.getheader("Allow") == "POST"
        reply.read()
        connection.request("GET", "/v2/no/such/thing")
        reply = connection.getresponse()
        assert reply.status == 404 and "error" in json.loads(reply.read())
    finally:
        connection.close()


def test_a_small_limit_refuses_a_body_that_is_sent(repo: Path, log_dir: Path) -> None:
    small = start_server(repo, "--http-max-input-size", "1000", log_dir=log_dir)
    try:
        x = rows(8, seed=1)
        status, answer = post(small, INFER, infer_json(x))
        assert status == 200, answer  # control: under the limit
        status, answer = post(small, INFER, b" " * 2000)
        assert status == 413 and "1000" in answer["error"], answer
    finally:
        small.stop()


def test_a_jpeg_gets_its_label_from_the_demo_classifier(demo_server: ServerProcess) -> None:
    """The README's curl example, through tritonclient.http: a JPEG as a binary BYTES
    element; the demo's cats have horizontal stripes, its dogs vertical ones."""
    rest = httpclient.InferenceServerClient(demo_server.http_url)
    try:
        labels = []
        for horizontal in (True, False):
            image = httpclient.InferInput("IMAGE", [1, 1], "BYTES")
            image.set_data_from_numpy(np.array([[stripes(horizontal)]], dtype=np.object_))
            top = httpclient.InferRequestedOutput("PROBS", class_count=1)
            result = rest.infer("image_classifier_jpeg", [image], outputs=[top])
            labels.append(result.as_numpy("PROBS").reshape(-1)[0].decode().split(":")[-1])
        assert labels == ["cat", "dog"]
    finally:
        rest.close()


def test_rest_over_several_worker_processes(tmp_path: Path, log_dir: Path) -> None:
    """With --workers 2 both processes serve the one HTTP port (SO_REUSEPORT), and the
    statistics a REST call reads are summed over them, as over gRPC."""
    from tests.e2e.test_workers import per_worker
    from tests.models import write_affine

    write_affine(tmp_path, AFFINE, (1,))
    server = start_server(tmp_path, "--workers", "2", log_dir=log_dir)
    try:
        sent = 0
        answered: dict[int, float] = {}
        # A connection each: the kernel spreads them over the processes listening. Keep
        # opening them (bounded) until both have answered: a process may take connections
        # a moment after the server reports ready, so a fixed count could miss it.
        for _ in range(48):
            rest = httpclient.InferenceServerClient(server.http_url)
            try:
                for seed in range(5):
                    x = rows(1, seed=seed)
                    got = rest.infer(AFFINE, [fp32(x, True)]).as_numpy("OUTPUT0")
                    np.testing.assert_allclose(got, reference(x), rtol=1e-4, atol=1e-4)
                    sent += 1
            finally:
                rest.close()
            answered = per_worker(server.metrics_port)
            if len(answered) == 2 and min(answered.values()) > 0:
                break
        rest = httpclient.InferenceServerClient(server.http_url)
        try:
            (stats,) = rest.get_inference_statistics(AFFINE, "1")["model_stats"]
            assert stats["inference_stats"]["success"]["count"] == sent
        finally:
            rest.close()
        # Both processes answered REST calls.
        assert len(answered) == 2 and min(answered.values()) > 0, answered
    finally:
        assert server.stop() == 0, server.log()
