"""Ports the server listens on, checked before anything slow happens.

A port already taken should end a start in one line naming the port and its flag, not
in a traceback after every model has loaded.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

from warpserve.server.options import ServerOptions


class PortUnavailable(OSError):
    """A port the server was told to listen on cannot be bound."""


def check_free(address: str, port: int, flag: str, what: str) -> None:
    """Raise PortUnavailable unless ``address:port`` can be bound now (0: any port)."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # As the servers bind: a port left in TIME_WAIT by a previous run is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address, port))
        except OSError as exc:
            raise unavailable(address, port, flag, what, exc) from None


def unavailable(address: str, port: int, flag: str, what: str, exc: Exception) -> PortUnavailable:
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return PortUnavailable(
        f"cannot listen for {what} on {address}:{port} ({reason}); stop whatever holds "
        f"port {port} or choose another with {flag}"
    )


def check_ports(options: ServerOptions) -> None:
    """Every port the server will listen on, before models are built or loaded."""
    check_free(options.grpc_address, options.grpc_port, "--grpc-port", "gRPC")
    if options.allow_http:
        check_free(options.http_address, options.http_port, "--http-port", "HTTP")
    if options.allow_metrics:
        check_free(options.metrics_address, options.metrics_port, "--metrics-port", "metrics")


def _ephemeral_low() -> int:
    """The lowest port the kernel gives outgoing connections (32768 where unknown)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def pick_free_port(address: str = "127.0.0.1") -> int:
    """A port nothing holds on ``address``, for a server to be started on it next.

    Picked below the kernel's ephemeral range: a port from ``bind(0)`` lies inside it, and
    once released the kernel may hand it to any outgoing connection before the server
    binds it. Below that range only listeners take ports; a caller that starts a server
    still has to expect the rare listener that got there first.
    """
    high = _ephemeral_low()
    low = max(1024, high - 12000)
    # A kernel whose ephemeral range starts near 1024 leaves no room below it.
    for _ in range(200 if high - low >= 1000 else 0):
        port = random.randrange(low, high)
        with socket.socket() as probe:
            try:
                probe.bind((address, port))
            except OSError:
                continue
            return port
    with socket.socket() as probe:
        probe.bind((address, 0))
        return int(probe.getsockname()[1])
