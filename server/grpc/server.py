"""Assemble and run the gRPC server: inference, health, admin, metrics, shutdown."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn, TypeAlias

import grpc
from grpc_health.v1 import health_pb2_grpc

from warpserve.profiling.guard import LatencyGuard
from warpserve.server.busypoll import BusyPoller, default_window_us
from warpserve.server.control.local import LocalControlPlane
from warpserve.server.control.plane import ControlPlane
from warpserve.server.cpus import usable_cores, worker_processes
from warpserve.server.dataplane import DataPlane
from warpserve.server.errors import WarpserveError
from warpserve.server.grpc.health import HealthReporter
from warpserve.server.grpc.inference import InferenceServicer, add_inference_service
from warpserve.server.grpc.limits import add_bounded, receive_ceiling
from warpserve.server.http.routes import RestApi
from warpserve.server.http.server import HttpServer, listening_socket, start_http
from warpserve.server.http.statuspage import add_status_page
from warpserve.server.inflight import CALL, STREAM, STREAM_REQUEST, InFlight
from warpserve.server.lifecycle.poller import RepositoryPoller
from warpserve.server.lifecycle.registry import ModelRegistry
from warpserve.server.metrics import serve_metrics
from warpserve.server.native.transport import MISSING as NATIVE_MISSING
from warpserve.server.native.transport import NativeServer
from warpserve.server.native.transport import available as native_available
from warpserve.server.native.transport import grpc_version as native_version
from warpserve.server.options import ServerOptions
from warpserve.server.ports import check_ports, unavailable
from warpserve.server.repository.repository import ModelRepository
from warpserve.server.serverapi import ServerApi
from warpserve.server.shm import SharedMemoryRegions
from warpserve.server.tls import TlsSettings, grpc_server_credentials, ssl_context

if TYPE_CHECKING:
    from warpserve.server.owner.launcher import OwnerLink

log = logging.getLogger("warpserve")

# What runs the gRPC port: gRPC's C++ server (server/native) or grpcio's asyncio server.
GrpcServer: TypeAlias = grpc.aio.Server | NativeServer


# After the exit timeout, how long the UNAVAILABLE answers of what was cut off get to
# leave before the gRPC server stops.
CUT_OFF_GRACE_S = 1.0
# Once everything admitted is answered, the server keeps refusing calls itself until no
# call has been answered or refused for this long (or the exit timeout comes): stopping
# gRPC kills the calls it has received but not yet handed to a handler with CANCELLED,
# which clients do not retry. A caller answered at the end of the drain calls again
# within it (a Python client on a loaded 2-core machine took over 0.1 s) and is refused;
# callers told UNAVAILABLE go elsewhere.
QUIET_S = 0.25
# Exit status when requests were cut off (by the exit timeout or a second signal): the
# shutdown did not answer everything, and a supervisor can tell.
EXIT_CUT_OFF = 1


@dataclass
class RunningServer:
    options: ServerOptions
    registry: ModelRegistry
    dataplane: DataPlane
    grpc_server: GrpcServer
    health: HealthReporter
    grpc_port: int
    metrics_port: int = 0
    poller: RepositoryPoller | None = None
    owner: OwnerLink | None = None  # a worker's link to the model owner
    http: HttpServer | None = None
    api: ServerApi | None = None
    _metrics: Any = None
    _shutdown: asyncio.Task[int] | None = None
    _shutdown_begun: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def shutting_down(self) -> bool:
        return self._shutdown is not None

    def begin_shutdown(self) -> asyncio.Task[int]:
        """What SIGTERM/SIGINT do: refuse new calls at once (UNAVAILABLE), then finish
        the admitted ones, unload and stop, in a task whose result is the exit status."""
        if self._shutdown is None:
            self.dataplane.calls.start_draining()
            self._shutdown = asyncio.get_running_loop().create_task(self._shut_down())
            self._shutdown_begun.set()
        return self._shutdown

    async def shutdown(self) -> int:
        return await asyncio.shield(self.begin_shutdown())

    async def wait(self) -> int:
        """Until a shutdown has finished; returns its exit status."""
        await self._shutdown_begun.wait()
        return await self.shutdown()

    async def _shut_down(self) -> int:
        calls = self.dataplane.calls
        await self.health.not_serving()
        log.info(
            "shutting down: NOT_SERVING, new requests get UNAVAILABLE; finishing %s "
            "(up to %g s, --exit-timeout-secs)",
            _describe(calls.counts()) or "no requests",
            self.options.exit_timeout_secs,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.exit_timeout_secs
        if self.poller is not None:
            await self.poller.stop()
        try:
            await asyncio.wait_for(calls.wait_idle(), max(0.0, deadline - loop.time()))
        except asyncio.TimeoutError:
            cut = calls.cut_off()
            log.error(
                "exit timeout (--exit-timeout-secs %g): cut off %s; they are answered "
                "UNAVAILABLE; models are not unloaded",
                self.options.exit_timeout_secs,
                _describe(cut),
            )
            await self.grpc_server.stop(grace=CUT_OFF_GRACE_S)
            await self._stop_http(CUT_OFF_GRACE_S)
            self._stop_metrics()
            return EXIT_CUT_OFF
        # Every admitted call has its answer: only now do the models go.
        if self.owner is not None:
            await self.owner.close()
        await self.registry.close()
        await _quiet(calls, deadline)
        # Nothing of ours is left running; the grace covers answers still being sent.
        await self.grpc_server.stop(grace=max(CUT_OFF_GRACE_S, deadline - loop.time()))
        await self._stop_http(CUT_OFF_GRACE_S)
        self._stop_metrics()
        log.info("shutdown complete: every request received was answered")
        return 0

    async def _stop_http(self, grace_s: float) -> None:
        if self.http is not None:
            await self.http.stop(grace_s)

    def _stop_metrics(self) -> None:
        if self._metrics is not None:
            self._metrics.shutdown()


async def _quiet(calls: InFlight, deadline: float) -> None:
    """Wait until no call was answered or refused for QUIET_S, or until the deadline."""
    loop = asyncio.get_running_loop()
    while (left := QUIET_S - (time.monotonic() - calls.last_end)) > 0:
        if loop.time() + left > deadline:
            return
        await asyncio.sleep(left)


def _describe(counts: Counter[str]) -> str:
    """'3 requests (2 calls, 1 stream request), 1 open stream' for a log line."""
    requests = counts[CALL] + counts[STREAM_REQUEST]
    parts = []
    if requests:
        parts.append(
            f"{requests} request{'s' * (requests != 1)} ({counts[CALL]} "
            f"call{'s' * (counts[CALL] != 1)}, {counts[STREAM_REQUEST]} stream "
            f"request{'s' * (counts[STREAM_REQUEST] != 1)})"
        )
    if counts[STREAM]:
        parts.append(f"{counts[STREAM]} open stream{'s' * (counts[STREAM] != 1)}")
    return ", ".join(parts)


def _grpc_options(options: ServerOptions) -> list[tuple[str, Any]]:
    return [
        # Above the limit, so that the inference service refuses what lies between
        # with a hint naming the flag (gRPC's own refusal names none).
        ("grpc.max_receive_message_length", receive_ceiling(options.max_message_bytes)),
        ("grpc.max_send_message_length", options.max_message_bytes),
        # Off for a lone process (a second server on the port is a mistake to report);
        # on for the workers of --workers N, which share it.
        ("grpc.so_reuseport", 1 if options.reuse_port else 0),
    ]


async def _load_startup_models(registry: ModelRegistry, options: ServerOptions) -> None:
    names = registry.repository.model_names()
    if options.model_control_mode == "explicit":
        names = names if "*" in options.load_models else options.load_models
    for name in names:
        try:
            await registry.load(name)
        except WarpserveError as exc:
            log.error("model '%s' failed to load: %s", name, exc)


# In a worker of several: what runs once the models are loaded and before the port
# takes calls (the worker's internal service, taking over the current state).
BeforeAccepting = Callable[[ModelRegistry, SharedMemoryRegions], Awaitable[None]]


async def start_server(
    options: ServerOptions,
    *,
    control: ControlPlane | None = None,
    before_accepting: BeforeAccepting | None = None,
    on_started: Callable[[], Awaitable[Any]] | None = None,
) -> RunningServer:
    """Start one server process. Without ``control`` it is the whole server; with one
    (a worker of ``--workers N``), global changes go through it and the repository
    poller runs in the supervisor instead."""
    assert options.model_repository is not None
    if not options.reuse_port:  # a worker's port is held by its siblings (and supervisor)
        check_ports(options)
    repository = ModelRepository(options.model_repository)
    window_us = options.busy_poll_us
    if window_us is None:
        window_us = default_window_us()
    poller = BusyPoller(window_us)
    log.info(
        "busy polling: %s (--busy-poll-us; %d usable cores, %d server processes)",
        f"up to {window_us} us after each request" if window_us else "off",
        usable_cores(),
        worker_processes(),
    )
    # A worker of several beside a model owner: the owner's models are served there.
    owner = await _attach_owner(options)
    if owner is not None:
        repository = owner.repository
    registry = ModelRegistry(repository, grace_period_s=options.rollback_grace_secs, poller=poller)
    shm = SharedMemoryRegions(allowed=options.allow_client_shm)
    if control is None:
        control = LocalControlPlane(registry, shm)
    # Watches new versions of models whose config enables it; its verdict goes through
    # the control plane, so a rollback reaches every process.
    LatencyGuard(registry, rollback=control.guard_rollback)
    dataplane = DataPlane(registry, poller, owner=owner.proxy if owner is not None else None)
    health = HealthReporter()
    server = _grpc_server(options)
    if shm.allowed:
        log.info("client shared memory: on (--allow-client-shm); regions map from %s", shm.root)
    server_api = ServerApi(dataplane, registry, shm, control)
    inference = InferenceServicer(
        dataplane, registry, shm, options.max_message_bytes, control=control, api=server_api
    )
    if owner is not None:
        owner.forward(inference)  # calls about the owner's models answered there
    add_inference_service(inference, server)
    add_bounded(
        health_pb2_grpc.add_HealthServicer_to_server,
        health.servicer,
        server,
        options.max_message_bytes,
    )
    _add_admin(server, registry, options, control, owner)
    # A lone process holds its port before any model loads (a port in use ends the start
    # at once). A worker binds only when it can answer: with SO_REUSEPORT the kernel
    # hands a bound port's new connections to every listener, ready or not.
    port = 0 if options.reuse_port else _bind_grpc(server, options)
    http_socket = None if options.reuse_port else _bind_http(options)
    metrics, metrics_port = _start_metrics(registry, options)
    await _load_startup_models(registry, options)
    if before_accepting is not None:
        await before_accepting(registry, shm)
    if options.reuse_port:
        port = _bind_grpc(server, options)
        http_socket = _bind_http(options)
    await server.start()
    if isinstance(server, NativeServer):  # binds as it starts
        port = server.port
        if not port:
            raise unavailable(
                options.grpc_address,
                options.grpc_port,
                "--grpc-port",
                "gRPC",
                OSError("bind failed"),
            )
    running = RunningServer(options, registry, dataplane, server, health, port)
    running.owner = owner
    running._metrics, running.metrics_port = metrics, metrics_port
    running.api = server_api
    if http_socket is not None:
        rest = RestApi(dataplane, server_api, options.http_max_input_bytes)
        add_status_page(rest, server_api, options)
        http_tls = options.http_tls
        running.http = await start_http(
            rest, http_socket, None if http_tls is None else ssl_context(http_tls)
        )
    if options.model_control_mode == "poll" and isinstance(control, LocalControlPlane):
        running.poller = RepositoryPoller(registry, options.repository_poll_secs)
        running.poller.start()
    # Everything loaded so far lives as long as the server: move it out of the cyclic
    # collector's view so collections triggered by per-request garbage stay short.
    gc.collect()
    gc.freeze()
    await health.serving()
    if on_started is not None:
        await on_started()
    log.info(
        "Started GRPCInferenceService at %s:%d%s",
        options.grpc_address,
        port,
        "" if options.grpc_tls is None else _tls_note(options.grpc_tls),
    )
    if running.http is not None:
        note = "" if options.http_tls is None else _tls_note(options.http_tls)
        log.info("Started HTTPService at %s:%d%s", options.http_address, running.http.port, note)
    if running.metrics_port:
        log.info("Started Metrics Service at %s:%d", options.metrics_address, running.metrics_port)
    return running


def _grpc_server(options: ServerOptions) -> GrpcServer:
    """The gRPC port's server: the native frontend where it was built (or asked for)."""
    choice = options.grpc_frontend
    if choice == "native" or (choice == "auto" and native_available()):
        if not native_available():
            raise RuntimeError(f"--grpc-frontend native: {NATIVE_MISSING}")
        log.info("gRPC frontend: native (gRPC C++ %s)", native_version())
        return NativeServer(
            receive_ceiling(options.max_message_bytes),
            options.max_message_bytes,
            options.reuse_port,
        )
    if choice == "auto":
        log.info("gRPC frontend: python (grpcio asyncio); %s", NATIVE_MISSING)
    return grpc.aio.server(options=_grpc_options(options))


