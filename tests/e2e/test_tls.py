"""TLS and mutual TLS on the gRPC and HTTP ports, with Triton's flags and certificates made
here.

Each refusal has its positive control in the same module: the same server answers a
client that holds the right CA (and, for mutual TLS, the right client certificate).
"""

from __future__ import annotations

import http.client
import json
import signal
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.certs import Pki, make_pki
from tests.e2e.conftest import AFFINE, fp32_input, reference, rows
from tests.e2e.harness import ServerProcess, start_server
from warpserve.protos import grpc_service_pb2 as pb
from warpserve.protos import grpc_service_pb2_grpc as pb_grpc
from warpserve.server.cli import main as warpserve_main

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _start_tls(repo: Path, log_dir: Path, pki: Pki, *flags: str) -> ServerProcess:
    process = start_server(
        repo,
        *flags,
        "--grpc-server-cert",
        str(pki.server_cert),
        "--grpc-server-key",
        str(pki.server_key),
        "--grpc-root-cert",
        str(pki.ca),
        "--load-model",
        AFFINE,
        "--model-control-mode",
        "explicit",
        log_dir=log_dir,
        wait_ready=False,
    )
    credentials = grpc.ssl_channel_credentials(
        pki.ca.read_bytes(), pki.client_key.read_bytes(), pki.client_cert.read_bytes()
    )
    deadline = time.monotonic() + 120
    while not _ready(process.url, credentials):
        if process.process.poll() is not None or time.monotonic() > deadline:
            process.stop(signal.SIGKILL)
            pytest.fail(f"the TLS server did not become ready:\n{process.log()}")
        time.sleep(0.2)
    return process


def _ready(url: str, credentials: grpc.ChannelCredentials) -> bool:
    with grpc.secure_channel(url, credentials) as channel:
        try:
            reply = pb_grpc.GRPCInferenceServiceStub(channel).ServerReady(
                pb.ServerReadyRequest(), timeout=1.0
            )
        except grpc.RpcError:
            return False
    return bool(reply.ready)


@pytest.fixture(scope="module")
def tls_server(repo: Path, log_dir: Path, pki: Pki) -> Iterator[ServerProcess]:
    process = _start_tls(repo, log_dir, pki, "--grpc-use-ssl")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def mtls_server(repo: Path, log_dir: Path, pki: Pki) -> Iterator[ServerProcess]:
    process = _start_tls(repo, log_dir, pki, "--grpc-use-ssl-mutual")
    yield process
    process.stop()


def _infer(url: str, **ssl: Any) -> np.ndarray:
    """One affine request through tritonclient; raises InferenceServerException."""
    client = grpcclient.InferenceServerClient(url, **ssl)
    try:
        x = rows(3, seed=7)
        result = client.infer(AFFINE, [fp32_input(x)], client_timeout=10)
        return np.asarray(result.as_numpy("OUTPUT0"))
    finally:
        client.close()


def _refused(url: str, **ssl: Any) -> str:
    with pytest.raises(InferenceServerException) as refused:
        _infer(url, **ssl)
    return str(refused.value)


def _files(
    pki: Pki, ca: Path | None = None, cert: Path | None = None, key: Path | None = None
) -> dict[str, Any]:
    return {
        "ssl": True,
        "root_certificates": str(ca or pki.ca),
        "private_key": None if key is None else str(key),
        "certificate_chain": None if cert is None else str(cert),
    }


def test_tls_answers_a_client_that_trusts_its_ca(tls_server: ServerProcess, pki: Pki) -> None:
    out = _infer(tls_server.url, **_files(pki))
    np.testing.assert_allclose(out, reference(rows(3, seed=7)), rtol=1e-5, atol=1e-5)


def test_tls_refuses_plaintext(tls_server: ServerProcess) -> None:
    assert "UNAVAILABLE" in _refused(tls_server.url)


def test_tls_refused_by_a_client_that_trusts_another_ca(
    tls_server: ServerProcess, pki: Pki
) -> None:
    assert "UNAVAILABLE" in _refused(tls_server.url, **_files(pki, ca=pki.other_ca))


def test_mutual_tls_answers_a_client_certificate_from_its_ca(
    mtls_server: ServerProcess, pki: Pki
) -> None:
    out = _infer(mtls_server.url, **_files(pki, cert=pki.client_cert, key=pki.client_key))
    np.testing.assert_allclose(out, reference(rows(3, seed=7)), rtol=1e-5, atol=1e-5)


