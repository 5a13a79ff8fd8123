"""Poll mode: reload models whose folders changed, load new ones, unload removed ones.

A change is acted on only once two consecutive polls saw the same fingerprint, so
a version folder still being written (without the marker or rename) is not read.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from warpserve.server.errors import WarpserveError
from warpserve.server.lifecycle.registry import ModelRegistry

log = logging.getLogger(__name__)

Fingerprint = tuple[tuple[str, int, int], ...]


# Written by the server itself beside a version (the latency guard's evidence); a
# change there is not a new model.
SERVER_FOLDERS = frozenset({"guard"})


def fingerprint(model_dir: Path) -> Fingerprint | None:
    """What the folder holds (path, size, mtime per file); None when a folder in it
    went away while it was read (a staging folder renamed into place): it is changing."""
    entries = []
    try:
        paths = sorted(model_dir.rglob("*"))
    except OSError:
        return None
    for path in paths:
        parts = path.relative_to(model_dir).parts
        if len(parts) > 1 and parts[0].isdigit() and parts[1] in SERVER_FOLDERS:
            continue
        try:
            stat = path.stat()
        except FileNotFoundError:
            continue  # removed while we looked
        if path.is_file():
            entries.append((str(path.relative_to(model_dir)), stat.st_size, stat.st_mtime_ns))
    return tuple(entries)


class RepositoryPoller:
    def __init__(self, registry: ModelRegistry, interval_s: float) -> None:
        self.registry = registry
        self.interval_s = interval_s
        self._seen: dict[str, Fingerprint | None] = {}
        self._pending: dict[str, Fingerprint] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        for name in self.registry.repository.model_names():
            self._seen[name] = fingerprint(self.registry.repository.root / name)
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.poll_once()
            except Exception:  # the next poll tries again: polling must not stop
                log.exception("poll: reading the repository failed")

    async def poll_once(self) -> None:
        repo = self.registry.repository
        names = set(repo.model_names())
        for name in sorted(names):
            current = fingerprint(repo.root / name)
            if current is None:  # being written: look again next time
                self._pending.pop(name, None)
                continue
            if current == self._seen.get(name):
                self._pending.pop(name, None)
                continue
            if self._pending.get(name) != current:
                self._pending[name] = current  # changed: wait for it to settle
                continue
            self._pending.pop(name, None)
            self._seen[name] = current
            await self._load(name)
        for name in sorted(set(self._seen) - names):
            self._seen.pop(name)
            if name in self.registry.models:
                await self._unload(name)

    async def _load(self, name: str) -> None:
        try:
            await self.registry.load(name)
        except WarpserveError as exc:
            log.error("poll: model '%s' not (re)loaded: %s", name, exc)

    async def _unload(self, name: str) -> None:
        try:
            await self.registry.unload(name)
        except WarpserveError as exc:
            log.error("poll: model '%s' not unloaded: %s", name, exc)
