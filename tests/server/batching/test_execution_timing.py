"""execution.measure: what it times at load, and what it reports as timed."""

from __future__ import annotations

import asyncio
import time

import numpy as np

from warpserve.server.batching.executor import Executor
from warpserve.server.lifecycle import execution


class Sleeper:
    """A model whose run takes ``per_row_s`` per row; records each batch's rows."""

    def __init__(self, per_row_s: float) -> None:
        self.per_row_s = per_row_s
        self.batches: list[int] = []

    def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = len(inputs["x"])
        self.batches.append(rows)
        time.sleep(self.per_row_s * rows)
        return {"y": inputs["x"]}

    def close(self) -> None:
        pass


def timing(per_row_s: float, max_batch_size: int) -> tuple[execution.Timing, list[int]]:
    model = Sleeper(per_row_s)
    executor = Executor(model, batched=True)
    known = {"x": np.zeros((1, 2), np.float32)}
    try:
        measured = asyncio.run(execution.measure(executor, known, True, max_batch_size))
    finally:
        executor.close()
    return measured, model.batches


def test_a_model_over_the_inline_threshold_is_timed_at_batch_1_only() -> None:
    measured, batches = timing(execution.INLINE_THRESHOLD_NS / 1e9 * 1.5, 64)
    assert set(batches) == {1}
    assert measured.rows == 1, "no batch of 64 was timed, so none is reported"
    assert not measured.inline


def test_a_quick_model_is_timed_at_its_largest_batch_too() -> None:
    measured, batches = timing(0.0, 16)
    assert set(batches) == {1, 16}
    assert measured.rows == 16
    assert measured.inline
