"""The supervisor of ``warpserve serve --workers N``.

It starts N worker processes on the same gRPC port (SO_REUSEPORT: the kernel spreads
new connections over them), serves the metrics port once (the workers' counters
summed), runs the repository poller, and owns the control plane: a worker forwards
every global change to the supervisor's internal service, which applies it to all
workers (``Coordinator``). A worker that dies is replaced; the replacement takes the
current models, routing and shared-memory regions over before it accepts calls.

SIGTERM or SIGINT: every worker gets SIGTERM and shuts down by the single-process
contract (NOT_SERVING, answers what it received, unloads); the supervisor exits 0 when
all did, else with the first failing worker's status. A second signal kills them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import grpc
from prometheus_client.multiprocess import mark_process_dead

from warpserve.server.control.wire import SUPERVISOR_SERVICE, add_service, unix_target
from warpserve.server.cpus import WORKERS_ENV
from warpserve.server.lifecycle.poller import RepositoryPoller
from warpserve.server.metrics import serve_collector
from warpserve.server.options import ServerOptions
from warpserve.server.owner.launcher import OwnerProcess, keep, owner_args
from warpserve.server.owner.placement import LOCAL, PlacedRepository
from warpserve.server.ports import unavailable
from warpserve.server.repository.repository import ModelRepository
from warpserve.server.workers.coordinator import Coordinator
from warpserve.server.workers.metrics import WorkersCollector
from warpserve.server.workers.worker import SPEC_ENV, WorkerSpec

log = logging.getLogger("warpserve")

# A worker that dies sooner than this after its start is restarted after a pause that
# doubles each time (up to MAX_BACKOFF_S), so a model that crashes every process on
# load does not turn the supervisor into a fork loop.
QUICK_DEATH_S = 10.0
MAX_BACKOFF_S = 30.0
EXIT_KILLED = 1
# A second signal this soon after the first is the same one, delivered to the process and
# to its process group (as timeout(1) does); a person's second Ctrl-C comes later.
SAME_SIGNAL_S = 0.5
# How long the model owner may take to load its models before the workers start.
OWNER_READY_S = 300.0


class Supervisor:
    def __init__(self, options: ServerOptions, count: int, event_loop: str) -> None:
        assert options.model_repository is not None
        self.options = options
        self.count = count
        self.event_loop = event_loop
        self.runtime = Path(tempfile.mkdtemp(prefix="warpserve-"))
        self.metrics_dir = self.runtime / "metrics"
        self.metrics_dir.mkdir()
        self.coordinator = Coordinator(ModelRepository(options.model_repository), count)
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self.registered: set[int] = set()  # pids that reached their register call
        self.stopping = False
        self.failed: int | None = None
        self._held_port: socket.socket | None = None
        self._held_http: socket.socket | None = None
        self._spawned = 0
        self._signalled_at = 0.0

    # -- start ----------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        self._hold_grpc_port()
        internal = grpc.aio.server()
        add_service(internal, SUPERVISOR_SERVICE, self._handle)
        internal.add_insecure_port(unix_target(str(self.supervisor_socket)))
        await internal.start()
        metrics = self._start_metrics(loop)
        try:
            owner = await self._start_owner()
        except (RuntimeError, TimeoutError) as exc:  # it exited, or never became ready
            log.error("%s; stopping", exc)
            owner, self.failed = None, EXIT_KILLED
            self.stopping = True
        workers = range(0 if self.stopping else self.count)
        keepers = [loop.create_task(self._keep(i)) for i in workers]
        poller = (
            loop.create_task(self._poll()) if self.options.model_control_mode == "poll" else None
        )
        log.info(
            "supervisor (pid %d): %d worker processes on %s:%d",
            os.getpid(), self.count, self.options.grpc_address, self.options.grpc_port,
        )  # fmt: skip
        statuses = await asyncio.gather(*keepers)
        if owner is not None:  # after the workers: they drain through it
            await owner.stop()
        if poller is not None:
            poller.cancel()
            await asyncio.gather(poller, return_exceptions=True)
        if metrics is not None:
            metrics.shutdown()
        await internal.stop(grace=0.5)
        shutil.rmtree(self.runtime, ignore_errors=True)
        if self.failed is not None:
            return self.failed
        bad = [s for s in statuses if s]
        log.info("all workers stopped: %s", "clean" if not bad else f"exit statuses {bad}")
        return bad[0] if bad else 0

    async def _start_owner(self) -> OwnerKeeper | None:
        """The model owner, when a model of the repository is placed on it (a GPU model):
        started and ready before the workers, which attach to it as they start."""
        options = self.options
        assert options.model_repository is not None
        args = owner_args(
            options.model_control_mode,
            options.load_models,
            options.repository_poll_secs,
            options.rollback_grace_secs,
            options.exit_timeout_secs,
            self.event_loop,
        )
        # Its models' metrics join the workers' in the files the scrape sums.
        metrics_env = {"PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir)}
        owner = OwnerProcess(options.model_repository, self.runtime / "owner", args, metrics_env)
        if not await asyncio.to_thread(owner.needed):
            return None
        owner.start()
        await asyncio.to_thread(owner.wait_ready, OWNER_READY_S)
        log.info("model owner (pid %d) serves the owner-placed models", owner.pid)
        options.owner_socket_dir = owner.socket_dir
        return OwnerKeeper(owner, options.exit_timeout_secs, str(self.metrics_dir))

    @property
    def supervisor_socket(self) -> Path:
        return self.runtime / "supervisor.sock"

    def _hold_grpc_port(self) -> None:
        """With port 0 the workers must agree on one: bind it here (not listening, so it
        takes no connections) with SO_REUSEPORT, and hold it while the workers run. The
        same for the HTTP port."""
        options = self.options
        if options.grpc_port == 0:
            self._held_port = _held_port(options.grpc_address, "--grpc-port", "gRPC")
            options.grpc_port = self._held_port.getsockname()[1]
        if options.allow_http and options.http_port == 0:
            self._held_http = _held_port(options.http_address, "--http-port", "HTTP")
            options.http_port = self._held_http.getsockname()[1]

    def _start_metrics(self, loop: asyncio.AbstractEventLoop) -> Any:
        if not self.options.allow_metrics:
            return None

        def refresh() -> None:  # on the HTTP thread, before each scrape
            future = asyncio.run_coroutine_threadsafe(self.coordinator.flush_metrics(), loop)
            with contextlib.suppress(Exception):  # a scrape still answers, with older values
                future.result(timeout=3.0)

        collector = WorkersCollector(str(self.metrics_dir), refresh)
        address, port = self.options.metrics_address, self.options.metrics_port
        try:
            server, bound = serve_collector(collector, address, port)
        except OSError as exc:
            raise unavailable(address, port, "--metrics-port", "metrics", exc) from None
        log.info("Started Metrics Service at %s:%d", address, bound)
        return server

    async def _handle(self, op: str, args: dict[str, Any]) -> Any:
        if op == "register":
            self.registered.add(args["pid"])
        return await self.coordinator.handle(op, args)

    # -- workers --------------------------------------------------------------------------

    async def _keep(self, index: int) -> int:
        """Run worker ``index``; replace it whenever it dies, until shutdown."""
        respawned, backoff = False, 1.0
        while True:
            proc = await self._spawn(index, respawned)
            started = time.monotonic()
            status = await proc.wait()
            self.coordinator.forget(index, proc.pid)
            mark_process_dead(proc.pid, str(self.metrics_dir))
            if self.stopping:
                # Stopped by our SIGTERM before it took a call: nothing was lost.
                cut_short = status == -signal.SIGTERM and proc.pid not in self.registered
                return 0 if cut_short else status
            if proc.pid not in self.registered and not respawned:
                log.error("worker %d exited with %d while starting; stopping", index, status)
                self._fail(status or EXIT_KILLED)
                return status
            log.error(
                "worker %d (pid %d) exited with %d; starting a replacement",
                index, proc.pid, status,
            )  # fmt: skip
            respawned = True
            if time.monotonic() - started < QUICK_DEATH_S:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
            else:
                backoff = 1.0
            if self.stopping:
                return 0

    async def _spawn(self, index: int, respawned: bool) -> asyncio.subprocess.Process:
        self._spawned += 1
        spec = WorkerSpec(
            index=index,
            supervisor_socket=str(self.supervisor_socket),
            socket=str(self.runtime / f"worker-{index}-{self._spawned}.sock"),
            respawned=respawned,
            event_loop=self.event_loop,
            options=self.options,
        )
        env = {
            **os.environ,
            SPEC_ENV: spec.to_env(),
            WORKERS_ENV: str(self.count),
            "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir),
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "warpserve.server.workers",
            env=env,
            # posix_spawn rather than fork: the supervisor's gRPC threads are running, and
            # a fork would copy their state (Python's descriptors are not inherited).
            close_fds=False,
        )
        self.procs[index] = proc
        return proc

    # -- stop -----------------------------------------------------------------------------

    def _on_signal(self, sig: signal.Signals) -> None:
        now = time.monotonic()
        if self.stopping:
            if now - self._signalled_at < SAME_SIGNAL_S:
                return  # the same signal, sent to the process and to its group
            log.error("%s again: killing the workers", sig.name)
            self._signal_all(signal.SIGKILL)
            logging.shutdown()
            os._exit(EXIT_KILLED)
        self._signalled_at = now
        log.info("%s: stopping %d workers (each finishes what it received)", sig.name, self.count)
        self._stop()

    def _stop(self) -> None:
        self.stopping = True
        self.coordinator.shutting_down = True
        asyncio.get_running_loop().create_task(self._shut_down_workers())

    async def _shut_down_workers(self) -> None:
        """A shutdown call to each worker (a SIGTERM where the call fails): a worker also
        reached by a signal to the process group then counts one request to stop."""
        for index, proc in list(self.procs.items()):
            link = self.coordinator.workers.get(index)
            try:
                if link is None or link.pid != proc.pid:
                    raise LookupError(f"worker {index} has not registered")
                await link.client.call("shutdown", timeout=2.0)
            except Exception:  # not registered yet, or not answering: the signal
                if proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.send_signal(signal.SIGTERM)

    def _fail(self, status: int) -> None:
        if self.failed is None:
            self.failed = status
        self._stop()

    def _signal_all(self, sig: signal.Signals) -> None:
        for proc in self.procs.values():
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)

    async def _poll(self) -> None:
        """One repository poller for all workers; its loads go through the coordinator."""
        await self.coordinator.started.wait()
        await self.coordinator.refresh_loaded()
        poller = RepositoryPoller(
            cast(Any, ClusterRegistry(self.coordinator)), self.options.repository_poll_secs
        )
        poller.start()
        try:
            await asyncio.Event().wait()
        finally:
            await poller.stop()


class OwnerKeeper:
    """The running model owner: restarted when it dies (``keep``), stopped last."""

    def __init__(self, owner: OwnerProcess, exit_timeout_s: float, metrics_dir: str) -> None:
        self.owner = owner
        self.exit_timeout_s = exit_timeout_s
        self.stopping = asyncio.Event()

        def exited(pid: int) -> None:  # its live gauges go; its counters stay summed
            mark_process_dead(pid, metrics_dir)

        self.task = asyncio.get_running_loop().create_task(keep(owner, self.stopping, exited))

    async def stop(self) -> None:
        self.stopping.set()
        await asyncio.to_thread(self.owner.stop, self.exit_timeout_s)
        await self.task


class ClusterRegistry:
    """What the repository poller needs of a registry, applied to every worker."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator
        # The owner polls its own models; the workers' poller leaves them alone.
        self.repository = PlacedRepository(coordinator.repository, LOCAL)

    @property
    def models(self) -> set[str]:
        return self.coordinator.loaded

    async def load(self, name: str) -> None:
        await self.coordinator.handle("load", {"name": name, "versions": None, "activate": True})

    async def unload(self, name: str) -> None:
        await self.coordinator.handle("unload", {"name": name, "version": None})


def supervise(options: ServerOptions, count: int, event_loop: str) -> int:
    """Run the supervisor until its workers have stopped; returns the exit status. It
    runs on the standard library's loop (it serves no requests; the workers take
    ``event_loop``), whose subprocesses start with posix_spawn."""
    return asyncio.run(Supervisor(options, count, event_loop).run())


def _held_port(address: str, flag: str, what: str) -> socket.socket:
    """A free port on ``address``, bound with SO_REUSEPORT and not listening."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    held = socket.socket(family, socket.SOCK_STREAM)
    held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        held.bind((address, 0))
    except OSError as exc:
        held.close()
        raise unavailable(address, 0, flag, what, exc) from None
    return held
