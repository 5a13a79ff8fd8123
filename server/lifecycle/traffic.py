"""Routing changes of a served model that load nothing: rollback, promote, a traffic
split, a shadow. Each is one synchronous step on the event loop, so no request ever sees
half of one. ``ModelRegistry`` takes them from here."""

from __future__ import annotations

import logging
from typing import Protocol

from warpserve.server.errors import FailedPrecondition, InvalidInput
from warpserve.server.lifecycle.events import RegistryEvents
from warpserve.server.lifecycle.guarding import ServingMode
from warpserve.server.lifecycle.served import ServedModel

log = logging.getLogger(__name__)


class _Registry(Protocol):
    """What these changes use of the registry."""

    events: RegistryEvents
    grace_period_s: float

    def model(self, name: str) -> ServedModel: ...

    def _activate(
        self, served: ServedModel, version: int, outcome: str | None = "succeeded"
    ) -> None: ...

    def _announce(self, name: str, candidate: int, baseline: int, mode: ServingMode) -> None: ...

    def _stop_shadow(self, served: ServedModel, reason: str) -> int: ...

    def _abort_canary(self, served: ServedModel, reason: str) -> int: ...


class TrafficChanges:
    def rollback(
        self: _Registry, name: str, reason: str = "manual", *, shadow: bool = False
    ) -> int:
        """Route every unpinned request to the previous version, without a load.

        During a canary, rolling back ends the canary: the active version takes all
        traffic again. With ``shadow``, only the shadow stops. Returns the version now
        serving.
        """
        served = self.model(name)
        if shadow:
            return self._stop_shadow(served, reason)
        if served.router.canary:
            return self._abort_canary(served, reason)
        previous = served.router.previous
        mv = served.versions.get(previous) if previous is not None else None
        if mv is None or not mv.ready:
            raise FailedPrecondition(
                f"model '{name}' has no loaded previous version to roll back to "
                f"(previous: {previous}); load one with a rollout instead"
            )
        current = served.router.active
        self._activate(served, mv.version, outcome=None)
        if current is not None:
            self.events.count(self.events.rollbacks, name, current, reason)
            if current in served.versions:
                served.spawn_retire(served.versions[current], self.grace_period_s)
        log.warning("model '%s' rolled back to version %d (%s)", name, mv.version, reason)
        return mv.version

    def _stop_shadow(self: _Registry, served: ServedModel, reason: str) -> int:
        version, router = served.router.shadow_version, served.router
        if version is None or router.active is None:
            raise FailedPrecondition(f"model '{served.name}' has no shadow version to stop")
        router.shadow_version, router.shadow_share = None, 0.0
        self.events.count(self.events.rollbacks, served.name, version, reason)
        if version in served.versions:
            served.spawn_retire(served.versions[version], self.grace_period_s)
        log.warning("model '%s' shadow version %d stopped (%s)", served.name, version, reason)
        return router.active

    def _abort_canary(self: _Registry, served: ServedModel, reason: str) -> int:
        canaries, served.router.canary = list(served.router.canary), {}
        for version in canaries:
            self.events.count(self.events.rollbacks, served.name, version, reason)
            if version in served.versions:
                served.spawn_retire(served.versions[version], self.grace_period_s)
        active = served.router.active
        assert active is not None  # a canary exists only beside an active version
        log.warning(
            "model '%s' canary %s ended, version %d serves all (%s)",
            served.name,
            canaries,
            active,
            reason,
        )
        return active

    def promote(self: _Registry, name: str) -> int:
        """Give the canary every unpinned request; the old version stays for rollback."""
        served = self.model(name)
        canary = served.router.canary
        if not canary:
            raise FailedPrecondition(
                f"model '{name}' has no canary version to promote; start one with a rollout "
                "and a canary percent"
            )
        version = max(canary, key=canary.__getitem__)
        self._activate(served, version, outcome="promoted")
        served.retire_unwanted({version}, self.grace_period_s)
        return version

    def set_split(self: _Registry, name: str, weights: dict[int, float]) -> None:
        """Split unpinned traffic between loaded versions by weight (normalised)."""
        served = self.model(name)
        if not weights or any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
            raise InvalidInput(
                "traffic split needs non-negative weights that sum above 0, e.g. {1: 80, 2: 20}"
            )
        for version in weights:
            served.require_ready(version)
        total = sum(weights.values())
        router = served.router
        if weights.get(router.active or 0, 0) == 0:
            self._activate(served, max(weights, key=weights.__getitem__), outcome=None)
        router.canary = {v: w / total for v, w in weights.items() if v != router.active and w > 0}

    def set_shadow(self: _Registry, name: str, version: int, percent: float) -> None:
        """Mirror ``percent`` of unpinned requests to ``version``; 0 or version 0 stops."""
        served = self.model(name)
        if version == 0 or percent <= 0:
            served.router.shadow_version, served.router.shadow_share = None, 0.0
            return
        if percent > 100:
            raise InvalidInput(f"shadow percent {percent} must lie in (0, 100]")
        served.require_ready(version)
        if version == served.router.active:
            raise FailedPrecondition(
                f"model '{name}' version {version} is the active version; shadow a candidate"
            )
        before = served.router.shadow_version
        served.router.shadow_version, served.router.shadow_share = version, percent / 100.0
        served.cancel_retire(version)
        if before != version and served.router.active is not None:
            self._announce(name, version, served.router.active, ServingMode.SHADOW)