def _bind_grpc(server: GrpcServer, options: ServerOptions) -> int:
    address, port = options.grpc_address, options.grpc_port
    target = f"{address}:{port}"
    if isinstance(server, NativeServer):
        try:
            server.listen(address, port, options.grpc_tls)
        except OSError as exc:  # taken since check_ports looked
            raise unavailable(address, port, "--grpc-port", "gRPC", exc) from None
        return port  # known once it starts
    try:
        if options.grpc_tls is None:
            bound = server.add_insecure_port(target)
        else:
            bound = server.add_secure_port(target, grpc_server_credentials(options.grpc_tls))
    except RuntimeError as exc:  # taken since check_ports looked
        raise unavailable(address, port, "--grpc-port", "gRPC", exc) from None
    if bound == 0:
        raise unavailable(address, port, "--grpc-port", "gRPC", OSError("bind failed"))
    return bound


def _tls_note(tls: TlsSettings) -> str:
    return " (mutual TLS)" if tls.mutual else " (TLS)"


def _bind_http(options: ServerOptions) -> socket.socket | None:
    if not options.allow_http:
        return None
    return listening_socket(options.http_address, options.http_port)


def _start_metrics(registry: ModelRegistry, options: ServerOptions) -> tuple[Any, int]:
    if not options.allow_metrics:
        return None, 0
    address, port = options.metrics_address, options.metrics_port
    try:
        return serve_metrics(registry, address, port)
    except OSError as exc:
        raise unavailable(address, port, "--metrics-port", "metrics", exc) from None


