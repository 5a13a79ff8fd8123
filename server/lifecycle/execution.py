"""How long a loaded instance's runs take, measured at load, for execution=auto: whether
its batches run on the event loop (inline) or on worker threads, and how many rows an
inline batch may take. ``ModelVersion`` applies what this measures; compile's mirror of
the rule (``compile/choice.inline_rows``) decides the same way on its sweep."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import numpy as np

from warpserve.server.batching.executor import Executor
from warpserve.server.batching.request import QueuedRequest
from warpserve.server.lifecycle import warmup

# A model whose batch-1 run takes longer keeps worker threads, so it never stalls the loop.
INLINE_THRESHOLD_NS = 200_000
# An inline batch must not hold the loop longer either (health checks, other models).
INLINE_BATCH_LIMIT_NS = 2_000_000
# A model whose full batch passes INLINE_BATCH_LIMIT_NS runs inline batches of as many rows
# as stay under it, if that is at least this many; else worker threads.
MIN_INLINE_ROWS = 4


@dataclass(frozen=True)
class Timing:
    one_ns: float  # a batch-1 run's median
    rows: int  # the batch measured last (max_batch_size, or halved from it; 1: none)
    rows_ns: float  # its median

    @property
    def inline(self) -> bool:
        return self.one_ns < INLINE_THRESHOLD_NS and self.rows_ns < INLINE_BATCH_LIMIT_NS


def direct_request(inputs: dict[str, np.ndarray], rows: int) -> QueuedRequest:
    """A request handed straight to an executor (warm-up, timing), never queued."""
    return QueuedRequest(inputs, rows, (), asyncio.get_running_loop().create_future())


def _median_run_ns(executor: Executor, request: QueuedRequest, runs: int = 15) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter_ns()
        executor.run([request])
        times.append(time.perf_counter_ns() - start)
    return float(np.median(times))


async def measure(
    executor: Executor, known: dict[str, np.ndarray], batched: bool, max_batch_size: int
) -> Timing:
    """Time ``executor`` on ``known`` inputs (warm-up or golden) at batch 1 and, where
    that is under INLINE_THRESHOLD_NS, at the largest batch that stays under
    INLINE_BATCH_LIMIT_NS, halving from a full one down to MIN_INLINE_ROWS."""
    one = direct_request(warmup.with_rows(known, 1) if batched else known, 1)
    one_ns = await asyncio.to_thread(_median_run_ns, executor, one)
    rows_ns, rows = one_ns, 1  # no larger batch timed
    if one_ns < INLINE_THRESHOLD_NS and max_batch_size > 1:
        rows = max_batch_size
        while True:
            batch = direct_request(warmup.with_rows(known, rows), rows)
            rows_ns = await asyncio.to_thread(_median_run_ns, executor, batch, 5)
            if rows_ns < INLINE_BATCH_LIMIT_NS or rows <= MIN_INLINE_ROWS:
                break
            rows = max(rows // 2, MIN_INLINE_ROWS)
    return Timing(one_ns, rows, rows_ns)
