"""``warpserve serve --workers 2`` against tritonclient: the protocol, statistics and
metrics summed over both processes, a shared-memory region registered through one
connection and used through others, a rollout under load, shutdown, and a worker
killed mid-load.

Each gRPC channel here has its own connection (a local subchannel pool), and the
kernel spreads connections over the workers; which worker answered is read from the
server's own per-process metric, ``warpserve_worker_requests{pid=...}``.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from multiprocessing import shared_memory
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tests.e2e.conftest import fp32_input, metric_value, metrics_text
from tests.e2e.harness import ServerProcess, start_server
from tests.e2e.test_lifecycle import TOKEN, cli
from tests.models import affine_reference, write_affine

pytestmark = pytest.mark.e2e

MODEL = "affine"
CHANNELS = 8  # connections of the load threads
# Clients checked to reach every worker. SO_REUSEPORT spreads connections by a hash of
# their ports, so all of them land on one of 2 workers at odds 1 in 2 ** (CLIENTS - 1):
# at 8 clients (1 in 128) that happened in a full run.
CLIENTS = 24
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


def connect(url: str) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(url, channel_args=OWN_CONNECTION)


def per_worker(metrics_port: int) -> dict[int, float]:
    """Requests answered so far by each live worker, by pid."""
    text = metrics_text(metrics_port)
    found = re.findall(r'^warpserve_worker_requests\{pid="(\d+)"\} (\S+)$', text, re.M)
    return {int(pid): float(value) for pid, value in found}


def infer(client: grpcclient.InferenceServerClient, seed: int) -> tuple[int, np.ndarray]:
    x = np.random.default_rng(seed).uniform(-2, 2, (1, 4)).astype(np.float32)
    result = client.infer(MODEL, [fp32_input(x)])
    version = int(result.get_response().model_version)
    assert np.allclose(
        result.as_numpy("OUTPUT0"), affine_reference(x, scale=float(version)), atol=1e-4
    )
    return version, x


def infer_from_region(
    client: grpcclient.InferenceServerClient, region: str, x: np.ndarray, scale: float
) -> None:
    """One request whose input ``x`` lies in the registered ``region``; checks the answer."""
    inp = fp32_input(np.zeros((1, 4), np.float32))
    inp.set_shared_memory(region, x.nbytes)
    result = client.infer(MODEL, [inp])
    assert np.allclose(result.as_numpy("OUTPUT0"), affine_reference(x, scale=scale), atol=1e-4)


class Load(threading.Thread):
    """One connection sending back to back; records versions and failures."""

    def __init__(self, url: str, seed: int, *, until_refused: bool = False) -> None:
        super().__init__(daemon=True)
        self.client = connect(url)
        self.seed = seed
        self.until_refused = until_refused  # a client told to go elsewhere goes
        self.versions: list[int] = []
        self.errors: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        n, pause = 0, 0.001
        while not self.stop.is_set():
            n += 1
            try:
                version, _ = infer(self.client, self.seed * 100_000 + n)
            except Exception as exc:
                # A channel whose connection broke fails calls at once until it has
                # reconnected: back off as a real client does (warpserve bench too).
                self.errors.append(str(exc))
                if self.until_refused:
                    break
                time.sleep(pause)
                pause = min(pause * 2, 0.1)
                continue
            pause = 0.001
            self.versions.append(version)
        self.client.close()

    def finish(self) -> None:
        self.stop.set()
        self.join(60)


@contextlib.contextmanager
def loads_running(url: str, *, until_refused: bool = False) -> Iterator[list[Load]]:
    """CHANNELS connections sending back to back until the block ends."""
    loads = [Load(url, seed, until_refused=until_refused) for seed in range(CHANNELS)]
    for load in loads:
        load.start()
    try:
        yield loads
    finally:
        for load in loads:
            load.finish()


def progressed(loads: list[Load], by: int = 3) -> list[int]:
    """Wait until every load has ``by`` more answers; returns their counts before."""
    marks = [len(load.versions) for load in loads]
    wait_until(lambda: all(len(ld.versions) >= m + by for ld, m in zip(loads, marks, strict=True)))
    return marks


def wait_until(check: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@contextlib.contextmanager
def clients_of(url: str) -> Iterator[list[grpcclient.InferenceServerClient]]:
    """CLIENTS clients, each on its own connection, closed when the block ends."""
    clients = [connect(url) for _ in range(CLIENTS)]
    try:
        yield clients
    finally:
        for client in clients:
            client.close()


@contextlib.contextmanager
def region_holding(x: np.ndarray) -> Iterator[shared_memory.SharedMemory]:
    """A 4 KiB system shared-memory block holding ``x``, unlinked when the block ends."""
    block = shared_memory.SharedMemory(create=True, size=4096)
    try:
        np.ndarray(x.shape, x.dtype, block.buf)[:] = x
        yield block
    finally:
        block.close()
        block.unlink()


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("workers") / "repo"
    write_affine(root, MODEL, (1,))
    return root


@pytest.fixture(scope="module")
def workers(repo: Path, log_dir: Path) -> Iterator[ServerProcess]:
    server = start_server(
        repo,
        "--workers",
        "2",
        "--allow-client-shm",
        log_dir=log_dir,
        env={"WARPSERVE_ADMIN_TOKEN": TOKEN},
    )
    yield server
    assert server.stop() == 0, server.log()


def test_requests_over_many_connections_are_counted_once_in_statistics_and_metrics(
    workers: ServerProcess,
) -> None:
    before = per_worker(workers.metrics_port)
    assert len(before) == 2, before  # two live workers, each its own pid
    with clients_of(workers.url) as clients:
        sent = 0
        for i, client in enumerate(clients):
            assert client.is_server_ready() and client.is_model_ready(MODEL)
            assert client.get_model_metadata(MODEL).name == MODEL
            for j in range(5):
                infer(client, i * 10 + j)
                sent += 1
        after = per_worker(workers.metrics_port)
        (stats,) = clients[0].get_inference_statistics(MODEL, "1").model_stats
    assert all(after[pid] > before[pid] for pid in before), (before, after)  # both answered
    assert sum(after.values()) - sum(before.values()) == sent
    total = sum(after.values())
    assert stats.inference_stats.success.count == total
    assert stats.inference_count == total  # one row each
    text = metrics_text(workers.metrics_port)
    labels = f'{{model="{MODEL}",version="1"}}'
    assert metric_value(text, f"nv_inference_request_success{labels}") == total
    assert metric_value(text, f"nv_inference_count{labels}") == total
    # The latency histograms are summed bucket by bucket, as one process would count.
    assert metric_value(text, f"warpserve_request_duration_us_count{labels}") == total
    inf = f'{{le="+Inf",model="{MODEL}",version="1"}}'  # the supervisor sorts labels
    assert metric_value(text, f"warpserve_request_duration_us_bucket{inf}") == total
    assert "# TYPE warpserve_request_duration_us histogram" in text
    assert "# TYPE nv_inference_request_success untyped" in text  # bare name, as one process


def test_a_region_registered_through_one_connection_serves_every_worker(
    workers: ServerProcess,
) -> None:
    x = np.arange(4, dtype=np.float32).reshape(1, 4) / 4
    with region_holding(x) as block, clients_of(workers.url) as clients:
        clients[0].register_system_shared_memory("io", "/" + block.name, block.size)
        before = per_worker(workers.metrics_port)
        for client in clients:
            for _ in range(3):
                infer_from_region(client, "io", x, scale=1.0)
        after = per_worker(workers.metrics_port)
        assert all(after[pid] > before[pid] for pid in before), (before, after)
        status = clients[-1].get_system_shared_memory_status()
        assert [r.name for r in status.regions.values()] == ["io"]
        clients[-1].unregister_system_shared_memory("io")
        inp = fp32_input(np.zeros((1, 4), np.float32))
        inp.set_shared_memory("io", x.nbytes)
        for client in clients:  # gone everywhere
            with pytest.raises(Exception, match="not registered"):
                client.infer(MODEL, [inp])


def test_a_rollout_under_load_switches_every_worker_without_a_failed_request(
    workers: ServerProcess, repo: Path
) -> None:
    with loads_running(workers.url) as loads:
        progressed(loads)
        write_affine(repo, MODEL, (2,), config=False)
        rolled = cli(workers.url, "rollout", MODEL, "--version", "2")
        assert rolled.returncode == 0, rolled.stderr
        mark = progressed(loads)
    for load, m in zip(loads, mark, strict=True):
        assert load.errors == []
        assert set(load.versions[m:]) == {2}  # the rollout answered after every worker switched
        assert load.versions[0] == 1
    text = metrics_text(workers.metrics_port)
    assert 'warpserve_model_version_active{model="affine",version="2"} 1.0' in text
    # Each worker counted the rollout; the server did one.
    assert 'warpserve_rollouts_total{model="affine",outcome="succeeded",version="2"} 1.0' in text


def test_a_failed_load_fails_everywhere_and_the_old_version_keeps_serving(
    workers: ServerProcess, repo: Path
) -> None:
    (repo / MODEL / "3").mkdir()
    (repo / MODEL / "3" / "model.onnx").write_bytes(b"not an onnx model")
    failed = cli(workers.url, "rollout", MODEL, "--version", "3")
    assert failed.returncode == 1 and "load failed" in failed.stderr
    with clients_of(workers.url) as clients:
        assert {infer(client, i)[0] for i, client in enumerate(clients)} == {2}


def test_a_killed_worker_fails_only_its_calls_and_its_replacement_takes_the_state(
    workers: ServerProcess,
) -> None:
    x = np.ones((1, 4), np.float32)
    with region_holding(x) as block:
        with connect(workers.url) as client:
            client.register_system_shared_memory("kept", "/" + block.name, block.size)
        pids = set(per_worker(workers.metrics_port))
        with loads_running(workers.url) as loads:
            progressed(loads)
            victim = min(pids)
            os.kill(victim, signal.SIGKILL)
            wait_until(lambda: len(set(per_worker(workers.metrics_port)) - pids) == 1, 120)
            wait_until(lambda: all(connect(workers.url).is_server_ready() for _ in range(3)), 60)
            progressed(loads)
        failed = [e for load in loads for e in load.errors]
        # Only the killed worker's connections see failures (its calls in flight, then
        # calls while their channel reconnects), all UNAVAILABLE; the others see none.
        assert all("UNAVAILABLE" in e for e in failed), failed[:5]
        assert 0 < sum(1 for load in loads if load.errors) < CHANNELS
        assert all(set(load.versions[-3:]) == {2} for load in loads)  # all serve v2 again
        replacement = set(per_worker(workers.metrics_port)) - pids
        assert len(replacement) == 1 and victim not in per_worker(workers.metrics_port)
        with clients_of(workers.url) as clients:
            before = per_worker(workers.metrics_port)
            for client in clients:  # the region works on the replacement too
                infer_from_region(client, "kept", x, scale=2.0)
            after = per_worker(workers.metrics_port)
            (new,) = replacement
            assert after[new] > before[new]
            clients[0].unregister_system_shared_memory("kept")
    assert "starting a replacement" in workers.log()


def test_sigterm_answers_every_call_received_by_any_worker(tmp_path: Path, log_dir: Path) -> None:
    write_affine(tmp_path, MODEL, (1,))
    server = start_server(tmp_path, "--workers", "2", log_dir=log_dir)
    with loads_running(server.url, until_refused=True) as loads:
        progressed(loads)
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(60) == 0, server.log()
    errors = [e for load in loads for e in load.errors]
    # Refused ("shutting down"), or (a connection idle past the last 100 ms) not
    # reached: never CANCELLED, nothing a worker received left unanswered.
    assert all("UNAVAILABLE" in e for e in errors), errors[:5]
    assert sum("shutting down" in e for e in errors) > 0
    assert server.log().count("shutdown complete: every request received was answered") == 2


ON_OWNER = 'parameters { key: "warpserve.placement" value: { string_value: "owner" } }'


def test_a_model_placed_on_the_owner_is_loaded_once_and_served_through_every_worker(
    tmp_path: Path, log_dir: Path
) -> None:
    write_affine(tmp_path, MODEL, (1,))
    write_affine(tmp_path, "owned", (1,), extra=ON_OWNER)
    server = start_server(tmp_path, "--workers", "2", log_dir=log_dir)
    with clients_of(server.url) as clients:
        before = per_worker(server.metrics_port)
        for i, client in enumerate(clients):
            x = np.random.default_rng(i).uniform(-2, 2, (1, 4)).astype(np.float32)
            for name in ("owned", MODEL):
                result = client.infer(name, [fp32_input(x)])
                assert np.allclose(result.as_numpy("OUTPUT0"), affine_reference(x, scale=1.0))
        after = per_worker(server.metrics_port)
        assert all(after[pid] > before[pid] for pid in before)  # through both workers
        (owned,) = clients[0].get_inference_statistics("owned", "1").model_stats
        assert owned.inference_stats.success.count == CLIENTS  # one copy counted them all
    assert server.stop() == 0, server.log()
    log = server.log()
    assert log.count("serves the owner-placed models") == 1  # one owner started
    assert "model 'owned' version 1 is ready" in log  # loaded in the owner ...
    assert "worker 0 warpserve.server.lifecycle.version: model 'owned'" not in log  # ... only
    assert "worker 1 warpserve.server.lifecycle.version: model 'owned'" not in log


def test_poll_mode_brings_a_new_version_to_every_worker_under_load(
    tmp_path: Path, log_dir: Path
) -> None:
    """One repository poller (the supervisor's) for the whole server: a version folder
    written under load is loaded and served by every worker, with no failed request."""
    write_affine(tmp_path, MODEL, (1,))
    server = start_server(
        tmp_path,
        "--workers",
        "2",
        "--model-control-mode",
        "poll",
        "--repository-poll-secs",
        "0.5",
        log_dir=log_dir,
    )
    try:
        with loads_running(server.url) as loads:
            progressed(loads)
            write_affine(tmp_path, MODEL, (2,), config=False)
            deadline = time.monotonic() + 60
            while not all(load.versions and load.versions[-1] == 2 for load in loads):
                assert time.monotonic() < deadline, server.log()
                time.sleep(0.1)
            mark = progressed(loads)
        assert all(load.errors == [] for load in loads)
        assert all(set(load.versions[m:]) == {2} for load, m in zip(loads, mark, strict=True))
        assert len(per_worker(server.metrics_port)) == 2  # both processes answered
        assert server.log().count("now serves version 2") >= 2  # loaded in each worker
    finally:
        server.stop()
