"""The model registry: which versions are loaded, which one serves, and swaps.

A (re)load loads new versions beside the serving ones, warms and verifies them,
flips routing in one step, then drains and unloads what the version policy no
longer wants. The replaced version stays loaded for a grace period so that a
rollback needs no load. A failed load or check leaves the old version serving.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from warpserve.protos import model_config_pb2 as mc
from warpserve.server.batching.batcher import Hook
from warpserve.server.errors import (
    FailedPrecondition,
    InvalidInput,
    ModelLoadError,
    ModelNotFound,
    Unavailable,
)
from warpserve.server.lifecycle.router import VersionRouter
from warpserve.server.lifecycle.version import ModelVersion, VersionState
from warpserve.server.repository.repository import ModelRepository, check_model_name

log = logging.getLogger(__name__)


@dataclass
class ServedModel:
    name: str
    versions: dict[int, ModelVersion] = field(default_factory=dict)
    router: VersionRouter = field(default_factory=VersionRouter)
    reason: str = ""            # why the last load of the model failed, if it did
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    retire_tasks: dict[int, asyncio.Task[None]] = field(default_factory=dict)

    def ready_versions(self) -> list[int]:
        return sorted(v for v, mv in self.versions.items() if mv.ready)


@dataclass
class RegistryEvents:
    """Counters the metrics exporter reads."""

    rollouts: dict[str, int] = field(default_factory=dict)    # outcome -> count
    rollbacks: dict[str, int] = field(default_factory=dict)   # reason -> count

    def count(self, table: dict[str, int], key: str) -> None:
        table[key] = table.get(key, 0) + 1


class ModelRegistry:
    def __init__(
        self, repository: ModelRepository, *, grace_period_s: float = 300.0,
        hook: Hook | None = None,
    ) -> None:
        self.repository = repository
        self.grace_period_s = grace_period_s
        self.models: dict[str, ServedModel] = {}
        self.events = RegistryEvents()
        self._hook = hook
        self._closing = False

    # -- lookups -----------------------------------------------------------------------

    def model(self, name: str) -> ServedModel:
        served = self.models.get(name)
        if served is not None:
            return served
        check_model_name(name)
        if name in self.repository.model_names():
            raise Unavailable(
                f"model '{name}' is in the repository but not loaded; load it with "
                "RepositoryModelLoad"
            )
        raise ModelNotFound(f"model '{name}' is not known to this server")

    def resolve(self, name: str, version: str = "", request_id: str = "") -> ModelVersion:
        """The version that should answer an inference request."""
        served = self.model(name)
        if version:
            return self._pinned(served, version)
        chosen = served.router.choose(request_id)
        mv = served.versions.get(chosen) if chosen is not None else None
        if mv is None or not mv.ready:
            raise Unavailable(self._not_ready_reason(served))
        return mv

    def _pinned(self, served: ServedModel, version: str) -> ModelVersion:
        number = parse_version(version)
        mv = served.versions.get(number)
        if mv is None:
            raise ModelNotFound(
                f"model '{served.name}' has no version {number}; loaded: "
                f"{served.ready_versions() or 'none'}"
            )
        if not mv.ready:
            detail = f": {mv.reason}" if mv.reason else ""
            raise Unavailable(
                f"model '{served.name}' version {number} is {mv.state.value}{detail}"
            )
        return mv

    def _not_ready_reason(self, served: ServedModel) -> str:
        states = {v: mv.state.value for v, mv in served.versions.items()}
        detail = f" ({served.reason})" if served.reason else ""
        return f"model '{served.name}' has no ready version; versions: {states or 'none'}{detail}"

    def describe(self, name: str, version: str = "") -> ModelVersion:
        """The version whose metadata and config answer ModelMetadata / ModelConfig."""
        served = self.model(name)
        if version:
            number = parse_version(version)
            if number not in served.versions:
                raise ModelNotFound(f"model '{name}' has no version {number}")
            return served.versions[number]
        active = served.router.active
        if active is not None and active in served.versions:
            return served.versions[active]
        ready = served.ready_versions()
        if ready:
            return served.versions[ready[-1]]
        raise Unavailable(self._not_ready_reason(served))

    def is_ready(self, name: str, version: str = "") -> bool:
        try:
            return self.describe(name, version).ready
        except (ModelNotFound, Unavailable, InvalidInput):
            return False

    def all_versions(self) -> list[ModelVersion]:
        # A snapshot: the metrics thread reads it while the loop mutates the registry.
        return [mv for served in list(self.models.values()) for mv in list(served.versions.values())]

    # -- load / unload -----------------------------------------------------------------

    async def load(
        self, name: str, versions: list[int] | None = None, *, activate: bool = True
    ) -> ServedModel:
        """(Re)load a model per its version policy (or exactly ``versions``); hot swap."""
        if self._closing:
            raise Unavailable("the server is shutting down; no loads accepted")
        check_model_name(name)
        served = self.models.setdefault(name, ServedModel(name))
        async with served.lock:
            await self._load_locked(served, versions, activate)
        return served

    async def _load_locked(
        self, served: ServedModel, versions: list[int] | None, activate: bool
    ) -> None:
        try:
            config = self.repository.config(served.name)
            folders = self._wanted_folders(served.name, config, versions)
        except (ModelLoadError, ModelNotFound) as exc:
            served.reason = str(exc)
            self._drop_if_empty(served)
            raise
        fresh = [
            ModelVersion(served.name, f.version, f.path, _copy(config), hook=self._hook)
            for f in folders if not _serving(served.versions.get(f.version))
        ]
        for mv in fresh:
            self._replace_entry(served, mv)
        await asyncio.gather(*(mv.load() for mv in fresh))
        failed = [mv for mv in fresh if mv.state is VersionState.FAILED]
        wanted = {f.version for f in folders}
        if failed:
            served.reason = "; ".join(f"version {mv.version}: {mv.reason}" for mv in failed)
            self.events.count(self.events.rollouts, "failed")
            raise ModelLoadError(
                f"model '{served.name}' load failed, the serving version is unchanged: "
                f"{served.reason}"
            )
        served.reason = ""
        if activate and wanted:
            self._activate(served, max(wanted))
            self._retire_unwanted(served, wanted)

    def _wanted_folders(self, name: str, config: mc.ModelConfig, versions: list[int] | None):  # type: ignore[no-untyped-def]
        if versions:
            return [self.repository.version_folder(name, v, config) for v in versions]
        folders = self.repository.versions_to_serve(name, config)
        if not folders:
            raise ModelLoadError(
                f"model '{name}' has no complete version folder that its version policy "
                "selects; add <model>/<N>/ with the model file"
            )
        return folders

    def _replace_entry(self, served: ServedModel, mv: ModelVersion) -> None:
        old = served.versions.get(mv.version)
        if old is not None and old.state not in (VersionState.UNLOADED, VersionState.FAILED):
            # Same version number reloaded: the old incarnation retires in the background.
            self._spawn_retire(served, old, delay=0.0)
        served.versions[mv.version] = mv

    def _activate(self, served: ServedModel, version: int) -> None:
        before = served.router.active
        served.router.switch(version)
        task = served.retire_tasks.pop(version, None)
        if task is not None:
            task.cancel()
        if before != version:
            self.events.count(self.events.rollouts, "succeeded")
            log.info("model '%s' now serves version %d (was %s)", served.name, version, before)

    def _retire_unwanted(self, served: ServedModel, wanted: set[int]) -> None:
        for version, mv in list(served.versions.items()):
            if version in wanted or not _serving(mv):
                continue
            delay = self.grace_period_s if version == served.router.previous else 0.0
            self._spawn_retire(served, mv, delay)

    def _spawn_retire(self, served: ServedModel, mv: ModelVersion, delay: float) -> None:
        async def retire() -> None:
            if delay:
                await asyncio.sleep(delay)
            if served.versions.get(mv.version) is mv and mv.version == served.router.active:
                return  # rolled back to it meanwhile
            if served.versions.get(mv.version) is mv:
                served.router.forget(mv.version)
            await mv.drain_and_unload()

        previous = served.retire_tasks.pop(mv.version, None)
        if previous is not None and delay:
            previous.cancel()
        task = asyncio.get_running_loop().create_task(retire())
        served.retire_tasks[mv.version] = task
        task.add_done_callback(lambda t: _log_task_error(t, served.name, mv.version))

    async def unload(self, name: str, version: int | None = None) -> None:
        """Drain and unload one version, or every version of the model."""
        served = self.model(name)
        async with served.lock:
            targets = [
                mv for v, mv in served.versions.items()
                if (version is None or v == version) and _serving(mv)
            ]
            if version is not None and not targets:
                raise ModelNotFound(f"model '{name}' has no loaded version {version}")
            for mv in targets:
                served.router.forget(mv.version)
                task = served.retire_tasks.pop(mv.version, None)
                if task is not None:
                    task.cancel()
            if served.router.active is None and served.ready_versions():
                remaining = [v for v in served.ready_versions() if v not in {t.version for t in targets}]
                if remaining:
                    served.router.switch(remaining[-1])
            await asyncio.gather(*(mv.drain_and_unload() for mv in targets))

    def _drop_if_empty(self, served: ServedModel) -> None:
        if not served.versions:
            self.models.pop(served.name, None)

    # -- rollback and traffic ----------------------------------------------------------

    def rollback(self, name: str, reason: str = "manual") -> int:
        """Route every unpinned request to the previous version, without a load."""
        served = self.model(name)
        previous = served.router.previous
        mv = served.versions.get(previous) if previous is not None else None
        if mv is None or not mv.ready:
            raise FailedPrecondition(
                f"model '{name}' has no loaded previous version to roll back to "
                f"(previous: {previous}); load one with a rollout instead"
            )
        current = served.router.active
        self._activate(served, mv.version)
        self.events.count(self.events.rollbacks, reason)
        if current is not None and current in served.versions:
            self._spawn_retire(served, served.versions[current], self.grace_period_s)
        log.warning("model '%s' rolled back to version %d (%s)", name, mv.version, reason)
        return mv.version

    async def rollout(self, name: str, version: int, canary_percent: float = 0.0) -> None:
        """Load ``version`` beside the serving one, verify it, then route to it.

        With ``canary_percent`` it takes only that share of unpinned traffic until
        ``promote``; otherwise it takes all of it at once.
        """
        if not 0.0 <= canary_percent < 100.0:
            raise InvalidInput(f"canary percent {canary_percent} must lie in [0, 100)")
        served = await self.load(name, [version], activate=False)
        async with served.lock:
            if canary_percent > 0 and served.router.active not in (None, version):
                served.router.canary = {version: canary_percent / 100.0}
                self.events.count(self.events.rollouts, "canary")
                return
            self._activate(served, version)
            self._retire_unwanted(served, {version})

    def promote(self, name: str) -> int:
        """Give the canary every unpinned request; the old version stays for rollback."""
        served = self.model(name)
        canaries = sorted(served.router.canary, key=served.router.canary.__getitem__)
        if not canaries:
            raise FailedPrecondition(f"model '{name}' has no canary version to promote")
        version = canaries[-1]
        self._activate(served, version)
        self._retire_unwanted(served, {version})
        return version

    def set_split(self, name: str, weights: dict[int, float]) -> None:
        """Split unpinned traffic between loaded versions by weight."""
        served = self.model(name)
        if not weights or any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
            raise InvalidInput("traffic split needs non-negative weights that sum above 0")
        for version in weights:
            mv = served.versions.get(version)
            if mv is None or not mv.ready:
                raise FailedPrecondition(
                    f"model '{name}' version {version} is not loaded and ready; roll it out "
                    "first"
                )
        total = sum(weights.values())
        router = served.router
        if router.active not in weights or weights[router.active] == 0:
            router.switch(max(weights, key=weights.__getitem__))
        router.canary = {
            v: w / total for v, w in weights.items() if v != router.active and w > 0
        }

    def set_shadow(self, name: str, version: int, percent: float) -> None:
        """Mirror ``percent`` of unpinned requests to ``version``; 0 or version 0 stops."""
        served = self.model(name)
        if version == 0 or percent <= 0:
            served.router.shadow_version, served.router.shadow_share = None, 0.0
            return
        mv = served.versions.get(version)
        if mv is None or not mv.ready:
            raise FailedPrecondition(f"model '{name}' version {version} is not loaded and ready")
        if percent > 100:
            raise InvalidInput(f"shadow percent {percent} must lie in (0, 100]")
        served.router.shadow_version, served.router.shadow_share = version, percent / 100.0

    # -- shutdown ----------------------------------------------------------------------

    async def close(self) -> None:
        self._closing = True
        for served in self.models.values():
            for task in served.retire_tasks.values():
                task.cancel()
        await asyncio.gather(*(mv.drain_and_unload() for mv in list(self.all_versions())))


def parse_version(version: str) -> int:
    try:
        number = int(version)
    except ValueError:
        number = 0
    if number <= 0:
        raise InvalidInput(f"model version {version!r} is not a positive integer")
    return number


def _serving(mv: ModelVersion | None) -> bool:
    return mv is not None and mv.state in (
        VersionState.LOADING, VersionState.WARMING, VersionState.READY
    )


def _copy(config: mc.ModelConfig) -> mc.ModelConfig:
    copy = mc.ModelConfig()
    copy.CopyFrom(config)
    return copy


def _log_task_error(task: asyncio.Task[None], name: str, version: int) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("retiring model '%s' version %d failed: %s", name, version, task.exception())

