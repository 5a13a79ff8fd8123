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

from tests.server.owner.harness import Frontend, infer, rows, write_repo
from tests.server.progress import until
from warpserve.server.dataplane import DataPlane
from warpserve.server.errors import Unavailable
from warpserve.server.lifecycle.registry import ModelRegistry
from warpserve.server.owner.launcher import OwnerLink, OwnerProcess, keep

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
        stopping = asyncio.Event()
        keeper = asyncio.create_task(keep(owner, stopping))  # the supervisor's watch
        link = await OwnerLink.attach(owner.socket_dir, repo)
        assert link is not None
        frontend = Frontend(link.proxy, DataPlane(ModelRegistry(link.repository), owner=link.proxy))
        try:
            await link.proxy.wait_connected(10)
            first = owner.pid
            assert link.proxy.owner_pid == first
            await infer(frontend, rows(2, 0))
            assert arenas_held(first) >= 1  # positive control: the connection's arena
            os.kill(first, signal.SIGKILL)
            await until(lambda: not link.proxy.connected.is_set())
            with pytest.raises(Unavailable, match="not running"):
                await infer(frontend, rows(1, 1))
            await link.proxy.wait_connected(120)  # restarted by the keeper
            assert owner.starts == 2 and link.proxy.owner_pid == owner.pid != first
            await infer(frontend, rows(3, 2))
        finally:
            stopping.set()
            await link.close()
        # The frontend gone, the owner lets go of its arena.
        await until(lambda: arenas_held(owner.pid) == 0)
        gc.collect()  # a mapping still viewed when closed goes with its last view
        assert arenas_held(os.getpid()) == 0
        assert owner.stop(30) == 0  # SIGTERM: a clean stop
        await keeper

    try:
        asyncio.run(main())
    finally:
        owner.stop(30)
    assert set(os.listdir(SHM)) - shm_before == set()  # nothing named under /dev/shm
    assert not owner.socket_path.exists()
