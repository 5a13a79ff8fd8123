"""The model registry: which versions are loaded, which one serves, and swaps.

A (re)load loads new versions beside the serving ones, warms and verifies them,
flips routing in one step, then drains and unloads what the version policy no
longer wants. The replaced version stays loaded for a grace period so that a
rollback needs no load. A failed load or check leaves the old version serving.

Routing changes (rollback, promote, split, shadow) are synchronous: one step on
the event loop, so no request ever sees half of one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from warpserve.protos import model_config_pb2 as mc
from warpserve.server.busypoll import BusyPoller
from warpserve.server.errors import (
    UNKNOWN_MODEL,
    GoldenMismatch,
    InvalidInput,
    ModelLoadError,
    ModelNotFound,
    Unavailable,
)
from warpserve.server.lifecycle.events import RegistryEvents
from warpserve.server.lifecycle.guarding import ChangeListener, ServingChange, ServingMode
from warpserve.server.lifecycle.served import ServedModel, is_serving
from warpserve.server.lifecycle.traffic import TrafficChanges
from warpserve.server.lifecycle.version import (
    LifecycleHook,
    ModelVersion,
    VersionState,
    at_point,
)
from warpserve.server.repository.repository import (
    ModelRepository,
    VersionFolder,
    check_model_name,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prepared:
    """What a prepare loaded: the versions wanted, and those it loaded anew."""

    wanted: list[int]
    fresh: list[int]


class ModelRegistry(TrafficChanges):
    def __init__(
        self,
        repository: ModelRepository,
        *,
        grace_period_s: float = 300.0,
        hook: LifecycleHook | None = None,
        poller: BusyPoller | None = None,
    ) -> None:
        self.repository = repository
        self.grace_period_s = grace_period_s
        self.models: dict[str, ServedModel] = {}
        self.events = RegistryEvents()
        self.hook = hook  # named points for tests; versions loaded later pick it up
        self.poller = poller  # the loop's busy polling, told when batches run on threads
        # Told when a new version starts serving beside the one it replaces (the guard).
        self.on_serving: ChangeListener | None = None
        self._closing = False

    # -- lookups -----------------------------------------------------------------------

    def model(self, name: str) -> ServedModel:
        served = self.models.get(name)
        if served is not None:
            return served
        check_model_name(name)
        if name in self.repository.model_names():
            raise Unavailable(
                f"{UNKNOWN_MODEL}: '{name}' is in the repository but not loaded; load it "
                "with RepositoryModelLoad"
            )
        raise ModelNotFound(
            f"{UNKNOWN_MODEL}: '{name}' is not known to this server; RepositoryIndex lists "
            "the models it has"
        )

    def resolve(self, name: str, version: str = "", request_id: str = "") -> ModelVersion:
        """The version that should answer an inference request."""
        served = self.model(name)
        if version:
            return served.pinned(version)
        chosen = served.router.choose(request_id)
        mv = served.versions.get(chosen) if chosen is not None else None
        if mv is None or not mv.ready:
            raise Unavailable(served.not_ready_reason())
        return mv

    def describe(self, name: str, version: str = "") -> ModelVersion:
        """The version whose metadata and config answer ModelMetadata / ModelConfig."""
        return self.model(name).described_by(version)

    def is_ready(self, name: str, version: str = "") -> bool:
        try:
            return self.describe(name, version).ready
        except (ModelNotFound, Unavailable, InvalidInput):
            return False

    def all_versions(self) -> list[ModelVersion]:
        # A snapshot: the metrics thread reads it while the loop mutates the registry.
        served = list(self.models.values())
        return [mv for model in served for mv in list(model.versions.values())]

    # -- load / unload -----------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _locked(self, name: str, *, create: bool = False) -> AsyncIterator[ServedModel]:
        """The model's entry with its lock held; retries if a full unload dropped it."""
        while True:
            if create:
                if self._closing:
                    raise Unavailable("the server is shutting down; no loads accepted")
                served = self.models.setdefault(check_model_name(name), ServedModel(name))
            else:
                served = self.model(name)
            async with served.lock:
                if self.models.get(name) is served:
                    yield served
                    return

    async def load(
        self, name: str, versions: list[int] | None = None, *, activate: bool = True
    ) -> ServedModel:
        """(Re)load a model per its version policy (or exactly ``versions``); hot swap.

        With ``activate=False`` the versions load beside the serving one without
        taking traffic (unless nothing serves yet).
        """
        async with self._locked(name, create=True) as served:
            wanted = await self._load_locked(served, versions)
            await self._commit_load_locked(served, wanted, activate)
        return served

    # Two phases, for a server of several processes: every process loads and verifies
    # (prepare) before any routes to the new versions (commit), and a failure anywhere
    # unloads what the others loaded (abort), so the old version keeps serving everywhere.

    async def prepare(self, name: str, versions: list[int] | None = None) -> Prepared:
        """Load and verify the wanted versions beside the serving ones; route nothing."""
        async with self._locked(name, create=True) as served:
            before = {v for v, mv in served.versions.items() if is_serving(mv)}
            wanted = await self._load_locked(served, versions)
            return Prepared(sorted(wanted), sorted(wanted - before))

    async def commit_load(self, name: str, wanted: list[int], activate: bool = True) -> None:
        async with self._locked(name) as served:
            await self._commit_load_locked(served, set(wanted), activate)

    async def commit_rollout(self, name: str, version: int, canary_percent: float) -> None:
        async with self._locked(name) as served:
            await self._commit_rollout_locked(served, version, canary_percent)

    async def abort(self, name: str, fresh: list[int]) -> None:
        """Unload versions a prepare loaded here that another process failed to load."""
        for version in fresh:
            with contextlib.suppress(ModelNotFound, Unavailable):  # already gone
                await self.unload(name, version)

    async def _load_locked(self, served: ServedModel, versions: list[int] | None) -> set[int]:
        try:
            config = self.repository.config(served.name)
            folders = self._wanted_folders(served.name, config, versions)
        except (ModelLoadError, ModelNotFound) as exc:
            served.reason = str(exc)
            self._drop_if_empty(served)
            raise
        fresh = [
            ModelVersion(
                served.name,
                f.version,
                f.path,
                _copy(config),
                hook=self.hook,
                poller=self.poller,
            )
            for f in folders
            if not is_serving(served.versions.get(f.version))
        ]
        for mv in fresh:
            served.replace_entry(mv)
        await asyncio.gather(*(mv.load() for mv in fresh))
        self._check_loaded(served, fresh)
        return {f.version for f in folders}

    async def _commit_load_locked(
        self, served: ServedModel, wanted: set[int], activate: bool
    ) -> None:
        if activate or served.router.active is None:
            await at_point(self.hook, "swapping")
            self._activate(served, max(wanted))
            served.retire_unwanted(wanted, self.grace_period_s)

    def _wanted_folders(
        self, name: str, config: mc.ModelConfig, versions: list[int] | None
    ) -> list[VersionFolder]:
        if versions:
            return [self.repository.version_folder(name, v, config) for v in versions]
        folders = self.repository.versions_to_serve(name, config)
        if not folders:
            raise ModelLoadError(
                f"model '{name}' has no complete version folder that its version policy "
                "selects; add <model>/<N>/ with the model file"
            )
        return folders

    def _check_loaded(self, served: ServedModel, fresh: list[ModelVersion]) -> None:
        failed = [mv for mv in fresh if not mv.ready]
        if not failed:
            served.reason = ""
            return
        for mv in failed:
            self.events.count(self.events.rollouts, served.name, mv.version, "failed")
        served.reason = "; ".join(
            f"version {mv.version}: {mv.reason or mv.state.value}" for mv in failed
        )
        # FAILED_PRECONDITION when every failure is a golden mismatch (the folder must
        # change); INTERNAL when anything raised.
        golden = all(mv.failure is GoldenMismatch for mv in failed)
        raise (GoldenMismatch if golden else ModelLoadError)(
            f"model '{served.name}' load failed, the serving version is unchanged: {served.reason}"
        )

    def _activate(
        self, served: ServedModel, version: int, outcome: str | None = "succeeded"
    ) -> None:
        before = served.router.active
        served.router.switch(version)
        served.cancel_retire(version)
        if before != version:
            if outcome:
                self.events.count(self.events.rollouts, served.name, version, outcome)
            log.info("model '%s' now serves version %d (was %s)", served.name, version, before)
            if outcome == "succeeded" and before is not None:
                self._announce(served.name, version, before, ServingMode.FULL)

    def _announce(self, name: str, candidate: int, baseline: int, mode: ServingMode) -> None:
        if self.on_serving is not None:
            self.on_serving(ServingChange(name, candidate, baseline, mode))

    async def unload(self, name: str, version: int | None = None) -> None:
        """Drain and unload one version, or every version of the model.

        Requests already queued or running finish; new ones are refused at once. A
        FAILED version is cleared (it holds nothing loaded).
        A model with nothing left loaded leaves the registry (ServerReady ignores it).
        """
        async with self._locked(name) as served:
            chosen = [mv for v, mv in served.versions.items() if version in (None, v)]
            targets = [mv for mv in chosen if is_serving(mv)]
            failed = [mv for mv in chosen if mv.state is VersionState.FAILED]
            if version is not None and not targets and not failed:
                raise ModelNotFound(
                    f"model '{name}' has no loaded version {version}; loaded: "
                    f"{served.ready_versions() or 'none'}"
                )
            served.clear_failed(failed)
            for mv in targets:
                served.router.forget(mv.version)
                served.cancel_retire(mv.version)
            self._route_to_remaining(served, {mv.version for mv in targets})
            await asyncio.gather(*(mv.drain_and_unload() for mv in targets))
            if not any(is_serving(mv) for mv in served.versions.values()):
                self.models.pop(name, None)

    def _route_to_remaining(self, served: ServedModel, leaving: set[int]) -> None:
        remaining = [v for v in served.ready_versions() if v not in leaving]
        if served.router.active is None and remaining:
            self._activate(served, remaining[-1], outcome=None)

    def _drop_if_empty(self, served: ServedModel) -> None:
        if not served.versions:
            self.models.pop(served.name, None)

    # -- rollouts ----------------------------------------------------------------------

    async def rollout(self, name: str, version: int, canary_percent: float = 0.0) -> None:
        """Load ``version`` beside the serving one, verify it, then route to it.

        With ``canary_percent`` it takes only that share of unpinned traffic until
        ``promote``; otherwise it takes all of it at once.
        """
        check_rollout(version, canary_percent)
        async with self._locked(name, create=True) as served:
            await self._load_locked(served, [version])
            await self._commit_rollout_locked(served, version, canary_percent)

    async def _commit_rollout_locked(
        self, served: ServedModel, version: int, canary_percent: float
    ) -> None:
        active = served.router.active
        if canary_percent > 0 and active is not None and active != version:
            served.router.canary = {version: canary_percent / 100.0}
            self.events.count(self.events.rollouts, served.name, version, "canary")
            self._announce(served.name, version, active, ServingMode.CANARY)
            return
        await at_point(self.hook, "swapping")
        self._activate(served, version)
        served.retire_unwanted({version}, self.grace_period_s)

    # -- shutdown ----------------------------------------------------------------------

    async def close(self) -> None:
        self._closing = True
        for served in list(self.models.values()):
            for task in list(served.retire_tasks.values()):
                task.cancel()
        await asyncio.gather(*(mv.drain_and_unload() for mv in self.all_versions()))


def check_rollout(version: int, canary_percent: float) -> None:
    if version <= 0:
        raise InvalidInput(f"rollout needs a positive version number, got {version}")
    if not 0.0 <= canary_percent < 100.0:
        raise InvalidInput(
            f"canary percent {canary_percent} must lie in [0, 100); 0 switches all traffic"
        )


def _copy(config: mc.ModelConfig) -> mc.ModelConfig:
    copy = mc.ModelConfig()
    copy.CopyFrom(config)
    return copy
