"""Prometheus histograms of request latency and batch size (``warpserve_*``).

Triton's ``nv_inference_*_duration_us`` counters give means only; a percentile needs
buckets. These add up across scrapes, versions and pods, so p99 over any span is
``histogram_quantile(0.99, sum by (le) (rate(warpserve_request_duration_us_bucket[5m])))``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client.core import HistogramMetricFamily, Metric

from warpserve.server.lifecycle.version import ModelVersion

LABELS = ["model", "version"]
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
LATENCY_FAMILIES = (
    ("request", "Successful requests end to end (decode to answer)"),
    ("queue", "Time requests waited in the batcher's queue"),
    ("compute", "Compute time per request (input, infer and output)"),
)


def histogram_families(versions: Iterable[ModelVersion]) -> Iterator[Metric]:
    latency = {
        what: HistogramMetricFamily(
            f"warpserve_{what}_duration_us",
            f"{text}, in us; le is the bucket's upper bound",
            labels=LABELS,
        )
        for what, text in LATENCY_FAMILIES
    }
    batch = HistogramMetricFamily("warpserve_batch_size", "Rows per model execution", labels=LABELS)
    for mv in versions:
        s, labels = mv.stats, [mv.name, str(mv.version)]
        for what, hist in (
            ("request", s.request_histogram),
            ("queue", s.queue_histogram),
            ("compute", s.compute_histogram),
        ):
            latency[what].add_metric(labels, hist.cumulative(), hist.sum_ns / 1000)
        batch.add_metric(labels, *batch_buckets(mv))
    yield from latency.values()
    yield batch


def batch_buckets(mv: ModelVersion) -> tuple[list[tuple[str, float]], float]:
    """Cumulative executions per batch size, and the rows they ran, from the per-size
    statistics ModelStatistics already keeps (nothing is added to the request path)."""
    executions = {rows: b.compute_infer.count for rows, b in list(mv.stats.batches.items())}
    buckets = []
    for bound in (*BATCH_BUCKETS, float("inf")):
        total = sum(n for rows, n in executions.items() if rows <= bound)
        buckets.append(("+Inf" if bound == float("inf") else str(bound), float(total)))
    return buckets, float(sum(rows * n for rows, n in executions.items()))
