"""``warpserve serve --workers 2`` with a model placed on the model owner beside a model
every worker loads: the owner-placed model is loaded once and counted once whichever
worker a connection reaches; killed, the owner's model answers UNAVAILABLE (the other
keeps serving) until the supervisor has restarted it."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.e2e.conftest import fp32_input, metric_value, metrics_text
from tests.e2e.harness import ServerProcess, start_server
from tests.e2e.test_workers import CHANNELS, CLIENTS, ON_OWNER, clients_of, connect, per_worker
from tests.models import affine_reference, write_affine

pytestmark = pytest.mark.e2e

OWNED, LOCAL = "gpu_like", "cpu"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("owner") / "repo"
    write_affine(root, OWNED, extra=ON_OWNER)
    write_affine(root, LOCAL)
    return root


@pytest.fixture(scope="module")
def server(repo: Path, log_dir: Path) -> Iterator[ServerProcess]:
    running = start_server(repo, "--workers", "2", log_dir=log_dir)
    # Ready as a server once every worker registered; each takes calls once it logs this.
    deadline = time.monotonic() + 60
    while running.log().count("Started GRPCInferenceService") < 2:
        assert time.monotonic() < deadline, running.log()
        time.sleep(0.05)
    yield running
    assert running.stop() == 0, running.log()


def infer(client: grpcclient.InferenceServerClient, model: str, rows: int, seed: int) -> None:
    x = np.random.default_rng(seed).uniform(-2, 2, (rows, 4)).astype(np.float32)
    result = client.infer(model, [fp32_input(x)])
    assert result.get_response().model_version == "1"
    assert np.allclose(result.as_numpy("OUTPUT0"), affine_reference(x, scale=1.0), atol=1e-4)


def owner_pid(supervisor: int) -> int:
    """The supervisor's child running the model owner."""
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    for child in map(int, children):
        command = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        if b"warpserve.server.owner.process" in command:
            return child
    raise AssertionError(f"no model owner among the children {children}")


def test_the_owned_model_is_loaded_and_counted_once(server: ServerProcess) -> None:
    before = per_worker(server.metrics_port)
    with clients_of(server.url) as clients:
        for i, client in enumerate(clients):
            assert client.is_model_ready(OWNED) and client.is_model_ready(LOCAL)
            assert client.get_model_config(OWNED).config.name == OWNED
            infer(client, OWNED, 2, i)
            infer(client, LOCAL, 1, i)
        after = per_worker(server.metrics_port)
        (owned,) = clients[0].get_inference_statistics(OWNED).model_stats
        (local,) = clients[0].get_inference_statistics(LOCAL).model_stats
        index = clients[0].get_model_repository_index().models
    assert len(before) == 2 and all(after[pid] > before[pid] for pid in before), after
    assert owned.inference_count == 2 * CLIENTS  # counted in the owner alone
    assert local.inference_count == CLIENTS  # summed over the two workers
    assert sorted(m.name for m in index) == [LOCAL, OWNED]

    def metric(model: str) -> float | None:
        labels = f'{{model="{model}",version="1"}}'
        return metric_value(metrics_text(server.metrics_port), f"nv_inference_count{labels}")

    deadline = time.monotonic() + 30  # the owner copies its metrics out twice a second
    while metric(OWNED) != 2 * CLIENTS:
        assert time.monotonic() < deadline, metrics_text(server.metrics_port)
        time.sleep(0.1)
    assert metric(LOCAL) == CLIENTS
    log = server.log()
    assert log.count(f"model '{OWNED}' version 1 is ready") == 1  # loaded once
    assert log.count(f"model '{LOCAL}' version 1 is ready") == 2  # in each worker


def test_rest_asks_the_owner_about_its_model(server: ServerProcess) -> None:
    """Over REST, as over gRPC, whichever worker a connection reaches."""
    clients = [httpclient.InferenceServerClient(server.http_url) for _ in range(CHANNELS)]
    for client in clients:
        assert client.is_model_ready(OWNED) and client.is_model_ready(LOCAL)
        assert client.get_model_metadata(OWNED)["versions"] == ["1"]
        assert client.get_model_config(OWNED)["name"] == OWNED
        (stats,) = client.get_inference_statistics(OWNED)["model_stats"]
        assert stats["name"] == OWNED and stats["inference_count"] >= 0
        index = client.get_model_repository_index()
        assert sorted(m["name"] for m in index) == [LOCAL, OWNED]
        client.close()


def test_a_killed_owner_is_unavailable_until_restarted(server: ServerProcess) -> None:
    client = connect(server.url)
    first = owner_pid(server.process.pid)
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 120
    refused = 0
    while True:  # UNAVAILABLE while it is down, served again once restarted
        assert time.monotonic() < deadline, "the model owner did not come back"
        try:
            infer(client, OWNED, 1, refused)
        except InferenceServerException as exc:
            assert exc.status() == "StatusCode.UNAVAILABLE", exc
            refused += 1
            infer(client, LOCAL, 1, refused)  # the workers' own model keeps serving
            time.sleep(0.05)
            continue
        if refused:
            break
    assert owner_pid(server.process.pid) != first
    client.close()
