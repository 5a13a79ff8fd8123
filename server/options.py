"""Server settings, filled from the command line (Triton's flag names)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from warpserve.server.tls import TlsSettings


@dataclass
class ServerOptions:
    model_repository: Path | None = None  # None: the built-in demo repository
    grpc_address: str = "0.0.0.0"
    grpc_port: int = 8001
    http_address: str = "0.0.0.0"
    http_port: int = 8000
    allow_http: bool = True
    # Triton's default for --http-max-input-size.
    http_max_input_bytes: int = 64 * 1024 * 1024
    metrics_address: str = "0.0.0.0"
    metrics_port: int = 8002
    allow_metrics: bool = True
    model_control_mode: str = "none"  # none | poll | explicit
    load_models: list[str] = field(default_factory=list)
    repository_poll_secs: float = 15.0
    exit_timeout_secs: float = 30.0
    max_message_bytes: int = 256 * 1024 * 1024
    rollback_grace_secs: float = 300.0
    admin_token: str | None = None
    log_verbose: int = 0
    busy_poll_us: int | None = None  # None: busypoll.default_window_us(); 0: off
    allow_client_shm: bool = False  # clients may register system shared memory regions
    grpc_tls: TlsSettings | None = None  # None: plaintext gRPC
    http_tls: TlsSettings | None = None  # None: plaintext HTTP
    workers: int = 1  # server processes on the same ports (--workers); 1: this process serves
    # Set in each worker of several: listeners bind with SO_REUSEPORT beside the others'.
    reuse_port: bool = False
    # Set in each worker when a model owner runs: where its sockets are (server/owner).
    owner_socket_dir: Path | None = None
    # The gRPC port's server: "native" (gRPC's C++ server, server/native), "python"
    # (grpcio's asyncio server), or "auto": native where it was built.
    grpc_frontend: str = "auto"
