"""The model owner's hooks for a multi-process server: the supervisor starts, watches
and stops the owner process; each frontend process attaches to it.

The supervisor (``warpserve serve --workers N``)::

    args = owner_args(mode, load_models, poll_secs, grace_secs, exit_timeout_s, event_loop)
    owner = OwnerProcess(repository, runtime_dir / "owner", args)
    if owner.needed():                       # some model is owner-placed
        owner.start()
        await asyncio.to_thread(owner.wait_ready, 300)
        keeper = asyncio.create_task(keep(owner, stopping))   # restarts it when it dies
    ... start the frontends, telling them owner.socket_dir ...
    ... after the frontends stopped (they drain through it):
    stopping.set()
    await asyncio.to_thread(owner.stop, exit_timeout_s)
    await keeper

Each frontend, before it loads anything::

    link = await OwnerLink.attach(socket_dir, repository)     # None: nothing owner-placed
    registry = ModelRegistry(link.repository if link else repository, ...)
    dataplane = DataPlane(registry, poller, owner=link.proxy if link else None)
    link.forward(inference_servicer); link.forward_admin(admin_servicer)  # before adding
    ...
    await link.close()                       # at shutdown, after its calls are answered

A supervisor's own loads and its repository poller leave owner-placed models alone
(``owner_placed``): the owner loads them, and polls in poll mode, itself.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from warpserve.server.owner.forwarding import forward_owned, forward_owned_admin
from warpserve.server.owner.placement import LOCAL, PlacedRepository, owner_placed
from warpserve.server.owner.process import DATA_SOCKET, control_target
from warpserve.server.owner.proxy import OwnerProxy
from warpserve.server.repository.repository import ModelRepository

log = logging.getLogger(__name__)

# An owner that dies this soon after its start is restarted after a pause that doubles
# each time (up to MAX_BACKOFF_S): a model that crashes it on load must not fork-loop.
QUICK_DEATH_S = 10.0
MAX_BACKOFF_S = 30.0


def owner_args(
    control_mode: str,
    load_models: Sequence[str],
    poll_secs: float,
    grace_secs: float,
    exit_timeout_secs: float,
    event_loop: str,
) -> list[str]:
    """The owner's command line from the server's settings."""
    args = [
        *("--model-control-mode", control_mode),
        *("--repository-poll-secs", str(poll_secs)),
        *("--rollback-grace-secs", str(grace_secs)),
        *("--exit-timeout-secs", str(exit_timeout_secs)),
        *("--event-loop", event_loop),
    ]
    for name in load_models:
        args += ["--load-model", name]
    return args


class OwnerProcess:
    def __init__(
        self,
        repository: Path,
        socket_dir: Path,
        extra_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.repository = repository
        self.socket_dir = socket_dir
        self.extra_args = list(extra_args)
        self.env = env or {}  # added to this process's environment
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def socket_path(self) -> Path:
        return self.socket_dir / DATA_SOCKET

    def needed(self) -> bool:
        return bool(owner_placed(ModelRepository(self.repository)))

    def start(self) -> None:
        # Only this user may connect: the sockets take pickled messages (see ``wire``).
        self.socket_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        command = [
            sys.executable,
            "-m",
            "warpserve.server.owner.process",
            "--socket-dir",
            str(self.socket_dir),
            "--model-repository",
            str(self.repository),
            *self.extra_args,
        ]
        self.process = subprocess.Popen(command, env={**os.environ, **self.env})
        self.starts += 1

    def wait_ready(self, timeout_s: float) -> None:
        """Until the owner takes connections (its models are loaded); raises
        RuntimeError if it exits first, TimeoutError when it takes too long."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.exited():
                raise RuntimeError(f"the model owner exited with status {self.returncode}")
            if _accepts(self.socket_path):
                return
            time.sleep(0.05)
        raise TimeoutError(f"the model owner was not ready after {timeout_s:g} s")

    @property
    def pid(self) -> int:
        return self.process.pid if self.process is not None else 0

    @property
    def returncode(self) -> int | None:
        return self.process.poll() if self.process is not None else None

    def exited(self) -> bool:
        return self.process is not None and self.process.poll() is not None

    def stop(self, timeout_s: float) -> int | None:
        """SIGTERM (it answers what it received, then unloads), SIGKILL after
        ``timeout_s``; the exit status."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return process.returncode


async def keep(
    owner: OwnerProcess, stopping: asyncio.Event, on_exit: Callable[[int], None] | None = None
) -> None:
    """Restart the owner whenever it dies, until ``stopping`` is set. Meanwhile the
    frontends answer UNAVAILABLE for its models and reconnect once it is back.
    ``on_exit`` is told each process's pid as it ends."""
    backoff = 1.0
    while not stopping.is_set():
        process = owner.process
        assert process is not None, "start the owner before keeping it"
        started = time.monotonic()
        status = await asyncio.to_thread(process.wait)
        if on_exit is not None:
            on_exit(process.pid)
        if stopping.is_set():
            return
        log.error("the model owner (pid %d) exited with %d; starting it again", process.pid, status)
        if time.monotonic() - started < QUICK_DEATH_S:
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_S)
        else:
            backoff = 1.0
        if not stopping.is_set():
            owner.start()


def _accepts(path: Path) -> bool:
    if not path.exists():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


@dataclass
class OwnerLink:
    """A frontend's attachment to the owner: the proxy for inference, the channel for
    everything else, and the repository as the frontend sees it (its own models)."""

    proxy: OwnerProxy
    channel: grpc.aio.Channel
    repository: PlacedRepository

    @classmethod
    async def attach(cls, socket_dir: Path, repository: Path) -> OwnerLink | None:
        """Connected when the owner is up (else it keeps trying in the background);
        None when no model of the repository is owner-placed."""
        whole = ModelRepository(repository)
        owned = owner_placed(whole)
        if not owned:
            return None
        proxy = OwnerProxy(socket_dir / DATA_SOCKET, owned)
        await proxy.start()
        channel = grpc.aio.insecure_channel(control_target(socket_dir))
        return cls(proxy, channel, PlacedRepository(whole, LOCAL))

    def forward(self, servicer: Any) -> None:
        forward_owned(servicer, self.proxy, self.channel)

    def forward_admin(self, servicer: Any) -> None:
        forward_owned_admin(servicer, self.proxy, self.channel)

    async def close(self) -> None:
        await self.proxy.close()
        await self.channel.close()
