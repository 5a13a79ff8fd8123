"""Drift and fallback through a real server: tritonclient sees a fallback's answer and
its parameters, /metrics and `warpserve models status` show a drift alarm raised by
shifted traffic and none for unshifted traffic."""

from __future__ import annotations

import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tests.e2e.harness import ServerProcess, start_server
from tests.models import affine_reference, write_affine, write_golden
from warpserve.server.drift.reference import build_reference, write_reference

pytestmark = pytest.mark.e2e


def _params(**values: str) -> str:
    return "\n".join(
        f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in values.items()
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("degradation")
    # "primary" fails its golden check at load, so only its fallback can answer for it.
    write_affine(repo, "primary", (1,), extra=_params(fallback_model="backup"))
    write_golden(repo / "primary" / "1", 1, corrupt=True)
    write_affine(repo, "backup", (2,))
    drift = _params(drift_sample_rate="1", drift_min_rows="400")
    for name in ("calm", "shifted"):
        model_dir = write_affine(repo, name, (1,), extra=drift)
        training = np.random.default_rng(0).normal(0, 1, (4000, 4)).astype(np.float32)
        write_reference(model_dir / "1", build_reference({"INPUT0": training}))
    process = start_server(repo, log_dir=repo, wait_ready=False)
    try:
        client = grpcclient.InferenceServerClient(process.url)
        deadline = time.monotonic() + 120
        while not all(_ready(client, m) for m in ("backup", "calm", "shifted")):
            assert time.monotonic() < deadline, process.log()
            time.sleep(0.2)
        yield process
    finally:
        process.stop()


def _ready(client: grpcclient.InferenceServerClient, model: str) -> bool:
    try:
        return bool(client.is_model_ready(model))
    except Exception:
        return False


def _infer(url: str, model: str, x: np.ndarray) -> grpcclient.InferResult:
    client = grpcclient.InferenceServerClient(url)
    tensor = grpcclient.InferInput("INPUT0", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return client.infer(model, [tensor])


def test_a_failed_primary_is_answered_by_its_fallback_and_the_answer_says_so(
    server: ServerProcess,
) -> None:
    x = np.arange(8, dtype=np.float32).reshape(2, 4) / 8
    result = _infer(server.url, "primary", x)
    want = affine_reference(x, scale=2.0)
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), want, rtol=1e-5)
    response = result.get_response()
    assert response.model_name == "backup"
    params = response.parameters
    assert params["fallback"].bool_param
    assert params["fallback_from"].string_param == "primary"
    assert params["fallback_reason"].string_param == "unavailable"
    # An ordinary answer carries no such parameters.
    assert "fallback" not in _infer(server.url, "backup", x).get_response().parameters


def test_shifted_traffic_raises_the_drift_alarm_and_unshifted_traffic_none(
    server: ServerProcess,
) -> None:
    rng = np.random.default_rng(1)
    for _ in range(60):
        _infer(server.url, "calm", rng.normal(0, 1, (8, 4)).astype(np.float32))
        shifted = rng.normal(0, 1, (8, 4)).astype(np.float32)
        shifted[:, 0] += 1.0
        _infer(server.url, "shifted", shifted)
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    metrics = urllib.request.urlopen(url, timeout=10).read().decode()
    assert 'warpserve_drift_alarm{model="calm",version="1"} 0.0' in metrics
    assert 'warpserve_drift_alarm{model="shifted",version="1"} 1.0' in metrics
    assert 'warpserve_drift_window_rows{model="shifted",version="1"} 480.0' in metrics
    status = subprocess.run(
        [sys.executable, "-m", "warpserve.server.cli", "models", "-u", server.url, "status"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 0, status.stderr
    assert "drift: version 1: ok, 480 rows" in status.stdout
    assert "drift: version 1: ALARM, 480 rows" in status.stdout
    assert re.search(r"fallback model: backup \(\d+ answers given\)", status.stdout)
    assert "INPUT0[0]" in status.stdout.split("ALARM")[1].splitlines()[1]
