"""Assemble and run the gRPC server: inference, health, admin, metrics, shutdown."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health_pb2_grpc

from warpserve.server.busypoll import BusyPoller, default_window_us
from warpserve.server.cpus import usable_cores
from warpserve.server.dataplane import DataPlane
from warpserve.server.errors import WarpserveError
from warpserve.server.grpc.health import HealthReporter
from warpserve.server.grpc.inference import InferenceServicer, add_inference_service
from warpserve.server.lifecycle.poller import RepositoryPoller
from warpserve.server.lifecycle.registry import ModelRegistry
from warpserve.server.metrics import serve_metrics
from warpserve.server.options import ServerOptions
from warpserve.server.repository.repository import ModelRepository
from warpserve.server.shm import SharedMemoryRegions

log = logging.getLogger("warpserve")


@dataclass
class RunningServer:
    options: ServerOptions
    registry: ModelRegistry
    dataplane: DataPlane
    grpc_server: grpc.aio.Server
    health: HealthReporter
    grpc_port: int
    metrics_port: int = 0
    poller: RepositoryPoller | None = None
    _metrics: Any = None
    _stopped: asyncio.Event = field(default_factory=asyncio.Event)

    async def shutdown(self) -> None:
        """Health NOT_SERVING, refuse new calls, let in-flight ones finish, unload."""
        if self.dataplane.draining:
            return
        log.info(
            "shutting down: finishing in-flight requests (up to %.0f s)",
            self.options.exit_timeout_secs,
        )
        self.dataplane.draining = True
        await self.health.not_serving()
        if self.poller is not None:
            await self.poller.stop()
        try:
            await asyncio.wait_for(self.dataplane.wait_idle(), self.options.exit_timeout_secs)
        except asyncio.TimeoutError:
            log.warning("exit timeout: %d requests still running", self.dataplane.in_flight)
        await self.grpc_server.stop(grace=1.0)
        await self.registry.close()
        if self._metrics is not None:
            self._metrics.shutdown()
        self._stopped.set()

    async def wait(self) -> None:
        await self._stopped.wait()


def _grpc_options(options: ServerOptions) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", options.max_message_bytes),
        ("grpc.max_send_message_length", options.max_message_bytes),
        ("grpc.so_reuseport", 0),
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


async def start_server(options: ServerOptions) -> RunningServer:
    assert options.model_repository is not None
    repository = ModelRepository(options.model_repository)
    window_us = options.busy_poll_us
    if window_us is None:
        window_us = default_window_us()
    poller = BusyPoller(window_us)
    log.info(
        "busy polling: %s (--busy-poll-us; %d usable cores)",
        f"up to {window_us} us after each request" if window_us else "off",
        usable_cores(),
    )
    registry = ModelRegistry(repository, grace_period_s=options.rollback_grace_secs, poller=poller)
    dataplane = DataPlane(registry, poller)
    health = HealthReporter()
    server = grpc.aio.server(options=_grpc_options(options))
    shm = SharedMemoryRegions(allowed=options.allow_client_shm)
    if shm.allowed:
        log.info("client shared memory: on (--allow-client-shm); regions map from %s", shm.root)
    add_inference_service(InferenceServicer(dataplane, registry, shm), server)
    health_pb2_grpc.add_HealthServicer_to_server(health.servicer, server)
    _add_admin(server, registry, options)
    port = server.add_insecure_port(f"{options.grpc_address}:{options.grpc_port}")
    if port == 0:
        raise OSError(f"cannot bind gRPC to {options.grpc_address}:{options.grpc_port}")
    await _load_startup_models(registry, options)
    await server.start()
    running = RunningServer(options, registry, dataplane, server, health, port)
    if options.allow_metrics:
        running._metrics, running.metrics_port = serve_metrics(
            registry, options.metrics_address, options.metrics_port
        )
    if options.model_control_mode == "poll":
        running.poller = RepositoryPoller(registry, options.repository_poll_secs)
        running.poller.start()
    # Everything loaded so far lives as long as the server: move it out of the cyclic
    # collector's view so collections triggered by per-request garbage stay short.
    gc.collect()
    gc.freeze()
    await health.serving()
    log.info("Started GRPCInferenceService at %s:%d", options.grpc_address, port)
    if running.metrics_port:
        log.info("Started Metrics Service at %s:%d", options.metrics_address, running.metrics_port)
    return running


def _add_admin(server: grpc.aio.Server, registry: ModelRegistry, options: ServerOptions) -> None:
    try:
        from warpserve.server.grpc.admin import add_admin_service
    except ImportError:
        return
    add_admin_service(server, registry, options)


async def run(options: ServerOptions) -> int:
    running = await start_server(options)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: loop.create_task(running.shutdown()))
    await running.wait()
    return 0
