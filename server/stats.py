"""Per-version counters behind ModelStatistics, the Prometheus metrics and the guard.

Updated only from the event loop thread, so plain integers suffice.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns


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

    def record_success(self, rows: int, total_ns: int) -> None:
        self.success.add(total_ns)
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

    def record_execution(
        self, batch_rows: int, requests: int, input_ns: int, infer_ns: int, output_ns: int
    ) -> None:
        self.execution_count += 1
        # Triton counts compute durations once per request in the batch.
        self.compute_input.add(input_ns * requests, requests)
        self.compute_infer.add(infer_ns * requests, requests)
        self.compute_output.add(output_ns * requests, requests)
        batch = self.batches.get(batch_rows)
        if batch is None:
            batch = self.batches[batch_rows] = BatchStats()
        batch.compute_input.add(input_ns)
        batch.compute_infer.add(infer_ns)
        batch.compute_output.add(output_ns)
