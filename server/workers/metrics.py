"""Prometheus metrics of several server processes, served once by the supervisor.

Each worker mirrors what its registry's collector reports into prometheus_client's
multiprocess files (PROMETHEUS_MULTIPROC_DIR) when the supervisor asks, just before a
scrape: the request path still pays nothing. The supervisor's collector reads the files
with prometheus_client's MultiProcessCollector, which sums (or takes the max of) the
processes' values, and gives each family back the name and type a single process
exposes. Request counters are summed over every worker that ever ran, so a replaced
worker's requests stay counted (up to its last mirror); lifecycle gauges count only
live workers.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterator
from typing import Any, cast

from prometheus_client import Gauge
from prometheus_client.core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from warpserve.server.lifecycle.events import RegistryEvents
from warpserve.server.lifecycle.registry import ModelRegistry
from warpserve.server.metrics import RegistryCollector

# Each worker counts the same rollouts and rollbacks (every worker applies each change).
SAME_IN_EVERY_WORKER = frozenset({"warpserve_rollouts", "warpserve_rollbacks"})
LIVE_SUM = frozenset({"nv_inference_pending_request_count"})
LIVE_MODES = ("livesum", "livemax")
# A family's samples beyond its bare name: a counter's, and a histogram's.
SAMPLE_SUFFIXES = ("_total", "_bucket", "_sum", "_count")
# One sample per live worker (prometheus_client adds its pid): how the kernel spreads
# connections over the workers, and which workers answered.
PER_WORKER = "warpserve_worker_requests"
PER_WORKER_HELP = "Inference requests each server process answered (pid: the process)"


def mode_of(family: str, kind: str) -> str:
    """How the supervisor combines one family's values over the workers."""
    if family in LIVE_SUM:
        return "livesum"
    if family in SAME_IN_EVERY_WORKER:
        return "max"
    # Triton's bare-named counters are untyped; a histogram's buckets, sum and count are
    # counters too, and summing them per bucket gives the histogram of all the workers.
    if kind in ("counter", "unknown", "histogram"):
        return "sum"  # dead workers' files stay: a counter never goes back
    return "livemax"  # routing, states, guard: the same in every live worker


class MetricsMirror:
    """Copies one worker's collector output into its multiprocess files."""

    def __init__(self, registry: ModelRegistry, *, worker: bool = True) -> None:
        self.collector = RegistryCollector(registry)
        # The model owner mirrors its models too, but is no worker: it answers only
        # what the workers pass it, so it takes no PER_WORKER sample.
        self.worker = worker
        self._gauges: dict[str, Gauge] = {}
        self._modes: dict[str, str] = {}
        self._written: dict[str, set[tuple[str, ...]]] = {}

    def flush(self) -> None:
        seen: dict[str, set[tuple[str, ...]]] = {}
        for family in self.collector.collect():
            mode = mode_of(family.name, family.type)
            for sample in family.samples:
                names = tuple(sample.labels)
                gauge = self._gauge(sample.name, family.documentation, names, mode)
                values = tuple(sample.labels[n] for n in names)
                gauge.labels(*values).set(sample.value)
                seen.setdefault(sample.name, set()).add(values)
        if self.worker:
            answered = sum(
                mv.stats.success.count + mv.stats.fail.count
                for mv in self.collector.registry.all_versions()
            )
            self._gauge(PER_WORKER, PER_WORKER_HELP, (), "liveall").set(answered)
        for name, written in self._written.items():
            if self._modes[name] in LIVE_MODES:
                for values in written - seen.get(name, set()):
                    self._gauges[name].labels(*values).set(0)  # a version that left
        for name, values_seen in seen.items():
            self._written.setdefault(name, set()).update(values_seen)

    def _gauge(self, name: str, doc: str, labels: tuple[str, ...], mode: str) -> Gauge:
        gauge = self._gauges.get(name)
        if gauge is None:
            gauge = Gauge(name, doc, labels, registry=None, multiprocess_mode=cast(Any, mode))
            self._gauges[name], self._modes[name] = gauge, mode
        return gauge


def _family_specs() -> dict[str, Metric]:
    """Every family a single process exposes, empty: names, types, help."""
    empty: Any = types.SimpleNamespace(all_versions=list, models={}, events=RegistryEvents())
    specs = {family.name: family for family in RegistryCollector(empty).collect()}
    specs[PER_WORKER] = Metric(PER_WORKER, PER_WORKER_HELP, "gauge")
    return specs


class WorkersCollector(Collector):
    """The workers' metrics, summed, under the names and types of a single process."""

    def __init__(self, path: str, refresh: Callable[[], None]) -> None:
        self.path = path
        self.refresh = refresh  # asks every worker to mirror its counters now
        self.specs = _family_specs()

    def collect(self) -> Iterator[Metric]:
        self.refresh()
        out = {
            name: Metric(name, spec.documentation, spec.type) for name, spec in self.specs.items()
        }
        for metric in MultiProcessCollector(None, self.path).collect():
            for sample in metric.samples:
                family = self._family(sample.name)
                if family is not None:
                    out[family].add_sample(sample.name, sample.labels, sample.value)
        yield from out.values()

    def _family(self, sample: str) -> str | None:
        if sample in self.specs:
            return sample
        for suffix in SAMPLE_SUFFIXES:
            if sample.endswith(suffix) and sample[: -len(suffix)] in self.specs:
                return sample[: -len(suffix)]
        return None
