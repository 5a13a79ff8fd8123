"""Prometheus metrics with Triton's ``nv_inference_*`` names and labels.

A collector reads the registry's counters at scrape time, so the request path
pays nothing for metrics. ``warpserve_*`` families cover what Triton lacks.

Input drift, for versions that have a drift reference (``server/drift``), over the
version's rolling window (``drift_window_s``), computed at scrape time:

- ``warpserve_drift_psi{model,version,input,feature}``: population stability index of
  one feature's live histogram against its reference (0 = same; above
  ``drift_psi_threshold``, 0.2 by default, counts as drift).
- ``warpserve_drift_ks{model,version,input,feature}``: two-sample Kolmogorov-Smirnov
  statistic at the reference's bin edges (0..1; threshold ``drift_ks_threshold``).
- ``warpserve_drift_threshold{model,version,statistic="psi"|"ks"}``: the thresholds,
  to draw beside the two families above.
- ``warpserve_drift_window_rows{model,version}``: live rows in the window (sampled:
  ``drift_sample_rate`` of the executed batches, at most 16 rows of each).
- ``warpserve_drift_alarm{model,version}``: 1 while some feature is over a threshold
  and the window holds at least ``drift_min_rows`` rows, else 0.
- ``warpserve_drift_alarms_total{model,version}``: times the alarm went on.

Graceful degradation:

- ``warpserve_fallback_responses_total{model,fallback,reason}``: answers a fallback model
  gave for ``model`` (reason: error, unavailable, shed, deadline).
- ``warpserve_shed_requests_total{model,version,priority}``: requests refused by load
  shedding (``shed_queue_size``), per priority level.

Live histograms are kept per version as counts (``DriftMonitor.window``); several
processes' windows merge by adding counts (``DriftWindow.merged``) and
``DriftMonitor.report(merged)`` gives the statistics of the merged data. The drift
gauges are not summable across processes themselves: merge the windows, not the PSI.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from warpserve.server.distributions import histogram_families
from warpserve.server.lifecycle.registry import ModelRegistry
from warpserve.server.lifecycle.version import ModelVersion, VersionState

LABELS = ["model", "version"]


class TritonCounter(Metric):
    """A counter exposed under its bare name, as Triton exposes it.

    prometheus_client's CounterMetricFamily names the samples ``<name>_total``, which
    breaks dashboards written against Triton's ``nv_inference_request_success``; an
    untyped family keeps the bare name in both exposition formats (PromQL's rate()
    does not need the type).
    """

    def __init__(self, name: str, documentation: str, labels: list[str]) -> None:
        super().__init__(name, documentation, "unknown")
        self._labelnames = tuple(labels)

    def add_metric(self, labels: list[str], value: float) -> None:
        self.add_sample(self.name, dict(zip(self._labelnames, labels, strict=True)), value)


class RegistryCollector(Collector):
    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Any]:
        yield from self._request_families()
        yield from histogram_families(self.registry.all_versions())
        yield from self._lifecycle_families()

    def _request_families(self) -> Iterator[Any]:
        fams: dict[str, Any] = {
            "success": TritonCounter(
                "nv_inference_request_success",
                "Number of successful inference requests",
                labels=LABELS,
            ),
            "failure": TritonCounter(
                "nv_inference_request_failure",
                "Number of failed inference requests",
                labels=[*LABELS, "reason"],
            ),
            "count": TritonCounter(
                "nv_inference_count", "Number of inferences performed (rows)", labels=LABELS
            ),
            "exec": TritonCounter(
                "nv_inference_exec_count", "Number of model executions (batches)", labels=LABELS
            ),
            "request_us": TritonCounter(
                "nv_inference_request_duration_us",
                "Cumulative request duration in us",
                labels=LABELS,
            ),
            "queue_us": TritonCounter(
                "nv_inference_queue_duration_us",
                "Cumulative time requests spent queued in us",
                labels=LABELS,
            ),
            "input_us": TritonCounter(
                "nv_inference_compute_input_duration_us",
                "Cumulative compute input duration in us",
                labels=LABELS,
            ),
            "infer_us": TritonCounter(
                "nv_inference_compute_infer_duration_us",
                "Cumulative compute inference duration in us",
                labels=LABELS,
            ),
            "output_us": TritonCounter(
                "nv_inference_compute_output_duration_us",
                "Cumulative compute output duration in us",
                labels=LABELS,
            ),
            "pending": GaugeMetricFamily(
                "nv_inference_pending_request_count", "Requests queued or executing", labels=LABELS
            ),
        }
        for mv in self.registry.all_versions():
            s, labels = mv.stats, [mv.name, str(mv.version)]
            fams["success"].add_metric(labels, s.success.count)
            for reason, count in sorted(s.failures_by_reason.items()):
                fams["failure"].add_metric([*labels, reason], count)
            fams["count"].add_metric(labels, s.inference_count)
            fams["exec"].add_metric(labels, s.execution_count)
            fams["request_us"].add_metric(labels, (s.success.ns + s.fail.ns) / 1000)
            fams["queue_us"].add_metric(labels, s.queue.ns / 1000)
            fams["input_us"].add_metric(labels, s.compute_input.ns / 1000)
            fams["infer_us"].add_metric(labels, s.compute_infer.ns / 1000)
            fams["output_us"].add_metric(labels, s.compute_output.ns / 1000)
            fams["pending"].add_metric(labels, mv.batcher.in_flight if mv.batcher else 0)
        yield from fams.values()

    def _lifecycle_families(self) -> Iterator[Any]:
        active = GaugeMetricFamily(
            "warpserve_model_version_active",
            "1 for the version that takes unpinned traffic, else 0",
            labels=LABELS,
        )
        weight = GaugeMetricFamily(
            "warpserve_model_version_traffic_weight",
            "Share of unpinned traffic routed to the version",
            labels=LABELS,
        )
        state = GaugeMetricFamily(
            "warpserve_model_version_state",
            "1 for the version's current state",
            labels=[*LABELS, "state"],
        )
        # Snapshots: this runs on the HTTP thread while the event loop changes the registry.
        for served in list(self.registry.models.values()):
            weights = served.router.weights()
            for number, mv in sorted(list(served.versions.items())):
                labels = [served.name, str(number)]
                active.add_metric(labels, 1 if served.router.active == number else 0)
                weight.add_metric(labels, weights.get(number, 0.0))
                for st in VersionState:
                    state.add_metric([*labels, st.value], 1 if mv.state is st else 0)
        rollouts = CounterMetricFamily(
            "warpserve_rollouts",
            "Model version rollouts by outcome (succeeded, canary, promoted, failed)",
            labels=[*LABELS, "outcome"],
        )
        for (model, version, outcome), count in sorted(list(self.registry.events.rollouts.items())):
            rollouts.add_metric([model, str(version), outcome], count)
        rollbacks = CounterMetricFamily(
            "warpserve_rollbacks",
            "Rollbacks by reason; version is the version taken out of service",
            labels=[*LABELS, "reason"],
        )
        for (model, version, reason), count in sorted(list(self.registry.events.rollbacks.items())):
            rollbacks.add_metric([model, str(version), reason], count)
        yield from (active, weight, state, rollouts, rollbacks)
        yield from self._guard_families()

    def _guard_families(self) -> Iterator[Any]:
        verdict = GaugeMetricFamily(
            "warpserve_guard_verdict",
            "1 for the latency guard's current verdict on a version it watches or watched",
            labels=[*LABELS, "verdict"],
        )
        ratio = GaugeMetricFamily(
            "warpserve_guard_latency_ratio",
            "Candidate over baseline latency at the guard's last evaluation",
            labels=[*LABELS, "quantile"],
        )
        errors = GaugeMetricFamily(
            "warpserve_guard_error_rate",
            "Share of the candidate's requests the model failed, at the last evaluation",
            labels=LABELS,
        )
        for mv in self.registry.all_versions():
            guard = mv.guard
            if guard is None:
                continue
            labels = [mv.name, str(mv.version)]
            verdict.add_metric([*labels, guard.verdict], 1)
            ratio.add_metric([*labels, "0.5"], guard.median_ratio)
            ratio.add_metric([*labels, "0.99"], guard.p99_ratio)
            errors.add_metric(labels, guard.candidate_error_rate)
        yield from (verdict, ratio, errors)
        yield from drift_families(self.registry.all_versions())
        yield from self._degradation_families()

    def _degradation_families(self) -> Iterator[Metric]:
        answered = CounterMetricFamily(
            "warpserve_fallback_responses",
            "Answers given by a model's fallback model, by reason",
            labels=["model", "fallback", "reason"],
        )
        for key, count in sorted(list(self.registry.events.fallbacks.items())):
            answered.add_metric(list(key), count)
        shed = CounterMetricFamily(
            "warpserve_shed_requests",
            "Requests refused by priority load shedding (shed_queue_size)",
            labels=[*LABELS, "priority"],
        )
        for mv in self.registry.all_versions():
            batcher = mv.batcher
            if batcher is None or not batcher.policy.shed_queue_size:
                continue
            for level, count in enumerate(batcher.shed, start=1):
                shed.add_metric([mv.name, str(mv.version), str(level)], count)
        yield from (answered, shed)


def drift_families(versions: Iterable[ModelVersion]) -> Iterator[Metric]:
    """The ``warpserve_drift_*`` families of the versions that have a drift reference."""
    feature_labels = [*LABELS, "input", "feature"]
    psi = GaugeMetricFamily(
        "warpserve_drift_psi",
        "PSI of a feature's live inputs against its reference",
        labels=feature_labels,
    )
    ks = GaugeMetricFamily(
        "warpserve_drift_ks",
        "KS statistic of a feature's live inputs against its reference",
        labels=feature_labels,
    )
    threshold = GaugeMetricFamily(
        "warpserve_drift_threshold",
        "Drift alarm threshold per statistic (psi, ks)",
        labels=[*LABELS, "statistic"],
    )
    rows = GaugeMetricFamily(
        "warpserve_drift_window_rows", "Live rows in the drift window", labels=LABELS
    )
    alarm = GaugeMetricFamily(
        "warpserve_drift_alarm", "1 while the version's inputs have drifted", labels=LABELS
    )
    raised = CounterMetricFamily(
        "warpserve_drift_alarms", "Times the drift alarm went on", labels=LABELS
    )
    for mv in versions:
        monitor = mv.drift
        if monitor is None:
            continue
        labels = [mv.name, str(mv.version)]
        report = monitor.report()
        for f in report.features:
            psi.add_metric([*labels, f.input, f.feature], f.psi)
            ks.add_metric([*labels, f.input, f.feature], f.ks)
        threshold.add_metric([*labels, "psi"], report.settings.psi_threshold)
        threshold.add_metric([*labels, "ks"], report.settings.ks_threshold)
        rows.add_metric(labels, report.rows)
        alarm.add_metric(labels, 1 if report.alarm else 0)
        raised.add_metric(labels, monitor.alarms_raised)
    yield from (psi, ks, threshold, rows, alarm, raised)


METRICS_PATH = "/metrics"
ALLOWED = "GET, HEAD"

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def metrics_only(app: WSGIApp) -> WSGIApp:
    """``app`` at /metrics for GET and HEAD; 404 on other paths, 405 for other methods.

    prometheus_client's own app answers every path with the exposition (and 405 to
    HEAD), which hides a mistyped scrape path from whoever configures the scraper.
    """

    def dispatch(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "")
        if environ.get("PATH_INFO") != METRICS_PATH:
            return _plain(start_response, "404 Not Found", f"metrics are at {METRICS_PATH}")
        if method == "GET":
            return app(environ, start_response)
        if method == "HEAD":
            return _head(app, environ, start_response)
        return _plain(
            start_response,
            "405 Method Not Allowed",
            f"{method} is not allowed on {METRICS_PATH}; use {ALLOWED}",
            [("Allow", ALLOWED)],
        )

    return dispatch


def _head(app: WSGIApp, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    """The GET answer's status and headers, with its Content-Length, and no body."""
    answer: list[Any] = []
    body = b"".join(
        app({**environ, "REQUEST_METHOD": "GET"}, lambda *args: answer.extend(args[:2]))
    )
    status, headers = answer
    start_response(status, [*headers, ("Content-Length", str(len(body)))])
    return []


def _plain(
    start_response: Callable[..., Any],
    status: str,
    text: str,
    extra: list[tuple[str, str]] | None = None,
) -> list[bytes]:
    body = f"{status}: {text}\n".encode()
    headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
    start_response(status, [*headers, *(extra or [])])
    return [body]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # scrapes every few seconds would flood the server's stderr


class _MetricsServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a scrape in progress never holds up the server's exit


def serve_metrics(registry: ModelRegistry, address: str, port: int) -> tuple[Any, int]:
    """Start the metrics HTTP endpoint on a daemon thread; returns (server, bound port)."""
    return serve_collector(RegistryCollector(registry), address, port)


def serve_collector(collector: Collector, address: str, port: int) -> tuple[Any, int]:
    """``collector`` at /metrics on a daemon thread; returns (server, bound port)."""
    prom = CollectorRegistry()
    prom.register(collector)
    # IPv4 or IPv6, as the address asks (socketserver assumes IPv4).
    info = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)

    class Bound(_MetricsServer):
        address_family = info[0][0]

    app = metrics_only(make_wsgi_app(prom))
    server: WSGIServer = make_server(address, port, app, Bound, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server, server.server_port
