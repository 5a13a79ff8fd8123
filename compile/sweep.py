"""Latency and throughput over a sweep of batch sizes, one run at a time.

Warm-up runs are excluded; each point runs until a time budget or a run count is spent,
whichever comes first, so slow variants do not stretch the sweep and fast ones still get
enough runs for a p99.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from warpserve.compile.specs import tile_rows

Run = Callable[[dict[str, np.ndarray]], object]
WARMUP_RUNS = 3
MIN_RUNS = 5
MAX_RUNS = 400


@dataclass(frozen=True)
class Point:
    batch: int
    runs: int
    median_ms: float
    p99_ms: float
    # Rows per second at the median run time. Not the mean: on a shared machine a run
    # that the OS parks for tens of ms would otherwise decide the comparison.
    throughput: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def default_batch_sizes(max_batch_size: int) -> list[int]:
    """1, 2, 4, ... up to and including max_batch_size."""
    sizes, size = [], 1
    while size < max_batch_size:
        sizes.append(size)
        size *= 2
    return [*sizes, max(max_batch_size, 1)]


def measure(run: Run, inputs: dict[str, np.ndarray], batch: int, seconds: float) -> Point:
    feed = tile_rows(inputs, batch)
    for _ in range(WARMUP_RUNS):
        run(feed)
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < MAX_RUNS and (len(times) < MIN_RUNS or time.perf_counter() < deadline):
        start = time.perf_counter()
        run(feed)
        times.append(time.perf_counter() - start)
    array = np.array(times)
    return Point(
        batch,
        len(times),
        float(np.median(array) * 1e3),
        float(np.percentile(array, 99) * 1e3),
        float(batch / np.median(array)),
    )


def sweep(
    run: Run,
    inputs: dict[str, np.ndarray],
    batches: list[int],
    seconds: float,
    on_point: Callable[[Point], None] | None = None,
) -> list[Point]:
    points = []
    for batch in batches:
        point = measure(run, inputs, batch, seconds)
        points.append(point)
        if on_point is not None:
            on_point(point)
    return points