def test_mutual_tls_refuses_a_client_without_a_certificate(
    mtls_server: ServerProcess, pki: Pki
) -> None:
    assert "UNAVAILABLE" in _refused(mtls_server.url, **_files(pki))


def test_mutual_tls_refuses_a_certificate_from_another_ca(
    mtls_server: ServerProcess, pki: Pki
) -> None:
    stranger = _files(pki, cert=pki.stranger_cert, key=pki.stranger_key)
    assert "UNAVAILABLE" in _refused(mtls_server.url, **stranger)


def test_mutual_tls_refuses_plaintext(mtls_server: ServerProcess) -> None:
    assert "UNAVAILABLE" in _refused(mtls_server.url)


def _client_flags(pki: Pki) -> list[str]:
    return [
        "--root-certificates",
        str(pki.ca),
        "--certificate-chain",
        str(pki.client_cert),
        "--private-key",
        str(pki.client_key),
    ]


def test_models_cli_speaks_mutual_tls(
    mtls_server: ServerProcess, pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    url = ["-u", mtls_server.url, "--timeout", "10"]
    assert warpserve_main(["models", *url, "status", AFFINE, *_client_flags(pki)]) == 0
    assert AFFINE in capsys.readouterr().out
    # Control: the same call without the client certificate is refused.
    plain = ["--ssl", "--root-certificates", str(pki.ca)]
    assert warpserve_main(["models", *url, *plain, "status", AFFINE]) == 1
    assert "--certificate-chain" in capsys.readouterr().err


def test_bench_speaks_mutual_tls(
    mtls_server: ServerProcess, pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = ["bench", "-u", mtls_server.url, "-m", AFFINE, "--concurrency", "2"]
    bench += ["--duration", "0.3", "--warmup", "0", "--json"]
    assert warpserve_main([*bench, *_client_flags(pki)]) == 0
    assert '"requests"' in capsys.readouterr().out
    assert warpserve_main(bench) == 1  # plaintext: the server cannot be reached
    assert "unreachable" in capsys.readouterr().err


# --- HTTPS on the HTTP port ------------------------------------------------------------------


@pytest.fixture(scope="module")
def https_server(repo: Path, log_dir: Path, pki: Pki) -> Iterator[ServerProcess]:
    """Plain TLS on gRPC, mutual TLS on HTTP (the --http- flags take the --grpc- files)."""
    process = _start_tls(repo, log_dir, pki, "--grpc-use-ssl", "--http-use-ssl-mutual")
    yield process
    process.stop()


def _context(ca: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        context.load_cert_chain(cert, key)
    return context


def _get(url: str, context: ssl.SSLContext | None = None) -> int:
    with urllib.request.urlopen(url, context=context, timeout=10) as reply:
        return int(reply.status)


def test_https_serves_a_client_certificate_from_its_ca(
    https_server: ServerProcess, pki: Pki
) -> None:
    context = _context(pki.ca, pki.client_cert, pki.client_key)
    base = f"https://127.0.0.1:{https_server.http_port}"
    assert _get(f"{base}/v2/health/ready", context) == 200
    x = rows(2, seed=5)
    body = {
        "inputs": [
            {"name": "INPUT0", "shape": [2, 4], "datatype": "FP32", "data": x.flatten().tolist()}
        ]
    }
    request = urllib.request.Request(
        f"{base}/v2/models/{AFFINE}/infer",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, context=context, timeout=10) as reply:
        (output,) = json.loads(reply.read())["outputs"]
    got = np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])
    np.testing.assert_allclose(got, reference(x), rtol=1e-5, atol=1e-5)


def test_https_refuses_plaintext(https_server: ServerProcess) -> None:
    with pytest.raises((OSError, http.client.HTTPException)):
        _get(f"http://127.0.0.1:{https_server.http_port}/v2/health/ready")


def test_https_refuses_a_client_without_a_certificate(
    https_server: ServerProcess, pki: Pki
) -> None:
    with pytest.raises((OSError, http.client.HTTPException)):
        _get(f"https://127.0.0.1:{https_server.http_port}/v2/health/ready", _context(pki.ca))


def test_https_is_refused_by_a_client_that_trusts_another_ca(
    https_server: ServerProcess, pki: Pki
) -> None:
    context = _context(pki.other_ca, pki.client_cert, pki.client_key)
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        _get(f"https://127.0.0.1:{https_server.http_port}/v2/health/ready", context)
