"""Per-version counters behind ModelStatistics, the Prometheus metrics and the guard.

Updated only from the event loop thread, so plain integers suffice.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns


# Upper bounds of the latency histograms' buckets, in microseconds (Triton's unit): from
# the tens of microseconds a tiny model answers in to the seconds a queued large one can
# take, about three buckets a decade, so histogram_quantile() is within a bucket's width.
LATENCY_BUCKETS_US = (
    25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000,
    100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000, 10_000_000,
)  # fmt: skip
_BOUNDS_NS = tuple(us * 1000 for us in LATENCY_BUCKETS_US)


class LatencyHistogram:
    """Counts per bucket of LATENCY_BUCKETS_US (the last one is +Inf), for a Prometheus
    histogram: unlike a window of recent samples, buckets add up across scrapes,
    versions and pods, so p99 over any span is a PromQL query. Adding is one bisect."""

    __slots__ = ("counts", "sum_ns")

    def __init__(self) -> None:
        self.counts = [0] * (len(_BOUNDS_NS) + 1)
        self.sum_ns = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.counts[bisect_left(_BOUNDS_NS, ns)] += count
        self.sum_ns += ns * count

    def cumulative(self) -> list[tuple[str, int]]:
        """(le, requests at or under it) pairs, +Inf last, as prometheus_client takes."""
        out, total = [], 0
        counts = list(self.counts)  # the metrics thread reads while the loop adds
        for bound, count in zip((*LATENCY_BUCKETS_US, "+Inf"), counts, strict=True):
            total += count
            out.append((str(bound), total))
        return out


@dataclass
class BatchStats:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


class LatencyWindow:
    """The last ``size`` request latencies, for percentiles without unbounded memory."""

    def __init__(self, size: int = 4096) -> None:
        self._values = np.zeros(size, dtype=np.int64)
        self._next = 0
        self._filled = 0

    def add(self, ns: int) -> None:
        self._values[self._next] = ns
        self._next = (self._next + 1) % len(self._values)
        self._filled = min(self._filled + 1, len(self._values))

    def __len__(self) -> int:
        return self._filled

    def percentiles_ms(self, qs: tuple[float, ...] = (50, 90, 99)) -> list[float]:
        if not self._filled:
            return [0.0 for _ in qs]
        values = self._values[: self._filled] / 1e6
        return [float(v) for v in np.percentile(values, qs)]


@dataclass(frozen=True)
class TimelineWindow:
    """What a version answered in a span of time: model latencies and error counts."""

    latencies_ms: np.ndarray  # queue plus compute, one per request that succeeded
    errors: int  # requests the model failed
    requests: int  # successes plus errors
    last_ns: int  # monotonic time of the newest sample in the span (0: none)


class RequestTimeline:
    """The last ``size`` requests a version executed, timestamped, for sliding windows.

    The batcher adds one entry per request it ran (queue plus compute time, or a model
    error); the latency guard reads spans of it. A ring of plain arrays: adding costs
    three stores, and a window is two boolean masks over at most ``size`` entries.
    """

    def __init__(self, size: int = 16384) -> None:
        self._at = np.zeros(size, dtype=np.int64)
        self._ns = np.zeros(size, dtype=np.int64)
        self._ok = np.zeros(size, dtype=np.bool_)
        self._next = 0
        self._filled = 0

    def add(self, latency_ns: int, ok: bool = True, now_ns: int | None = None) -> None:
        i = self._next
        self._at[i] = time.monotonic_ns() if now_ns is None else now_ns
        self._ns[i] = latency_ns
        self._ok[i] = ok
        self._next = (i + 1) % len(self._at)
        self._filled = min(self._filled + 1, len(self._at))

    def __len__(self) -> int:
        return self._filled

    @property
    def last_ns(self) -> int:
        return int(self._at[self._next - 1]) if self._filled else 0

    def window(self, start_ns: int, end_ns: int) -> TimelineWindow:
        """Requests finished in [start_ns, end_ns] (monotonic)."""
        at, ok = self._at[: self._filled], self._ok[: self._filled]
        inside = (at >= start_ns) & (at <= end_ns)
        succeeded = inside & ok
        last = int(at[inside].max()) if inside.any() else 0
        return TimelineWindow(
            self._ns[: self._filled][succeeded] / 1e6,
            int(np.count_nonzero(inside & ~ok)),
            int(np.count_nonzero(inside)),
            last,
        )


@dataclass
class VersionStats:
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    inference_count: int = 0  # rows
    execution_count: int = 0  # backend executions
    last_inference_ms: int = 0
    failures_by_reason: dict[str, int] = field(default_factory=dict)
    batches: dict[int, BatchStats] = field(default_factory=dict)
    latency: LatencyWindow = field(default_factory=LatencyWindow)
    shadow_max_abs_diff: float = 0.0
    timeline: RequestTimeline = field(default_factory=RequestTimeline)
    # Successful requests end to end; queue time; compute time (input + infer + output)
    # per request, as the nv_inference_*_duration_us counters split it.
    request_histogram: LatencyHistogram = field(default_factory=LatencyHistogram)
    queue_histogram: LatencyHistogram = field(default_factory=LatencyHistogram)
    compute_histogram: LatencyHistogram = field(default_factory=LatencyHistogram)

    def record_success(self, rows: int, total_ns: int) -> None:
        self.success.add(total_ns)
        self.request_histogram.add(total_ns)
        self.inference_count += rows
        self.last_inference_ms = int(time.time() * 1000)
        self.latency.add(total_ns)

    def record_failure(self, reason: str, total_ns: int) -> None:
        self.fail.add(total_ns)
        self.failures_by_reason[reason] = self.failures_by_reason.get(reason, 0) + 1
        self.last_inference_ms = int(time.time() * 1000)

    def record_inline(self, rows: int, infer_ns: int) -> None:
        """One request run at once on its own: no queue time, nothing to gather or scatter."""
        self.queue.count += 1
        self.queue_histogram.add(0)
        self.compute_histogram.add(infer_ns)
        self.execution_count += 1
        self.compute_input.count += 1
        self.compute_infer.add(infer_ns)
        self.compute_output.count += 1
        batch = self.batches.get(rows)
        if batch is None:
            batch = self.batches[rows] = BatchStats()
        batch.compute_input.count += 1
        batch.compute_infer.add(infer_ns)
        batch.compute_output.count += 1

    def record_queued(self, queue_ns: int) -> None:
        self.queue.add(queue_ns)
        self.queue_histogram.add(queue_ns)

    def record_execution(
        self, batch_rows: int, requests: int, input_ns: int, infer_ns: int, output_ns: int
    ) -> None:
        self.execution_count += 1
        # Triton counts compute durations once per request in the batch.
        self.compute_input.add(input_ns * requests, requests)
        self.compute_infer.add(infer_ns * requests, requests)
        self.compute_output.add(output_ns * requests, requests)
        self.compute_histogram.add(input_ns + infer_ns + output_ns, requests)
        batch = self.batches.get(batch_rows)
        if batch is None:
            batch = self.batches[batch_rows] = BatchStats()
        batch.compute_input.add(input_ns)
        batch.compute_infer.add(infer_ns)
        batch.compute_output.add(output_ns)
