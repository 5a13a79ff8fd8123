"""The guard's decisions on synthetic windows (seeded, nothing timed), its settings, and
the timestamped request timeline it reads."""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf import text_format

from warpserve.profiling.guard import PATIENCE_WINDOWS, decide
from warpserve.profiling.guard_settings import GuardSettings, read_settings
from warpserve.profiling.stats import Verdict
from warpserve.protos import model_config_pb2 as mc
from warpserve.server.errors import ModelLoadError
from warpserve.server.lifecycle.guarding import GuardStatus
from warpserve.server.stats import RequestTimeline, TimelineWindow

SETTINGS = GuardSettings(enabled=True, window_seconds=2.0, min_samples=50)
WATCHING = GuardStatus("watching", baseline=1, mode="full")


def window(latencies: np.ndarray, errors: int = 0) -> TimelineWindow:
    return TimelineWindow(latencies, errors, len(latencies) + errors, 1)


def served(rng: np.random.Generator, n: int, scale: float = 1.0) -> np.ndarray:
    # Queue plus compute under load: lognormal with occasional queueing spikes.
    base = rng.lognormal(0.0, 0.4, n) * scale
    return np.where(rng.random(n) < 0.02, base * 4, base)


def test_a_2x_latency_regression_rolls_back_before_the_window_ends() -> None:
    rng = np.random.default_rng(0)
    d = decide(window(served(rng, 400)), window(served(rng, 60, 2.0)), SETTINGS, 0.5, WATCHING)
    assert d.verdict is Verdict.REGRESSION and d.rollback_reason == "latency_guard"
    assert d.status.verdict == "regression" and d.status.p99_ratio > 1.3
    assert d.status.candidate_samples == 60 and d.status.baseline_samples == 400


def test_same_speed_is_never_rolled_back_over_many_seeded_rollouts() -> None:
    # Every tick of every rollout is an evaluation that could roll back; none may.
    rollbacks = 0
    for seed in range(120):
        rng = np.random.default_rng(seed)
        baseline, candidate = served(rng, 500), served(rng, 500)
        for tick, n in enumerate(range(50, 501, 50)):
            d = decide(window(baseline), window(candidate[:n]), SETTINGS, tick * 0.25, WATCHING)
            if d.rollback_reason:
                rollbacks += 1
                break
    assert rollbacks == 0


def test_same_speed_passes_once_a_full_window_is_seen() -> None:
    rng = np.random.default_rng(1)
    early = decide(window(served(rng, 300)), window(served(rng, 300)), SETTINGS, 1.0, WATCHING)
    assert early.verdict is None and early.status.verdict == "watching"
    late = decide(window(served(rng, 300)), window(served(rng, 300)), SETTINGS, 2.1, WATCHING)
    assert late.verdict is Verdict.PASS and not late.rollback_reason


def test_too_few_requests_keep_watching_then_end_as_insufficient_data() -> None:
    rng = np.random.default_rng(2)
    few = window(served(rng, 20, 3.0))
    d = decide(window(served(rng, 300)), few, SETTINGS, 2.5, WATCHING)
    assert d.verdict is None and "at least 50" in d.status.reason
    late = PATIENCE_WINDOWS * SETTINGS.window_seconds + 0.1
    d = decide(window(served(rng, 300)), few, SETTINGS, late, WATCHING)
    assert d.verdict is Verdict.INSUFFICIENT_DATA and not d.rollback_reason


def test_a_faster_version_is_an_improvement() -> None:
    rng = np.random.default_rng(3)
    d = decide(window(served(rng, 300)), window(served(rng, 300, 0.5)), SETTINGS, 2.5, WATCHING)
    assert d.verdict is Verdict.IMPROVEMENT and not d.rollback_reason


def test_an_error_rate_regression_rolls_back_even_at_the_same_speed() -> None:
    rng = np.random.default_rng(4)
    d = decide(
        window(served(rng, 300), errors=1), window(served(rng, 270), errors=30), SETTINGS, 0.5,
        WATCHING,
    )  # fmt: skip
    assert d.verdict is Verdict.REGRESSION and d.rollback_reason == "error_rate_guard"
    assert d.status.candidate_error_rate == pytest.approx(0.1)


def _config(params: dict[str, str]) -> mc.ModelConfig:
    text = 'name: "m"\n' + "".join(
        f'parameters {{ key: "{k}" value {{ string_value: "{v}" }} }}\n' for k, v in params.items()
    )
    return text_format.Parse(text, mc.ModelConfig())


def test_settings_default_to_off_and_read_every_key() -> None:
    assert read_settings(_config({})) == GuardSettings()
    settings = read_settings(
        _config(
            {
                "guard.enabled": "true",
                "guard.max_latency_ratio": "1.5",
                "guard.window_seconds": "5",
                "guard.min_samples": "40",
                "guard.max_error_rate": "0.05",
            }
        )
    )
    assert settings == GuardSettings(True, 1.5, 5.0, 40, 0.05)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("guard.enabled", "maybe"),
        ("guard.max_latency_ratio", "0.9"),
        ("guard.window_seconds", "0"),
        ("guard.min_samples", "3"),
        ("guard.max_error_rate", "x"),
    ],
)
def test_bad_settings_name_the_key(key: str, value: str) -> None:
    with pytest.raises(ModelLoadError, match=key.replace(".", r"\.")):
        read_settings(_config({key: value}))


def test_timeline_windows_select_by_time_and_count_errors() -> None:
    timeline = RequestTimeline(size=8)
    for i in range(10):  # the ring keeps the last 8: t = 2..9
        timeline.add(1_000_000 * (i + 1), ok=i != 7, now_ns=i * 1_000)
    assert len(timeline) == 8 and timeline.last_ns == 9_000
    w = timeline.window(5_000, 8_000)  # t = 5, 6, 7 (an error), 8
    assert w.requests == 4 and w.errors == 1
    assert sorted(w.latencies_ms.tolist()) == [6.0, 7.0, 9.0]
    assert w.last_ns == 8_000
    empty = timeline.window(100_000, 200_000)
    assert empty.requests == 0 and empty.last_ns == 0
