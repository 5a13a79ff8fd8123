"""A warpserve process for a benchmark, or the echo ceiling beside it: started on a free
loopback port, waited for, stopped.

Shared by the benchmarks that drive real servers (compile, lifecycle, serving, spike).
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import grpc

from warpserve.protos import grpc_service_pb2 as pb
from warpserve.protos import grpc_service_pb2_grpc as pb_grpc
from warpserve.server.ports import pick_free_port as free_port

READY_TIMEOUT_S = 120.0
_PIDS: dict[str, int] = {}  # address -> process id, while the block runs


def pid_of(url: str) -> int:
    """The process serving ``url`` (started by ``warpserve`` or ``ceiling``), to read
    its CPU time."""
    return _PIDS[url]


@contextlib.contextmanager
def warpserve(
    repo: Path,
    log_path: Path,
    *flags: str,
    model: str | None = None,
    env: Mapping[str, str] | None = None,
    metrics: bool = False,
) -> Iterator[str]:
    """Serve ``repo`` until the block ends; yields the gRPC address.

    Ready means ServerReady, and ModelReady of ``model`` when one is named. ``metrics``:
    Prometheus metrics on (on a free port), as a server is usually run; off otherwise.
    """
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "warpserve.server.cli",
        "serve",
        "--model-repository",
        str(repo),
        "--grpc-address",
        "127.0.0.1",
        "--grpc-port",
        str(port),
        *(("--metrics-port", "0") if metrics else ("--allow-metrics", "false")),
        "--http-port",
        "0",
        *flags,
    ]
    with _running(command, port, log_path, model, env) as url:
        yield url


@contextlib.contextmanager
def ceiling(
    metadata_from: str,
    model: str,
    log_path: Path,
    *,
    event_loop: str = "asyncio",
    batch_size: int = 0,
    frontend: str = "python",
) -> Iterator[str]:
    """bench/ceiling_server.py for ``model`` on ``event_loop`` until the block ends; yields
    its gRPC address. Each answer has ``batch_size`` rows, or with 0 as many as the
    request carries (which costs the ceiling a look at each request)."""
    port = free_port()
    command = [
        sys.executable,
        str(Path(__file__).resolve().parent / "ceiling_server.py"),
        "--port",
        str(port),
        "--metadata-from",
        metadata_from,
        "--model",
        model,
        "--batch-size",
        str(batch_size),
        "--event-loop",
        event_loop,
        "--frontend",
        frontend,
    ]
    with _running(command, port, log_path, model) as url:
        yield url


@contextlib.contextmanager
def _running(
    command: list[str],
    port: int,
    log_path: Path,
    model: str | None,
    env: Mapping[str, str] | None = None,
) -> Iterator[str]:
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        url = f"127.0.0.1:{port}"
        _PIDS[url] = process.pid
        try:
            wait_ready(process, url, log_path, model)
            yield url
        finally:
            _PIDS.pop(url, None)
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_ready(
    process: subprocess.Popen[bytes], url: str, log_path: Path, model: str | None = None
) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    with grpc.insecure_channel(url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(
                    f"{log_path.stem}: the server exited with {process.returncode} before "
                    f"it was ready; its log:\n{_tail(log_path)}"
                )
            with contextlib.suppress(grpc.RpcError):
                if _ready(stub, model):
                    return
            time.sleep(0.2)  # poll interval while the server loads
    raise RuntimeError(
        f"{log_path.stem}: the server was not ready after {READY_TIMEOUT_S:.0f} s; "
        f"its log:\n{_tail(log_path)}"
    )


def _ready(stub: pb_grpc.GRPCInferenceServiceStub, model: str | None) -> bool:
    if not stub.ServerReady(pb.ServerReadyRequest(), timeout=2).ready:
        return False
    return model is None or bool(stub.ModelReady(pb.ModelReadyRequest(name=model), timeout=2).ready)


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
