"""Several warpserve processes behind one client-side balanced gRPC channel (what the
headless Service in deploy/kubernetes gives a client in a cluster): one is killed
mid-load, the survivors answer, and no call fails but those the killed one held."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from tests.e2e.conftest import SLOW, metric_value, metrics_text, raw_request, rows
from tests.e2e.harness import ServerProcess, start_server
from warpserve.protos import grpc_service_pb2 as pb
from warpserve.protos import grpc_service_pb2_grpc as pb_grpc

pytestmark = pytest.mark.e2e

SERVERS = 3
CLIENTS = 6


@dataclass(frozen=True)
class Call:
    started: float
    code: grpc.StatusCode


def _ready(url: str) -> bool:
    with grpc.insecure_channel(url) as channel:
        try:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            return bool(stub.ServerReady(pb.ServerReadyRequest(), timeout=1.0).ready)
        except grpc.RpcError:
            return False


@pytest.fixture
def pool(repo: Path, log_dir: Path) -> Iterator[list[ServerProcess]]:
    flags = ("--model-control-mode", "explicit", "--load-model", SLOW)
    servers = [
        start_server(repo, *flags, log_dir=log_dir, wait_ready=False) for _ in range(SERVERS)
    ]
    try:
        deadline = time.monotonic() + 120
        for server in servers:
            while not _ready(server.url):
                assert server.process.poll() is None, server.log()
                assert time.monotonic() < deadline, server.log()
                time.sleep(0.2)
        yield servers
    finally:
        for server in servers:
            server.stop(signal.SIGKILL)


def _served(server: ServerProcess) -> float:
    text = metrics_text(server.metrics_port)
    return metric_value(text, f'nv_inference_request_success{{model="{SLOW}",version="1"}}') or 0


class Load:
    """CLIENTS threads, each keeping one call in flight on the shared channel."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.infer = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer
        self.request = raw_request(SLOW, rows(1, seed=3))
        self.calls: list[Call] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(CLIENTS)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.infer(self.request, timeout=20)
                code = grpc.StatusCode.OK
            except grpc.RpcError as exc:
                code = exc.code()
            self.calls.append(Call(started, code))


def _wait(condition: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)  # poll interval


def test_killing_one_server_fails_only_its_in_flight_calls(pool: list[ServerProcess]) -> None:
    victim, *survivors = pool
    target = "ipv4:" + ",".join(f"127.0.0.1:{server.grpc_port}" for server in pool)
    options = [("grpc.lb_policy_name", "round_robin")]
    with grpc.insecure_channel(target, options=options) as channel, Load(channel) as load:
        # Control: round robin really spreads the load over every process, victim included.
        _wait(lambda: all(_served(server) >= 20 for server in pool))
        before = [_served(server) for server in survivors]
        killed_at = time.monotonic()
        victim.process.send_signal(signal.SIGKILL)
        victim.process.wait(10)
        dead_at = time.monotonic()  # its sockets are closed by now
        _wait(lambda: sum(c.started > dead_at for c in load.calls) >= 100)
    failed = [c for c in load.calls if c.code != grpc.StatusCode.OK]
    after = [c for c in load.calls if c.started > dead_at]
    assert all(c.code == grpc.StatusCode.OK for c in after), (
        f"{sum(c.code != grpc.StatusCode.OK for c in after)} calls started after the kill "
        f"failed: {sorted({c.code.name for c in after})}"
    )
    # Each client had at most one call in flight when the victim was killed. (A client
    # may also have started one after the kill, before its socket closed: that one fails
    # too, and started before dead_at.)
    in_flight = [c for c in failed if c.started <= killed_at]
    assert len(in_flight) <= CLIENTS, [c.code.name for c in in_flight]
    assert all(c.code == grpc.StatusCode.UNAVAILABLE for c in failed), failed
    gained = [_served(server) - b for server, b in zip(survivors, before, strict=True)]
    assert all(g > 0 for g in gained), f"a survivor took no calls after the kill: {gained}"