def _add_admin(
    server: GrpcServer,
    registry: ModelRegistry,
    options: ServerOptions,
    control: ControlPlane,
    owner: OwnerLink | None,
) -> None:
    try:
        from warpserve.server.grpc.admin import add_admin_service
    except ImportError:
        return
    prepare = owner.forward_admin if owner is not None else None
    add_admin_service(server, registry, options, control, prepare=prepare)


async def _attach_owner(options: ServerOptions) -> OwnerLink | None:
    """The model owner's link, for a worker started beside one (--workers N with
    owner-placed models); None otherwise."""
    if options.owner_socket_dir is None:
        return None
    from warpserve.server.owner.launcher import OwnerLink

    assert options.model_repository is not None
    return await OwnerLink.attach(options.owner_socket_dir, options.model_repository)


async def run(
    options: ServerOptions,
    *,
    signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT),
    **start: Any,
) -> int:
    """Serve until one of ``signals``; returns the exit status. A second signal exits
    the process at once."""
    running = await start_server(options, **start)
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        if running.shutting_down:
            exit_now(sig, running)
        running.begin_shutdown()

    for sig in signals:
        loop.add_signal_handler(sig, on_signal, sig)
    return await running.wait()


def exit_now(sig: signal.Signals, running: RunningServer) -> NoReturn:
    """A second signal: the operator does not want to wait. Worker threads may still be
    running a model, so the interpreter's orderly exit (which joins them) is skipped."""
    log.error(
        "%s again: exiting now; cut off %s",
        sig.name,
        _describe(running.dataplane.calls.counts()) or "no requests",
    )
    logging.shutdown()
    os._exit(EXIT_CUT_OFF)
