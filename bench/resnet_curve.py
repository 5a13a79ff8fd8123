"""ResNet-18's concurrency curve: the default configuration served at every level, each
measurement beside an in-process run of ONNX Runtime (one session with every core, at
the batch size that was fastest in a sweep of this run), so the ceiling drifts with the
machine as the served side does."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import curve
import in_process

# (concurrency, seconds, warm-up seconds) -> images/s served
ServedRate = Callable[[int, float, float], float]


def measure(
    served: ServedRate,
    sessions: list[Any],
    levels: list[int],
    durations: tuple[float, float],
    rounds: int,
) -> dict[str, Any]:
    duration, warmup = durations
    sweep = in_process.sweep({in_process.ONE_SESSION: sessions}, duration / 4, warmup / 2)
    batch = max(in_process.BATCHES, key=lambda b: sweep[in_process.ONE_SESSION, b])
    ours: dict[int, list[float]] = {level: [] for level in levels}
    ceiling: dict[int, list[float]] = {level: [] for level in levels}
    for _ in range(rounds):
        for level in levels:
            # The two halves of the in-process time surround the served run.
            before, _ = in_process.run(sessions, batch, duration / 4, warm_first=True)
            ours[level].append(served(level, duration, warmup))
            after, _ = in_process.run(sessions, batch, duration / 4, warm_first=True)
            ceiling[level].append((before + after) / 2)
    report = curve.summarize(ours, ceiling)
    report["in_process_batch"] = batch
    return report
