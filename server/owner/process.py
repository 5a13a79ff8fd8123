"""The model owner process: ``python -m warpserve.server.owner.process --socket-dir D
--model-repository R`` (started by the supervisor of a multi-process server, see
``launcher``).

It loads the repository's owner-placed models (``placement``) with the usual registry,
batchers and backends, then serves:
- the frontends' requests for them on ``D/owner.sock`` (``service``: tensors through
  shared memory, a small message per request);
- everything else about them (ModelReady, ModelMetadata, ModelConfig, ModelStatistics,
  RepositoryIndex, load and unload, and the admin API: rollout, rollback, split, shadow)
  as the gRPC services of a single server, on ``D/control.sock``, for the frontends to
  forward such calls to. Loads, swaps and statistics of these models thus happen once,
  here.

SIGTERM: stop taking connections, answer every request received, unload, exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import logging
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc

from warpserve.profiling.guard import LatencyGuard
from warpserve.protos import admin_pb2_grpc as apb_grpc
from warpserve.server.cli import event_loop_factory
from warpserve.server.dataplane import DataPlane
from warpserve.server.errors import WarpserveError
from warpserve.server.grpc.admin import AdminServicer
from warpserve.server.grpc.inference import InferenceServicer, add_inference_service
from warpserve.server.lifecycle.poller import RepositoryPoller
from warpserve.server.lifecycle.registry import ModelRegistry
from warpserve.server.owner.placement import OWNER, PlacedRepository
from warpserve.server.owner.service import OwnerService
from warpserve.server.repository.repository import ModelRepository

log = logging.getLogger("warpserve.owner")

DATA_SOCKET = "owner.sock"
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
MIRROR_SECS = 0.5
CONTROL_SOCKET = "control.sock"
_PR_SET_PDEATHSIG = 1


def control_target(socket_dir: Path) -> str:
    """The gRPC target of the owner's control services."""
    return f"unix:{socket_dir / CONTROL_SOCKET}"


def _die_with_parent() -> None:
    """SIGTERM this process when its supervisor dies, so no owner outlives its server
    (holding the GPU) even when the supervisor is killed outright."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the supervisor stops it itself
        pass


async def _load(registry: ModelRegistry, mode: str, wanted: list[str]) -> None:
    names = registry.repository.model_names()
    if mode == "explicit":
        names = names if "*" in wanted else [n for n in wanted if n in names]
    for name in names:
        try:
            await registry.load(name)
        except WarpserveError as exc:
            log.error("model '%s' failed to load: %s", name, exc)


@dataclass
class RunningOwner:
    registry: ModelRegistry
    dataplane: DataPlane
    service: OwnerService
    control: grpc.aio.Server
    poller: RepositoryPoller | None = None
    mirror: asyncio.Task[None] | None = None

    async def stop(self, exit_timeout_s: float) -> int:
        """Stop taking connections, answer every request received, unload; the exit
        status (1 when requests were cut off at the timeout)."""
        if self.poller is not None:
            await self.poller.stop()
        if self.mirror is not None:
            self.mirror.cancel()
            await asyncio.gather(self.mirror, return_exceptions=True)
        await self.service.stop_accepting()
        try:
            await asyncio.wait_for(self.service.wait_idle(), exit_timeout_s)
        except asyncio.TimeoutError:
            log.error("model owner: requests still running at the exit timeout were cut off")
            await self.service.close()
            return 1
        await self.service.close()
        await self.registry.close()
        await self.control.stop(grace=1.0)
        return 0


async def start_owner(
    repository_root: Path,
    socket_dir: Path,
    *,
    control_mode: str = "none",
    load_models: list[str] | None = None,
    poll_secs: float = 15.0,
    grace_period_s: float = 300.0,
) -> RunningOwner:
    """Load the owner-placed models, then take frontends on ``socket_dir``."""
    repository = PlacedRepository(ModelRepository(repository_root), OWNER)
    registry = ModelRegistry(repository, grace_period_s=grace_period_s)
    LatencyGuard(registry)
    dataplane = DataPlane(registry)
    control = grpc.aio.server()
    add_inference_service(InferenceServicer(dataplane, registry), control)
    # Callers were authenticated by the frontend that forwards to this private socket.
    apb_grpc.add_ModelAdminServicer_to_server(AdminServicer(registry, None), control)
    control.add_insecure_port(control_target(socket_dir))
    await _load(registry, control_mode, load_models or [])
    service = OwnerService(dataplane, socket_dir / DATA_SOCKET, repository.model_names)
    await control.start()
    await service.start()
    running = RunningOwner(registry, dataplane, service, control)
    if control_mode == "poll":
        running.poller = RepositoryPoller(registry, poll_secs)
        running.poller.start()
    if os.environ.get(METRICS_DIR_ENV):  # beside workers whose metrics a supervisor sums
        running.mirror = asyncio.get_running_loop().create_task(_mirror_metrics(registry))
    return running


async def _mirror_metrics(registry: ModelRegistry) -> None:
    """Copy this registry's metrics into the supervisor's multiprocess files, where
    the supervisor's scrape sums them with the workers' (a scrape sees them at most
    MIRROR_SECS old: the supervisor asks only its workers to copy theirs at once)."""
    from warpserve.server.workers.metrics import MetricsMirror

    mirror = MetricsMirror(registry, worker=False)
    try:
        while True:
            mirror.flush()
            await asyncio.sleep(MIRROR_SECS)
    finally:
        mirror.flush()  # the last counts, as the owner stops


async def serve(args: argparse.Namespace) -> int:
    running = await start_owner(
        args.model_repository,
        args.socket_dir,
        control_mode=args.model_control_mode,
        load_models=args.load_model,
        poll_secs=args.repository_poll_secs,
        grace_period_s=args.rollback_grace_secs,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    owned = running.registry.repository.model_names()
    log.info("model owner ready: %s", ", ".join(owned) or "no models")
    await stop.wait()
    log.info("model owner stopping: answering the requests received")
    status = await running.stop(args.exit_timeout_secs)
    log.info("model owner stopped")
    return status


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m warpserve.server.owner.process",
        description="The model owner of a multi-process warpserve (started by its "
        "supervisor): loads the owner-placed models once and batches every frontend's "
        "requests for them.",
    )
    p.add_argument("--socket-dir", type=Path, required=True, help="private folder for sockets")
    p.add_argument("--model-repository", type=Path, required=True)
    p.add_argument("--model-control-mode", choices=["none", "poll", "explicit"], default="none")
    p.add_argument("--load-model", action="append", default=[], metavar="NAME")
    p.add_argument("--repository-poll-secs", type=float, default=15.0)
    p.add_argument("--rollback-grace-secs", type=float, default=300.0)
    p.add_argument("--exit-timeout-secs", type=float, default=30.0)
    p.add_argument("--event-loop", choices=("auto", "uvloop", "asyncio"), default="auto")
    p.add_argument("--log-verbose", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.log_verbose else logging.INFO,
        format="%(asctime)s %(levelname).1s owner %(name)s: %(message)s",
        stream=sys.stderr,
    )
    _die_with_parent()
    with asyncio.Runner(loop_factory=event_loop_factory(args.event_loop)) as runner:
        return runner.run(serve(args))


if __name__ == "__main__":
    sys.exit(main())
