"""VersionRouter: canary shares, sticky request ids, shadow selection, switch and forget."""

from __future__ import annotations

import uuid
from collections import Counter

import pytest

from warpserve.server.lifecycle.router import VersionRouter


def test_no_active_version_routes_nowhere() -> None:
    assert VersionRouter().choose("x") is None
    assert VersionRouter().weights() == {}


def test_switch_remembers_the_previous_version_and_clears_the_canary() -> None:
    router = VersionRouter()
    router.switch(1)
    assert (router.active, router.previous) == (1, None)
    router.canary = {2: 0.3}
    router.switch(2)
    assert (router.active, router.previous, router.canary) == (2, 1, {})
    router.switch(2)  # switching to the active version keeps the rollback target
    assert router.previous == 1


@pytest.mark.parametrize("share", [0.05, 0.2, 0.5])
def test_canary_share_converges_with_random_ids(share: float) -> None:
    router = VersionRouter(active=1, canary={2: share})
    seen = Counter(router.choose(uuid.uuid4().hex) for _ in range(2000))
    assert set(seen) == {1, 2}
    assert abs(seen[2] / 2000 - share) < 0.05


def test_requests_without_an_id_are_split_too() -> None:
    router = VersionRouter(active=1, canary={2: 0.2})
    seen = Counter(router.choose("") for _ in range(2000))
    assert abs(seen[2] / 2000 - 0.2) < 0.05


def test_same_request_id_always_gets_the_same_version() -> None:
    router = VersionRouter(active=1, canary={2: 0.5})
    for i in range(200):
        first = router.choose(f"user-{i}")
        assert all(router.choose(f"user-{i}") == first for _ in range(5))


def test_three_way_split_matches_its_weights() -> None:
    router = VersionRouter(active=1, canary={2: 0.25, 3: 0.25})
    assert router.weights() == {1: 0.5, 2: 0.25, 3: 0.25}
    seen = Counter(router.choose(uuid.uuid4().hex) for _ in range(4000))
    for version, share in router.weights().items():
        assert abs(seen[version] / 4000 - share) < 0.05


def test_shadow_share_is_independent_of_the_canary_split() -> None:
    router = VersionRouter(active=1, canary={2: 0.5}, shadow_version=3, shadow_share=0.5)
    ids = [uuid.uuid4().hex for _ in range(4000)]
    both = sum(1 for i in ids if router.choose(i) == 2 and router.shadow_for(i) == 3)
    # Independent halves overlap on about a quarter of the ids, not on half or none.
    assert abs(both / 4000 - 0.25) < 0.05


def test_no_shadow_unless_configured() -> None:
    router = VersionRouter(active=1)
    assert router.shadow_for("x") is None
    router.shadow_version, router.shadow_share = 2, 0.0
    assert router.shadow_for("x") is None
    router.shadow_share = 1.0
    assert router.shadow_for("x") == 2


def test_routes_to_covers_active_canary_and_shadow() -> None:
    router = VersionRouter(
        active=1, previous=4, canary={2: 0.1}, shadow_version=3, shadow_share=0.1
    )
    assert [v for v in range(1, 6) if router.routes_to(v)] == [1, 2, 3]


def test_forget_removes_every_route_to_a_version() -> None:
    router = VersionRouter(
        active=1, previous=2, canary={2: 0.1}, shadow_version=2, shadow_share=0.5
    )
    router.forget(2)
    assert (router.previous, router.canary, router.shadow_version) == (None, {}, None)
    router.forget(1)
    assert router.active is None and router.choose("x") is None
