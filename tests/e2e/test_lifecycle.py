"""Model lifecycle against the real server process: ``warpserve models`` rolls out and
rolls back while tritonclient callers keep sending; where the admin API is served;
unloaded and unknown models; the lifecycle metrics."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tests.e2e.conftest import failure, fp32_input, metrics_text
from tests.e2e.harness import ServerProcess, start_server
from tests.models import affine_reference, write_affine

pytestmark = pytest.mark.e2e

MODEL = "affine"
TOKEN = "e2e-admin-token"


def cli(url: str, *args: str, token: str | None = TOKEN) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "WARPSERVE_ADMIN_TOKEN"}
    if token is not None:
        env["WARPSERVE_ADMIN_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "warpserve.server.cli", "models", "-u", url, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    write_affine(tmp_path / "repo", MODEL, (1,))
    return tmp_path / "repo"


@pytest.fixture
def admin_server(repo: Path, log_dir: Path) -> Iterator[ServerProcess]:
    process = start_server(repo, log_dir=log_dir, env={"WARPSERVE_ADMIN_TOKEN": TOKEN})
    yield process
    process.stop()


class Caller(threading.Thread):
    """Sends requests back to back with tritonclient; records which version answered."""

    def __init__(self, url: str, seed: int) -> None:
        super().__init__(daemon=True)
        self.client = grpcclient.InferenceServerClient(url)
        self.rng = np.random.default_rng(seed)
        self.versions: list[int] = []
        self.errors: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            x = self.rng.uniform(-2, 2, (1, 4)).astype(np.float32)
            try:
                result = self.client.infer(MODEL, [fp32_input(x)])
            except Exception as exc:
                self.errors.append(str(exc))
                continue
            version = int(result.get_response().model_version)
            if not np.allclose(
                result.as_numpy("OUTPUT0"), affine_reference(x, scale=float(version)), atol=1e-4
            ):
                self.errors.append(f"version {version} answered with other numbers")
            self.versions.append(version)
        self.client.close()


def wait_for(callers: list[Caller], version: int, count: int = 3) -> None:
    """Until every caller has had ``count`` answers from ``version`` in a row, lately."""
    deadline = time.monotonic() + 60
    while not all(c.versions[-count:] == [version] * count for c in callers):
        assert time.monotonic() < deadline, "callers never reached the version"
        assert not any(c.errors for c in callers), [c.errors for c in callers]
        time.sleep(0.01)


def test_rollout_and_rollback_with_the_cli_while_callers_send(
    admin_server: ServerProcess, repo: Path
) -> None:
    url = admin_server.url
    callers = [Caller(url, seed) for seed in range(3)]
    for caller in callers:
        caller.start()
    wait_for(callers, 1)
    write_affine(repo, MODEL, (2,), config=False)
    rolled = cli(url, "rollout", MODEL, "--version", "2")
    assert rolled.returncode == 0, rolled.stderr
    wait_for(callers, 2)
    back = cli(url, "--json", "rollback", MODEL, "--reason", "e2e")
    assert back.returncode == 0, back.stderr
    assert '"previous_version": "2"' in back.stdout
    wait_for(callers, 1)
    for caller in callers:
        caller.stop.set()
        caller.join(30)
    for caller in callers:
        assert caller.errors == []
        runs = [v for i, v in enumerate(caller.versions) if i == 0 or caller.versions[i - 1] != v]
        assert runs == [1, 2, 1]
    text = metrics_text(admin_server.metrics_port)
    assert 'warpserve_model_version_active{model="affine",version="1"} 1.0' in text
    assert 'warpserve_rollouts_total{model="affine",outcome="succeeded",version="2"} 1.0' in text
    assert 'warpserve_rollbacks_total{model="affine",reason="e2e",version="2"} 1.0' in text


def test_the_cli_needs_the_token_and_unloaded_models_are_refused(
    admin_server: ServerProcess,
) -> None:
    url = admin_server.url
    refused = cli(url, "status", token=None)
    assert refused.returncode == 1 and "UNAUTHENTICATED" in refused.stderr
    wrong = cli(url, "status", token="guess")
    assert wrong.returncode == 1 and "PERMISSION_DENIED" in wrong.stderr
    unloaded = cli(url, "unload", MODEL)
    assert unloaded.returncode == 0, unloaded.stderr
    assert "NOT LOADED" in unloaded.stdout
    with grpcclient.InferenceServerClient(url) as client:
        x = np.ones((1, 4), np.float32)
        code, message = failure(lambda: client.infer(MODEL, [fp32_input(x)]))
        assert code == "UNAVAILABLE" and "not loaded" in message
        code, _ = failure(lambda: client.infer("no_such_model", [fp32_input(x)]))
        assert code == "NOT_FOUND"
        assert client.is_server_live() and client.is_server_ready()
        assert cli(url, "load", MODEL).returncode == 0
        result = client.infer(MODEL, [fp32_input(x)])
        assert result.get_response().model_version == "1"


def test_serve_refuses_to_start_a_required_admin_api_on_a_public_address(
    repo: Path, log_dir: Path
) -> None:
    process = start_server(
        repo,
        "--grpc-address",
        "0.0.0.0",
        "--admin",
        log_dir=log_dir,
        env={"WARPSERVE_ADMIN_TOKEN": ""},
        wait_ready=False,
    )
    assert process.process.wait(60) == 2
    log = process.log()
    assert "refusing to start" in log and "WARPSERVE_ADMIN_TOKEN" in log
    assert "Traceback" not in log


def test_a_public_address_without_a_token_serves_inference_but_not_admin(
    repo: Path, log_dir: Path
) -> None:
    process = start_server(
        repo, "--grpc-address", "0.0.0.0", log_dir=log_dir, env={"WARPSERVE_ADMIN_TOKEN": ""}
    )
    try:
        status = cli(process.url, "status", token=None)
        assert status.returncode == 1
        assert "UNIMPLEMENTED" in status.stderr and "--admin-token-file" in status.stderr
        with grpcclient.InferenceServerClient(process.url) as client:
            x = np.ones((1, 4), np.float32)
            assert client.infer(MODEL, [fp32_input(x)]).get_response().model_version == "1"
        assert "admin API (warpserve models) not served" in process.log()
    finally:
        process.stop()
