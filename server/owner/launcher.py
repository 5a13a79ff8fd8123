"""Starting and stopping the model owner from a supervisor, and the frontend's hook.

The supervisor of a multi-process server (``warpserve serve --workers N``)::

    owner = OwnerProcess(repository, socket_dir, extra_args)   # socket_dir: mode 0700
    if owner.needed():          # some model is owner-placed
        owner.start()
        owner.wait_ready(timeout_s)
    ...                         # start the frontends with owner.socket_dir
    if owner.exited():          # in its watch loop: died -> start again
        owner.start()
    owner.stop(timeout_s)       # after the frontends stopped (they drain through it)

and each frontend, before it serves::

    proxy = await connect_frontend(socket_dir, repository)   # None: no owner-placed model
    DataPlane(registry, poller, owner=proxy)
    ... PlacedRepository(repository, LOCAL) as the frontend registry's repository ...
    await proxy.close()         # at shutdown, after its calls are answered
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from warpserve.server.owner.placement import owner_placed
from warpserve.server.owner.process import DATA_SOCKET
from warpserve.server.owner.proxy import OwnerProxy
from warpserve.server.repository.repository import ModelRepository


class OwnerProcess:
    def __init__(self, repository: Path, socket_dir: Path, extra_args: Sequence[str] = ()) -> None:
        self.repository = repository
        self.socket_dir = socket_dir
        self.extra_args = list(extra_args)  # --model-control-mode, --load-model ...
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def socket_path(self) -> Path:
        return self.socket_dir / DATA_SOCKET

    def needed(self) -> bool:
        return bool(owner_placed(ModelRepository(self.repository)))

    def start(self) -> None:
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
        self.process = subprocess.Popen(command)
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
        """SIGTERM, then SIGKILL after ``timeout_s``; the exit status."""
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


def _accepts(path: Path) -> bool:
    if not path.exists():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


async def connect_frontend(socket_dir: Path, repository: Path) -> OwnerProxy | None:
    """A frontend's proxy to the owner, connected when the owner is up (else it keeps
    trying in the background); None when no model of the repository is owner-placed."""
    owned = owner_placed(ModelRepository(repository))
    if not owned:
        return None
    proxy = OwnerProxy(socket_dir / DATA_SOCKET, owned)
    await proxy.start()
    return proxy


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
