"""Latency and throughput over a sweep of batch sizes, every contender measured side by side.

On a shared machine the speed of everything drifts by tens of percent within seconds, so
a variant measured a few seconds after eager PyTorch is compared with a different machine.
Each batch size is therefore measured in rounds: in every round each contender (the
variants and eager PyTorch) runs one short slice, in an order that rotates between rounds,
and a variant's speed-up is the median over rounds of its ratio to eager in the same round.
Warm-up runs are excluded; a slice runs until its share of the time budget or of the run
count is spent, so slow contenders do not stretch the sweep and fast ones still get enough
runs for a p99.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from warpserve.compile.specs import tile_rows

Run = Callable[[dict[str, np.ndarray]], object]
WARMUP_RUNS = 3
MIN_RUNS = 5
MAX_RUNS = 400
ROUNDS = 5


@dataclass(frozen=True)
class Point:
    batch: int
    runs: int
    median_ms: float
    p99_ms: float
    # Rows per second at the median run time. Not the mean: on a shared machine a run
    # that the OS parks for tens of ms would otherwise decide the comparison.
    throughput: float
    # Eager PyTorch's median run time over this one's, the median over rounds measured
    # side by side (see the module's docstring); None for eager itself.
    vs_eager: float | None = None

    def as_dict(self) -> dict[str, float | None]:
        return asdict(self)


@dataclass(frozen=True)
class Contender:
    """One thing measured: a variant, or eager PyTorch at one thread count."""

    name: str
    run: Run
    enter: Callable[[], None] | None = None  # before each of its slices (e.g. torch threads)


@dataclass
class Comparison:
    points: dict[str, list[Point]] = field(default_factory=dict)
    # name -> batch -> the median run time (s) of each round's slice, in round order
    rounds: dict[str, dict[int, list[float]]] = field(default_factory=dict)

    def best_of(self, names: list[str]) -> list[Point]:
        """Per batch size, the point of whichever of ``names`` ran fastest there."""
        curves = [self.points[n] for n in names]
        return [max(points, key=lambda p: p.throughput) for points in zip(*curves, strict=True)]

    def speedup(self, name: str, batch: int, baseline: list[str]) -> float:
        """Median over rounds of the baseline's time / ``name``'s, against whichever of
        ``baseline`` was fastest at ``batch`` overall. Not the fastest in each round: the
        lesser of two noisy times is biased low, which would count against the variant."""
        fastest = min(baseline, key=lambda b: self._median(b, batch))
        pairs = zip(self.rounds[fastest][batch], self.rounds[name][batch], strict=True)
        return float(statistics.median(b / o for b, o in pairs))

    def _median(self, name: str, batch: int) -> float:
        return next(p.median_ms for p in self.points[name] if p.batch == batch)

    def against(self, name: str, baseline: list[str]) -> list[Point]:
        """``name``'s points with their speed-up over the fastest of ``baseline``."""
        return [
            replace(p, vs_eager=round(self.speedup(name, p.batch, baseline), 3))
            for p in self.points[name]
        ]


def default_batch_sizes(max_batch_size: int) -> list[int]:
    """1, 2, 4, ... up to and including max_batch_size."""
    sizes, size = [], 1
    while size < max_batch_size:
        sizes.append(size)
        size *= 2
    return [*sizes, max(max_batch_size, 1)]


def measure(run: Run, inputs: dict[str, np.ndarray], batch: int, seconds: float) -> Point:
    """One contender alone at one batch size."""
    feed = tile_rows(inputs, batch)
    for _ in range(WARMUP_RUNS):
        run(feed)
    return _point(batch, _timed(run, feed, seconds, MIN_RUNS, MAX_RUNS))


def compare(
    contenders: list[Contender],
    inputs: dict[str, np.ndarray],
    batches: list[int],
    seconds: float,
    rounds: int = ROUNDS,
    on_batch: Callable[[int], None] | None = None,
) -> Comparison:
    """Every contender at every batch size, ``seconds`` each, in ``rounds`` turns."""
    result = Comparison({c.name: [] for c in contenders}, {c.name: {} for c in contenders})
    slice_s = seconds / rounds
    least, most = max(1, MIN_RUNS // rounds), max(1, MAX_RUNS // rounds)
    for batch in batches:
        feed = tile_rows(inputs, batch)
        times: dict[str, list[float]] = {c.name: [] for c in contenders}
        for contender in contenders:
            _enter(contender)
            for _ in range(WARMUP_RUNS):
                contender.run(feed)
            result.rounds[contender.name][batch] = []
        for i in range(rounds):
            shift = i % len(contenders)
            for contender in contenders[shift:] + contenders[:shift]:
                _enter(contender)
                taken = _timed(contender.run, feed, slice_s, least, most)
                times[contender.name] += taken
                result.rounds[contender.name][batch].append(float(np.median(taken)))
        for contender in contenders:
            medians = result.rounds[contender.name][batch]
            result.points[contender.name].append(_point(batch, times[contender.name], medians))
        if on_batch is not None:
            on_batch(batch)
    return result


def _enter(contender: Contender) -> None:
    if contender.enter is not None:
        contender.enter()


def _timed(
    run: Run, feed: dict[str, np.ndarray], seconds: float, least: int, most: int
) -> list[float]:
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < most and (len(times) < least or time.perf_counter() < deadline):
        start = time.perf_counter()
        run(feed)
        times.append(time.perf_counter() - start)
    return times


def _point(batch: int, times: list[float], medians: list[float] | None = None) -> Point:
    """With ``medians`` (one per round) the median is theirs: pooling the runs would weigh
    the rounds where the machine was quiet, which fit the most runs, above the others."""
    array = np.array(times)
    median = float(np.median(medians if medians else array))
    return Point(
        batch,
        len(times),
        median * 1e3,
        float(np.percentile(array, 99) * 1e3),
        batch / median,
    )
