"""Ports are checked before any model loads: a port in use fails the start with
PortUnavailable naming the port and its flag, also when it is taken between the check
and the bind."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.models import write_affine
from warpserve.server import ports
from warpserve.server.grpc import server as grpc_server
from warpserve.server.lifecycle.registry import ModelRegistry
from warpserve.server.options import ServerOptions
from warpserve.server.ports import PortUnavailable, check_free, check_ports
from warpserve.server.ports import pick_free_port as free_port


@pytest.fixture
def taken() -> Iterator[int]:
    """A loopback port another socket listens on."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield int(holder.getsockname()[1])


def options(repo: Path, flag: str, busy: int) -> ServerOptions:
    return ServerOptions(
        model_repository=repo,
        grpc_address="127.0.0.1",
        grpc_port=busy if flag == "--grpc-port" else 0,
        metrics_address="127.0.0.1",
        metrics_port=busy if flag == "--metrics-port" else 0,
        allow_metrics=True,
        allow_http=False,  # Triton's default port may be taken on the machine
    )


def test_check_free_names_the_port_and_flag(taken: int) -> None:
    with pytest.raises(PortUnavailable, match=rf"127.0.0.1:{taken} .*--grpc-port"):
        check_free("127.0.0.1", taken, "--grpc-port", "gRPC")
    check_free("127.0.0.1", 0, "--grpc-port", "gRPC")  # any port: nothing to check
    free = free_port()
    check_free("127.0.0.1", free, "--grpc-port", "gRPC")  # control: a free port passes


@pytest.mark.parametrize("flag", ["--grpc-port", "--metrics-port"])
def test_check_ports_covers_both_servers(tmp_path: Path, taken: int, flag: str) -> None:
    with pytest.raises(PortUnavailable, match=flag):
        check_ports(options(tmp_path, flag, taken))


def test_metrics_port_is_not_checked_when_metrics_are_off(tmp_path: Path, taken: int) -> None:
    settings = options(tmp_path, "--metrics-port", taken)
    settings.allow_metrics = False
    check_ports(settings)


@pytest.mark.parametrize("flag", ["--grpc-port", "--metrics-port"])
def test_a_port_taken_after_the_check_fails_the_start_before_models_load(
    tmp_path: Path, taken: int, flag: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_affine(tmp_path, "affine")
    monkeypatch.setattr(grpc_server, "check_ports", lambda _: None)  # the race is lost
    loads: list[str] = []

    async def load(self: ModelRegistry, name: str) -> None:
        loads.append(name)

    monkeypatch.setattr(ModelRegistry, "load", load)
    with pytest.raises(PortUnavailable, match=rf"{taken} .*{flag}"):
        asyncio.run(grpc_server.start_server(options(tmp_path, flag, taken)))
    assert loads == []


def test_a_picked_port_is_bindable_and_below_the_ephemeral_range() -> None:
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(20):
        port = free_port()
        assert 1024 <= port < low
        check_free("127.0.0.1", port, "--grpc-port", "gRPC")


def test_a_picked_port_skips_one_a_listener_holds(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", free_port()))
        holder.listen()
        held = holder.getsockname()[1]
        other = free_port()
        candidates = iter([held, held, other])
        monkeypatch.setattr("random.randrange", lambda _low, _high: next(candidates))
        assert free_port() == other


def test_without_room_below_the_ephemeral_range_any_free_port_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ports, "_ephemeral_low", lambda: 1024)
    port = free_port()
    check_free("127.0.0.1", port, "--grpc-port", "gRPC")
