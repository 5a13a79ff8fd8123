"""Which version of a model answers an unpinned request."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field


def _unit(request_id: str, salt: bytes = b"") -> float:
    """A stable number in [0, 1) for a request id, so one caller sees one version.

    blake2b, not crc32: crc32 is affine over GF(2), so a salted crc32 stays correlated
    with the unsalted one and the shadowed share would follow the canary split.
    """
    if not request_id:
        return random.random()
    digest = hashlib.blake2b(request_id.encode(), digest_size=8, salt=salt).digest()
    return int.from_bytes(digest, "big") / 2**64


@dataclass
class VersionRouter:
    active: int | None = None
    previous: int | None = None  # what rollback returns to
    canary: dict[int, float] = field(default_factory=dict)  # version -> share of traffic
    shadow_version: int | None = None
    shadow_share: float = 0.0

    def choose(self, request_id: str = "") -> int | None:
        if self.canary and self.active is not None:
            point, edge = _unit(request_id), 0.0
            for version, share in sorted(self.canary.items()):
                edge += share
                if point < edge:
                    return version
        return self.active

    def shadow_for(self, request_id: str = "") -> int | None:
        if self.shadow_version is None or self.shadow_share <= 0:
            return None
        # Salted so the shadowed share is independent of the canary split.
        return self.shadow_version if _unit(request_id, b"shadow") < self.shadow_share else None

    def switch(self, version: int) -> None:
        """Route every unpinned request to ``version`` in one step."""
        if self.active is not None and self.active != version:
            self.previous = self.active
        self.active = version
        self.canary = {}

    def weights(self) -> dict[int, float]:
        """Share of unpinned traffic per version."""
        if self.active is None:
            return {}
        shares = dict(self.canary)
        rest = max(0.0, 1.0 - sum(self.canary.values()))
        shares[self.active] = shares.get(self.active, 0.0) + rest
        return shares

    def routes_to(self, version: int) -> bool:
        """Whether any unpinned or mirrored traffic reaches ``version``."""
        return version == self.active or version in self.canary or version == self.shadow_version

    def forget(self, version: int) -> None:
        self.canary.pop(version, None)
        if self.previous == version:
            self.previous = None
        if self.shadow_version == version:
            self.shadow_version, self.shadow_share = None, 0.0
        if self.active == version:
            self.active = None
