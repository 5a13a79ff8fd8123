"""Start ``warpserve serve`` as a subprocess on free loopback ports, for e2e tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import grpc

from warpserve.protos import grpc_service_pb2 as pb
from warpserve.protos import grpc_service_pb2_grpc as pb_grpc
from warpserve.server.ports import pick_free_port as free_port


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    grpc_port: int
    metrics_port: int
    log_path: Path
    http_port: int = 0

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def answers(url: str, timeout: float = 5.0) -> bool:
    """Whether the server at ``url`` still answers ServerLive within ``timeout`` seconds."""
    with grpc.insecure_channel(url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        try:
            return bool(stub.ServerLive(pb.ServerLiveRequest(), timeout=timeout).live)
        except grpc.RpcError:
            return False


def _ready(url: str) -> bool:
    with grpc.insecure_channel(url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        try:
            return bool(stub.ServerReady(pb.ServerReadyRequest(), timeout=1.0).ready)
        except grpc.RpcError:
            return False


def start_server(
    repo: Path | None,
    *args: str,
    log_dir: Path,
    timeout: float = 120.0,
    env: dict[str, str] | None = None,
    wait_ready: bool = True,
    module: str = "warpserve.server.cli",
) -> ServerProcess:
    """Start a server on free ports and wait until it is ready.

    A port can still be taken between the pick and the server's bind (by another
    listener); a start that fails only for that is tried again on new ports.
    """
    start = partial(
        _start_server,
        repo,
        *args,
        log_dir=log_dir,
        timeout=timeout,
        env=env,
        wait_ready=wait_ready,
        module=module,
    )
    for _ in range(2):
        with contextlib.suppress(PortTaken):
            return start()
    return start()


class PortTaken(RuntimeError):
    """The server exited at start because a port picked for it was taken meanwhile."""


def _start_server(
    repo: Path | None,
    *args: str,
    log_dir: Path,
    timeout: float,
    env: dict[str, str] | None,
    wait_ready: bool,
    module: str,
) -> ServerProcess:
    grpc_port, metrics_port, http_port = free_port(), free_port(), free_port()
    cmd = [
        sys.executable,
        "-m",
        module,
        "serve",
        "--grpc-address",
        "127.0.0.1",
        "--grpc-port",
        str(grpc_port),
        "--metrics-address",
        "127.0.0.1",
        "--metrics-port",
        str(metrics_port),
        "--http-address",
        "127.0.0.1",
        "--http-port",
        str(http_port),
        *args,
    ]
    if repo is not None:
        cmd += ["--model-repository", str(repo)]
    log_path = log_dir / f"server-{grpc_port}.log"
    log_file = log_path.open("wb")
    full_env = {**os.environ, **(env or {})}
    process = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=full_env)
    server = ServerProcess(process, grpc_port, metrics_port, log_path, http_port)
    deadline = time.monotonic() + timeout
    while wait_ready and not _ready(server.url):
        if process.poll() is not None:
            log = server.log()
            taken = process.returncode == 2 and "Address already in use" in log
            error = PortTaken if taken else RuntimeError
            raise error(f"server exited with {process.returncode}:\n{log}")
        if time.monotonic() > deadline:
            server.stop(signal.SIGKILL)
            raise TimeoutError(f"server not ready after {timeout} s:\n{server.log()}")
        time.sleep(0.2)
    return server
