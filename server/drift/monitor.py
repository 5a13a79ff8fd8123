"""Rolling histograms of a version's live inputs against its drift reference.

Cheap on the request path: ``observe`` takes a whole executed batch (the inputs the
model ran on), skips it unless the sampling credit says otherwise, and bins at most
MAX_ROWS of its rows with a few numpy calls. The window is a ring of time slots whose
counts add up; windows of several processes merge the same way (``DriftWindow.merged``),
and the statistics of a merged window are those of the merged data.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from warpserve.protos import model_config_pb2 as mc
from warpserve.server.drift import statistics
from warpserve.server.drift.reference import (
    DriftReference,
    bin_counts,
    bin_offsets,
    feature_rows,
)
from warpserve.server.errors import ModelLoadError
from warpserve.server.repository import parameters as params

log = logging.getLogger(__name__)

# Rows of one batch that are binned: bounded cost per batch (binning 64 rows of 16
# features took several times a fraud-scorer-sized model's own run; see
# bench/bench_drift.py), and more batches with fewer rows each sample the traffic better.
MAX_ROWS = 16
SLOTS = 10

DRIFT = params.flag("drift", True, "false ignores the version's drift reference")
PSI_THRESHOLD = params.number(
    "drift_psi_threshold", 0.2, "a feature's PSI above this raises the drift alarm"
)
KS_THRESHOLD = params.number(
    "drift_ks_threshold", 0.1, "a feature's KS statistic above this raises the drift alarm"
)
WINDOW_S = params.number("drift_window_s", 300.0, "seconds of live inputs compared")
SAMPLE_RATE = params.number(
    "drift_sample_rate", 0.1, "share of executed batches whose inputs are binned (0..1)"
)
MIN_ROWS = params.integer(
    "drift_min_rows", 1000, "rows the window needs before the alarm can be raised", minimum=1
)
PARAMETERS = (DRIFT, PSI_THRESHOLD, KS_THRESHOLD, WINDOW_S, SAMPLE_RATE, MIN_ROWS)


@dataclass(frozen=True)
class DriftSettings:
    psi_threshold: float = 0.2
    ks_threshold: float = 0.1
    window_s: float = 300.0
    sample_rate: float = 0.1
    min_rows: int = 1000

    @classmethod
    def from_config(cls, config: mc.ModelConfig) -> DriftSettings:
        rate = SAMPLE_RATE.read(config)
        if rate > 1:
            raise ModelLoadError(
                f"model '{config.name}': parameter drift_sample_rate={rate:g} is not valid; "
                "expected a share of batches from 0 to 1"
            )
        window = WINDOW_S.read(config)
        if window <= 0:
            raise ModelLoadError(
                f"model '{config.name}': parameter drift_window_s={window:g} is not valid; "
                "expected a positive number of seconds"
            )
        return cls(
            PSI_THRESHOLD.read(config),
            KS_THRESHOLD.read(config),
            window,
            rate,
            MIN_ROWS.read(config),
        )


@dataclass
class DriftWindow:
    """Live counts per input (F, K + 1) and rows binned: what processes add up."""

    counts: dict[str, np.ndarray]
    rows: int = 0

    @staticmethod
    def merged(windows: Iterable[DriftWindow]) -> DriftWindow:
        total: DriftWindow | None = None
        for window in windows:
            if total is None:
                total = DriftWindow({k: v.copy() for k, v in window.counts.items()}, window.rows)
                continue
            for name, counts in window.counts.items():
                total.counts[name] = total.counts[name] + counts
            total.rows += window.rows
        if total is None:
            raise ValueError("no drift windows to merge")
        return total


@dataclass(frozen=True)
class FeatureDrift:
    input: str
    feature: str
    psi: float
    ks: float


@dataclass(frozen=True)
class DriftReport:
    features: tuple[FeatureDrift, ...]
    rows: int
    alarm: bool
    settings: DriftSettings

    def over(self, feature: FeatureDrift) -> bool:
        s = self.settings
        return feature.psi > s.psi_threshold or feature.ks > s.ks_threshold


def evaluate(
    reference: DriftReference, window: DriftWindow, settings: DriftSettings
) -> DriftReport:
    """Per-feature PSI and KS of ``window`` against ``reference``, and the alarm: some
    feature over a threshold once the window holds ``min_rows`` rows."""
    features = []
    for name, ref in reference.inputs.items():
        live = window.counts[name]
        psi, ks = statistics.psi(ref.counts, live), statistics.ks(ref.counts, live)
        for i, feature in enumerate(ref.features):
            features.append(FeatureDrift(name, feature, float(psi[i]), float(ks[i])))
    report = DriftReport(tuple(features), window.rows, False, settings)
    alarm = window.rows >= settings.min_rows and any(report.over(f) for f in features)
    return DriftReport(report.features, report.rows, alarm, settings)


@dataclass
class _Slot:
    start: float = -1.0
    counts: dict[str, np.ndarray] = field(default_factory=dict)
    rows: int = 0


class DriftMonitor:
    """One version's live histograms. ``observe`` runs on whichever thread executed the
    batch (worker threads, or the event loop for inline models) and ``report`` on the
    metrics or admin thread, so the slots sit behind a lock (held for a numpy add)."""

    def __init__(
        self,
        reference: DriftReference,
        settings: DriftSettings,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.reference = reference
        self.settings = settings
        self._clock = clock
        self._slot_s = settings.window_s / SLOTS
        self._slots = [_Slot() for _ in range(SLOTS)]
        self._lock = threading.Lock()
        self._alarm_lock = threading.Lock()  # the metrics and admin threads both report
        self._credit = 1.0  # the first batch is observed
        self._offsets = {n: bin_offsets(r.edges) for n, r in reference.inputs.items()}
        self.alarm = False
        self.alarms_raised = 0
        self.label = ""

    def observe(self, inputs: dict[str, np.ndarray]) -> None:
        """Bin a sampled share of executed batches. Unsynchronised credit: a lost update
        between two worker threads only shifts the sampling by one batch."""
        self._credit += self.settings.sample_rate
        if self._credit < 1.0:
            return
        self._credit -= 1.0
        counts, rows = {}, 0
        for name, ref in self.reference.inputs.items():
            array = inputs.get(name)
            table = feature_rows(array[:MAX_ROWS]) if array is not None else None
            if table is None or table.shape[1] != len(ref.features):
                return  # not the tensor the reference describes: nothing to compare
            counts[name] = bin_counts(ref.edges, table, self._offsets[name])
            rows = max(rows, len(table))
        self._add(counts, rows)

    def _add(self, counts: dict[str, np.ndarray], rows: int) -> None:
        now = self._clock()
        with self._lock:
            slot = self._slots[int(now / self._slot_s) % SLOTS]
            if now - slot.start >= self._slot_s:
                slot.start = now - now % self._slot_s
                slot.counts = counts
                slot.rows = rows
                return
            for name, add in counts.items():
                slot.counts[name] += add
            slot.rows += rows

    def window(self) -> DriftWindow:
        """The live counts of the last ``window_s`` seconds (a copy)."""
        now = self._clock()
        total = DriftWindow(
            {n: np.zeros_like(r.counts) for n, r in self.reference.inputs.items()}, 0
        )
        with self._lock:
            for slot in self._slots:
                if slot.start < 0 or now - slot.start >= self.settings.window_s:
                    continue
                for name, counts in slot.counts.items():
                    total.counts[name] += counts
                total.rows += slot.rows
        return total

    def report(self, window: DriftWindow | None = None) -> DriftReport:
        """The statistics of this window (or a merged one). The alarm is judged here, when
        metrics are scraped or status is asked for; its changes are logged."""
        report = evaluate(self.reference, window or self.window(), self.settings)
        with self._alarm_lock:
            self._note(report)
        return report

    def _note(self, report: DriftReport) -> None:
        if report.alarm and not self.alarm:
            self.alarms_raised += 1
            worst = max(report.features, key=lambda f: f.psi)
            log.warning(
                "drift alarm on %s: %d of %d features over threshold over %d rows; worst "
                "%s[%s] PSI %.3f KS %.3f",
                self.label,
                sum(report.over(f) for f in report.features),
                len(report.features),
                report.rows,
                worst.input,
                worst.feature,
                worst.psi,
                worst.ks,
            )
        elif self.alarm and not report.alarm:
            log.info("drift alarm on %s cleared", self.label)
        self.alarm = report.alarm


def monitor_for(
    config: mc.ModelConfig, reference: DriftReference | None, label: str
) -> DriftMonitor | None:
    """The version's monitor, or None without a reference (or with drift=false)."""
    if reference is None or not DRIFT.read(config):
        return None
    monitor = DriftMonitor(reference, DriftSettings.from_config(config))
    monitor.label = label
    return monitor
