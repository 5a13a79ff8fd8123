"""The owner as its own process, as a supervisor runs it: a frontend's requests reach
it; killed, its models answer UNAVAILABLE until it is started again; nothing of the
shared memory outlives a connection or the process."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
from pathlib import Path

import pytest

from tests.server.owner.harness import Frontend, infer, rows, until, write_repo
from warpserve.server.dataplane import DataPlane
from warpserve.server.errors import Unavailable
from warpserve.server.lifecycle.registry import ModelRegistry
from warpserve.server.owner.launcher import OwnerProcess, connect_frontend
from warpserve.server.owner.placement import LOCAL, PlacedRepository
from warpserve.server.repository.repository import ModelRepository

SHM = Path("/dev/shm")


def arenas_held(pid: int) -> int:
    """Shared memory arenas the process holds open (memfd descriptors)."""
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed while we looked
        count += target.startswith("/memfd:warpserve-")
    return count


def test_owner_process_dies_and_returns(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_repo(repo)
    shm_before = set(os.listdir(SHM))
    owner = OwnerProcess(repo, tmp_path / "sockets")
    assert owner.needed()
    owner.start()

    async def main() -> None:
        await asyncio.to_thread(owner.wait_ready, 120)
        proxy = await connect_frontend(owner.socket_dir, repo)
        assert proxy is not None
        registry = ModelRegistry(PlacedRepository(ModelRepository(repo), LOCAL))
        frontend = Frontend(proxy, DataPlane(registry, owner=proxy))
        try:
            await proxy.wait_connected(10)
            assert proxy.owner_pid == owner.pid
            await infer(frontend, rows(2, 0))
            assert arenas_held(owner.pid) >= 1  # positive control: the connection's arena
            os.kill(owner.pid, signal.SIGKILL)
            await asyncio.to_thread(owner.process.wait)  # type: ignore[union-attr]
            await until(lambda: not proxy.connected.is_set())
            with pytest.raises(Unavailable, match="not running"):
                await infer(frontend, rows(1, 1))
            owner.start()  # what the supervisor does
            await proxy.wait_connected(60)
            assert proxy.owner_pid == owner.pid
            await infer(frontend, rows(3, 2))
        finally:
            await proxy.close()
        # The frontend gone, the owner lets go of its arena.
        await until(lambda: arenas_held(owner.pid) == 0)
        gc.collect()  # a mapping still viewed when closed goes with its last view
        assert arenas_held(os.getpid()) == 0

    try:
        asyncio.run(main())
    finally:
        assert owner.stop(30) == 0  # SIGTERM: a clean stop
    assert set(os.listdir(SHM)) - shm_before == set()  # nothing named under /dev/shm
    assert not owner.socket_path.exists()
