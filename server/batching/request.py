"""A request waiting in, or running from, a version's queue."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Outputs = dict[str, np.ndarray]

QUEUED, RUNNING, DONE = 0, 1, 2


@dataclass(eq=False)
class QueuedRequest:
    inputs: dict[str, np.ndarray]
    rows: int  # rows this request adds to a batch (1 if unbatched)
    signature: tuple[Any, ...]  # requests batch together only when these match
    future: asyncio.Future[Outputs]
    priority: int = 1
    deadline_ns: int = 0  # monotonic; 0: none
    delay_on_timeout: bool = False
    enqueued_ns: int = field(default_factory=time.monotonic_ns)
    state: int = QUEUED
    queue_ns: int = 0


def signature_of(inputs: dict[str, np.ndarray], batched: bool) -> tuple[Any, ...]:
    """Name, dtype and non-batch shape of every input, in a hashable form."""
    skip = 1 if batched else 0
    return tuple(
        (name, array.dtype.str, array.shape[skip:]) for name, array in sorted(inputs.items())
    )


def batch_runs(
    ids: list[int],
    rows: list[int],
    inputs: list[dict[str, np.ndarray]],
    limit: int,
    batched: bool,
) -> list[list[tuple[int, int]]]:
    """Requests (``ids``, their ``rows`` and ``inputs``) that arrived together, in the
    batches a version runs: alike inputs (``signature_of``) up to ``limit`` rows, each
    request alone where the version does not batch. Each batch lists (id, rows)."""
    if len(ids) == 1:
        return [[(ids[0], rows[0])]]
    runs: list[list[tuple[int, int]]] = []
    open_runs: dict[tuple[Any, ...], tuple[list[tuple[int, int]], int]] = {}
    for i, count, request_inputs in zip(ids, rows, inputs, strict=True):
        kind = signature_of(request_inputs, batched) if batched and limit else (i,)
        current = open_runs.get(kind)
        if current is None or current[1] + count > limit:
            current = ([], 0)
            runs.append(current[0])
        current[0].append((i, count))
        open_runs[kind] = (current[0], current[1] + count)
    return runs
