"""One server process of ``warpserve serve --workers N``, started by the supervisor.

It runs the whole single-process server (every listener, its own registry, batchers
and instances) with its ports bound beside the other workers' (SO_REUSEPORT), changes
that are global going through the supervisor (``CoordinatedControlPlane``), and an
internal service on a unix socket through which the supervisor applies those changes
here. Before its port takes calls it registers with the supervisor, which hands a
replacement worker the current models, routing and regions.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import ctypes
import logging
import os
import pickle
import signal
import sys
from dataclasses import dataclass
from typing import Any

import grpc

from warpserve.server.control.coordinated import CoordinatedControlPlane
from warpserve.server.control.local import LocalControlPlane, worker_op
from warpserve.server.control.wire import WORKER_SERVICE, add_service, unix_target
from warpserve.server.grpc.server import RunningServer
from warpserve.server.lifecycle.registry import ModelRegistry
from warpserve.server.options import ServerOptions
from warpserve.server.shm import SharedMemoryRegions

SPEC_ENV = "WARPSERVE_WORKER_SPEC"
PR_SET_PDEATHSIG = 1

log = logging.getLogger("warpserve")


@dataclass
class WorkerSpec:
    index: int
    supervisor_socket: str
    socket: str  # this worker's internal service
    respawned: bool  # a replacement: takes the current state over instead of loading
    event_loop: str
    options: ServerOptions  # the supervisor's, as the command line gave them

    def to_env(self) -> str:
        # Pickled: the options hold paths, TLS key material and whatever listeners add.
        return base64.b64encode(pickle.dumps(self)).decode()

    @classmethod
    def from_env(cls) -> WorkerSpec:
        spec = pickle.loads(base64.b64decode(os.environ[SPEC_ENV]))
        assert isinstance(spec, cls)
        return spec

    def server_options(self) -> ServerOptions:
        options = copy.copy(self.options)
        options.reuse_port, options.allow_metrics = True, False  # metrics: the supervisor's
        options.workers = 1  # this process serves
        if self.respawned:  # the supervisor hands over what the others serve now
            options.model_control_mode, options.load_models = "explicit", []
        return options


class WorkerService:
    """The internal service: the supervisor's calls, applied to this worker alone."""

    def __init__(self, spec: WorkerSpec, control: CoordinatedControlPlane) -> None:
        self.spec = spec
        self.control = control
        self.server: grpc.aio.Server | None = None
        self.local: LocalControlPlane | None = None
        self.mirror: Any = None
        self.running: RunningServer | None = None
        # The supervisor's shutdown call and a SIGTERM sent to the whole group (systemd
        # does) are one request to stop, not two: the call lets one such signal pass.
        self.absorb = 0
        self.stop_requested = False  # the supervisor asked before this worker had started

    async def start(self, registry: ModelRegistry, shm: SharedMemoryRegions) -> None:
        from warpserve.server.workers.metrics import MetricsMirror

        self.local = LocalControlPlane(registry, shm)
        self.mirror = MetricsMirror(registry)
        self.server = grpc.aio.server()
        add_service(self.server, WORKER_SERVICE, self.handle)
        self.server.add_insecure_port(unix_target(self.spec.socket))
        await self.server.start()
        await self.control.client.call(
            "register",
            index=self.spec.index,
            pid=os.getpid(),
            socket=self.spec.socket,
            respawned=self.spec.respawned,
        )

    async def handle(self, op: str, args: dict[str, Any]) -> Any:
        assert self.local is not None
        if op == "flush_metrics":
            self.mirror.flush()
            return None
        if op == "shutdown":
            self.stop_requested = True
            if self.running is not None:  # else: once started (see serve)
                self.shut_down(self.running)
            return None
        return await worker_op(self.local, op, args)

    def shut_down(self, running: RunningServer) -> None:
        if not running.shutting_down:
            self.absorb = 1
        running.begin_shutdown()

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(grace=1.0)


async def serve(spec: WorkerSpec) -> int:
    from warpserve.server.grpc.server import exit_now, start_server

    control = CoordinatedControlPlane(spec.supervisor_socket)
    service = WorkerService(spec, control)
    try:
        running = await start_server(
            spec.server_options(),
            control=control,
            before_accepting=service.start,
            on_started=lambda: control.client.call("serving", index=spec.index),
        )
        service.running = running
        if service.stop_requested:
            service.shut_down(running)

        def on_signal(sig: signal.Signals) -> None:
            if running.shutting_down:
                if not service.absorb:
                    exit_now(sig, running)
                service.absorb -= 1
            running.begin_shutdown()

        # SIGINT from a terminal reaches the whole process group: the supervisor turns
        # it into a shutdown call per worker, so only SIGTERM is taken here.
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, on_signal, signal.SIGTERM)
        return await running.wait()
    finally:
        await service.stop()


def _die_with_parent() -> None:
    """SIGTERM (a graceful shutdown) if the supervisor dies, even by SIGKILL."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux
        pass


def main() -> int:
    from warpserve.server.cli import event_loop_factory

    spec = WorkerSpec.from_env()
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    level = logging.DEBUG if spec.options.log_verbose else logging.INFO
    logging.basicConfig(
        level=level,
        format=f"%(asctime)s %(levelname).1s worker {spec.index} %(name)s: %(message)s",
        stream=sys.stderr,
    )
    with asyncio.Runner(loop_factory=event_loop_factory(spec.event_loop)) as runner:
        status = runner.run(serve(spec))
    if status:
        logging.shutdown()
        os._exit(status)  # a model may still run on a worker thread
    return 0
