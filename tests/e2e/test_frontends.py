"""Both gRPC frontends serve the same protocol.

The rest of the suite runs against the default frontend (native where it was built). These
tests check that the default is the one expected, and run the protocol's kinds of call
(unary inference, ModelStreamInfer, health Watch, errors, deadlines) against the other
frontend too, so neither is left untested.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.e2e.conftest import AFFINE, SLEEPY, fp32_input, reference, rows
from tests.e2e.harness import ServerProcess, start_server
from warpserve.server.native import transport


@pytest.fixture(scope="module", params=["native", "python"])
def frontend_server(
    request: pytest.FixtureRequest, repo: Path, log_dir: Path
) -> Iterator[ServerProcess]:
    if request.param == "native" and not transport.available():
        pytest.skip(transport.MISSING)
    server = start_server(repo, "--grpc-frontend", request.param, log_dir=log_dir)
    try:
        yield server
    finally:
        server.stop()


def test_the_default_frontend_is_native_where_it_was_built(server: ServerProcess) -> None:
    expected = "native" if transport.available() else "python"
    assert f"gRPC frontend: {expected}" in server.log()


def test_unary_inference_and_errors(frontend_server: ServerProcess) -> None:
    with grpcclient.InferenceServerClient(frontend_server.url) as client:
        x = rows(3, seed=5)
        result = client.infer(AFFINE, [fp32_input(x)])
        np.testing.assert_allclose(result.as_numpy("OUTPUT0"), reference(x), rtol=1e-5)
        with pytest.raises(Exception, match=r"unknown model|not known"):
            client.infer("no_such_model", [fp32_input(x)])
        assert client.is_server_ready()


def test_deadline_exceeded(frontend_server: ServerProcess) -> None:
    with grpcclient.InferenceServerClient(frontend_server.url) as client:
        x = np.ones((1, 4), np.float32)
        with pytest.raises(Exception, match=r"(?i)deadline"):
            client.infer(SLEEPY, [fp32_input(x)], client_timeout=0.001)
        client.infer(AFFINE, [fp32_input(x)])  # still serving


def test_stream_infer_answers_every_request(frontend_server: ServerProcess) -> None:
    answers: queue.Queue[tuple[object, object]] = queue.Queue()
    with grpcclient.InferenceServerClient(frontend_server.url) as client:
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        xs = {f"r{i}": rows(1 + i % 3, seed=i) for i in range(50)}
        for rid, x in xs.items():
            client.async_stream_infer(AFFINE, [fp32_input(x)], request_id=rid)
        client.async_stream_infer("no_such_model", [fp32_input(xs["r0"])], request_id="bad")
        got = [answers.get(timeout=30) for _ in range(len(xs) + 1)]
        client.stop_stream()
    errors = [error for _, error in got if error is not None]
    assert len(errors) == 1 and "no_such_model" in str(errors[0])
    for result, error in got:
        if error is None:
            response = result.get_response()  # type: ignore[attr-defined]
            want = reference(xs[response.id])
            np.testing.assert_allclose(result.as_numpy("OUTPUT0"), want, rtol=1e-5)  # type: ignore[attr-defined]


def test_health_check_and_watch(frontend_server: ServerProcess) -> None:
    with grpc.insecure_channel(frontend_server.url) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        check = stub.Check(health_pb2.HealthCheckRequest(service=""))
        assert check.status == health_pb2.HealthCheckResponse.SERVING
        statuses: queue.Queue[int] = queue.Queue()
        watch = stub.Watch(health_pb2.HealthCheckRequest(service=""))

        def read() -> None:
            with contextlib.suppress(grpc.RpcError):  # ends with the cancel below
                for reply in watch:
                    statuses.put(reply.status)

        thread = threading.Thread(target=read, daemon=True)
        thread.start()
        assert statuses.get(timeout=10) == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()
        thread.join(10)
