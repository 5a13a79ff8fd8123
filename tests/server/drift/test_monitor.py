"""Rolling live histograms against a reference: the alarm, the window, merging, sampling."""

from __future__ import annotations

import numpy as np
import pytest

from warpserve.server.drift.monitor import DriftMonitor, DriftSettings, DriftWindow
from warpserve.server.drift.reference import build_reference

FEATURES = 4


def _rows(rng: np.random.Generator, n: int, shift: float = 0.0) -> np.ndarray:
    x = rng.normal(0, 1, (n, FEATURES)).astype(np.float32)
    x[:, 1] += shift  # only feature 1 moves
    return x


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _monitor(clock: Clock | None = None, **settings: float) -> DriftMonitor:
    reference = build_reference({"X": _rows(np.random.default_rng(0), 5000)})
    merged = {"sample_rate": 1.0, "min_rows": 1000, "window_s": 60.0, **settings}
    return DriftMonitor(reference, DriftSettings(**merged), clock or Clock())  # type: ignore[arg-type]


def _stream(monitor: DriftMonitor, seed: int, batches: int, shift: float = 0.0) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(batches):
        monitor.observe({"X": _rows(rng, 16, shift)})


def test_an_unshifted_stream_raises_no_alarm() -> None:
    monitor = _monitor()
    _stream(monitor, 1, 200)
    report = monitor.report()
    assert report.rows == 3200 and not report.alarm and monitor.alarms_raised == 0
    assert max(f.psi for f in report.features) < 0.05
    assert max(f.ks for f in report.features) < 0.06


def test_a_shifted_feature_raises_the_alarm_and_is_the_one_reported_over() -> None:
    monitor = _monitor()
    _stream(monitor, 2, 200, shift=0.5)
    report = monitor.report()
    assert report.alarm and monitor.alarms_raised == 1
    over = [f.feature for f in report.features if report.over(f)]
    assert over == ["1"]
    shifted = report.features[1]
    assert shifted.psi > 0.2 and shifted.ks > 0.15


def test_no_alarm_before_the_window_holds_min_rows() -> None:
    monitor = _monitor()
    _stream(monitor, 3, 20, shift=2.0)  # 320 rows, far off
    report = monitor.report()
    assert not report.alarm and report.features[1].psi > 1.0


def test_the_window_forgets_old_slots_so_the_alarm_clears() -> None:
    clock = Clock()
    monitor = _monitor(clock)
    _stream(monitor, 4, 200, shift=1.0)
    assert monitor.report().alarm
    clock.now += 61.0  # the shifted rows leave the window
    _stream(monitor, 5, 200)
    report = monitor.report()
    assert report.rows == 3200 and not report.alarm and not monitor.alarm


def test_merged_windows_equal_one_window_of_all_the_rows() -> None:
    one, a, b = _monitor(), _monitor(), _monitor()
    rng = np.random.default_rng(6)
    for i in range(40):
        batch = {"X": _rows(rng, 16, shift=0.3)}
        one.observe(batch)
        (a if i % 3 else b).observe(batch)
    merged = DriftWindow.merged([a.window(), b.window()])
    np.testing.assert_array_equal(merged.counts["X"], one.window().counts["X"])
    assert merged.rows == one.window().rows == 640
    assert one.report(merged).features == one.report().features


def test_sampling_observes_the_configured_share_of_batches_and_at_most_16_rows() -> None:
    monitor = _monitor(sample_rate=0.25)
    _stream(monitor, 7, 100)
    assert monitor.window().rows == (1 + 25) * 16  # the first batch, then every 4th
    big = _monitor()
    big.observe({"X": _rows(np.random.default_rng(8), 1000)})
    assert big.window().rows == 16


def test_a_batch_without_the_referenced_input_is_not_counted() -> None:
    monitor = _monitor()
    monitor.observe({"OTHER": np.zeros((8, FEATURES), np.float32)})
    monitor.observe({"X": np.zeros((8, FEATURES + 1), np.float32)})
    assert monitor.window().rows == 0


def test_settings_come_from_config_parameters_and_bad_ones_fail_the_load() -> None:
    from warpserve.protos import model_config_pb2 as mc
    from warpserve.server.errors import ModelLoadError

    config = mc.ModelConfig(name="m")
    config.parameters["drift_psi_threshold"].string_value = "0.3"
    config.parameters["drift_sample_rate"].string_value = "1"
    settings = DriftSettings.from_config(config)
    assert settings.psi_threshold == 0.3 and settings.sample_rate == 1.0
    config.parameters["drift_sample_rate"].string_value = "2"
    with pytest.raises(ModelLoadError, match="drift_sample_rate"):
        DriftSettings.from_config(config)
