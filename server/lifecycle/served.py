"""One served model: its loaded versions (and which one a request or a description
names), its router, and the timers that retire versions.

A replaced version is retired after a grace period (so rollback needs no load); a
version that is routed to again before its timer fires stays. Retiring drains the
version's queue and running requests, then unloads it.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from warpserve.server.errors import (
    UNKNOWN_MODEL,
    FailedPrecondition,
    InvalidInput,
    ModelNotFound,
    Unavailable,
)
from warpserve.server.lifecycle.router import VersionRouter
from warpserve.server.lifecycle.version import ModelVersion, VersionState

log = logging.getLogger(__name__)


def parse_version(version: str) -> int:
    try:
        number = int(version)
    except ValueError:
        number = 0
    if number <= 0:
        raise InvalidInput(f"model version {version!r} is not a positive integer")
    return number


def is_serving(mv: ModelVersion | None) -> bool:
    """Loading, warming or ready: neither on its way out nor gone."""
    return mv is not None and mv.state in (
        VersionState.LOADING,
        VersionState.WARMING,
        VersionState.READY,
    )


@dataclass
class ServedModel:
    name: str
    versions: dict[int, ModelVersion] = field(default_factory=dict)
    router: VersionRouter = field(default_factory=VersionRouter)
    reason: str = ""  # why the last load of the model failed, if it did
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    retire_tasks: dict[int, asyncio.Task[None]] = field(default_factory=dict)
    # Versions a latency guard keeps loaded (as the baseline) until its verdict.
    holds: dict[int, asyncio.Event] = field(default_factory=dict)

    def ready_versions(self) -> list[int]:
        return sorted(v for v, mv in self.versions.items() if mv.ready)

    def pinned(self, version: str) -> ModelVersion:
        """The version a request names, ready to answer it."""
        number = parse_version(version)
        mv = self.versions.get(number)
        if mv is None:
            raise ModelNotFound(
                f"{UNKNOWN_MODEL}: '{self.name}' version {number} is not found; loaded: "
                f"{self.ready_versions() or 'none'}"
            )
        if not mv.ready:
            detail = f": {mv.reason}" if mv.reason else ""
            raise Unavailable(
                f"{UNKNOWN_MODEL}: '{self.name}' version {number} is not at ready state "
                f"({mv.state.value}){detail}"
            )
        return mv

    def not_ready_reason(self) -> str:
        states = {v: mv.state.value for v, mv in self.versions.items()}
        detail = f" ({self.reason})" if self.reason else ""
        return (
            f"{UNKNOWN_MODEL}: '{self.name}' has no available versions; versions: "
            f"{states or 'none'}{detail}"
        )

    def described_by(self, version: str = "") -> ModelVersion:
        """The version whose metadata and config describe the model: ``version``, else
        the active one, else the newest ready one."""
        if version:
            number = parse_version(version)
            if number not in self.versions:
                raise ModelNotFound(f"{UNKNOWN_MODEL}: '{self.name}' version {number} is not found")
            return self.versions[number]
        active = self.router.active
        if active is not None and active in self.versions:
            return self.versions[active]
        ready = self.ready_versions()
        if ready:
            return self.versions[ready[-1]]
        raise Unavailable(self.not_ready_reason())

    def require_ready(self, version: int) -> ModelVersion:
        mv = self.versions.get(version)
        if mv is None or not mv.ready:
            state = mv.state.value if mv is not None else "not loaded"
            raise FailedPrecondition(
                f"model '{self.name}' version {version} is {state}, not READY; load it "
                "first (warpserve models load MODEL --version N)"
            )
        return mv

    def clear_failed(self, failed: list[ModelVersion]) -> None:
        """Unload FAILED versions: they hold nothing loaded, so this only takes them out
        of the FAILED state (status, RepositoryIndex, metrics) until loaded again."""
        for mv in failed:
            mv.state = VersionState.UNLOADED
            log.info("model '%s' version %d: failed load cleared", self.name, mv.version)
        if not any(mv.state is VersionState.FAILED for mv in self.versions.values()):
            self.reason = ""

    def replace_entry(self, mv: ModelVersion) -> None:
        old = self.versions.get(mv.version)
        if old is not None and old.state not in (VersionState.UNLOADED, VersionState.FAILED):
            # Same version number reloaded: the old incarnation retires in the background.
            self.spawn_retire(old, delay=0.0)
        self.versions[mv.version] = mv

    def retire_unwanted(self, wanted: set[int], grace_period_s: float) -> None:
        """Retire serving versions outside ``wanted`` that no traffic reaches; the
        rollback target after the grace period, the others at once."""
        for version, mv in list(self.versions.items()):
            if version in wanted or not is_serving(mv) or self.router.routes_to(version):
                continue
            delay = grace_period_s if version == self.router.previous else 0.0
            self.spawn_retire(mv, delay)

    def hold(self, version: int) -> None:
        """Keep ``version`` loaded past its grace period until ``release``."""
        self.holds.setdefault(version, asyncio.Event())

    def release(self, version: int) -> None:
        held = self.holds.pop(version, None)
        if held is not None:
            held.set()

    def spawn_retire(self, mv: ModelVersion, delay: float) -> None:
        version = mv.version

        async def retire() -> None:
            if delay:
                await asyncio.sleep(delay)
            held = self.holds.get(version)
            if held is not None:
                await held.wait()
            if self.versions.get(version) is mv:
                if self.router.routes_to(version):
                    return  # routed to again meanwhile (rollback, split, shadow)
                self.router.forget(version)
            await mv.drain_and_unload()

        self.cancel_retire(version)
        task = asyncio.get_running_loop().create_task(retire())
        self.retire_tasks[version] = task
        task.add_done_callback(lambda t: self._retired(t, version))

    def cancel_retire(self, version: int) -> None:
        # Cancelling only stops a pending timer: a drain already under way is shielded.
        task = self.retire_tasks.pop(version, None)
        if task is not None:
            task.cancel()

    def _retired(self, task: asyncio.Task[None], version: int) -> None:
        if self.retire_tasks.get(version) is task:
            self.retire_tasks.pop(version)
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "retiring model '%s' version %d failed: %s", self.name, version, task.exception()
            )
