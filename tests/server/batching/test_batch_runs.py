"""batch_runs: requests that arrived together, split into the batches a version runs."""

from __future__ import annotations

import numpy as np

from warpserve.server.batching.request import batch_runs


def _inputs(rows: int, width: int = 4, dtype: type = np.float32) -> dict[str, np.ndarray]:
    return {"x": np.zeros((rows, width), dtype)}


def test_alike_requests_share_runs_up_to_the_limit() -> None:
    rows = [1, 3, 2, 2, 1]
    inputs = [_inputs(r) for r in rows]
    runs = batch_runs([10, 11, 12, 13, 14], rows, inputs, limit=4, batched=True)
    assert runs == [[(10, 1), (11, 3)], [(12, 2), (13, 2)], [(14, 1)]]


def test_unlike_inputs_run_apart() -> None:
    inputs = [_inputs(1), _inputs(1, width=5), _inputs(1), _inputs(1, dtype=np.float64)]
    runs = batch_runs([0, 1, 2, 3], [1, 1, 1, 1], inputs, limit=8, batched=True)
    assert runs == [[(0, 1), (2, 1)], [(1, 1)], [(3, 1)]]


def test_a_version_that_does_not_batch_runs_each_alone() -> None:
    inputs = [_inputs(1) for _ in range(3)]
    for limit, batched in ((0, True), (8, False)):
        assert batch_runs([0, 1, 2], [1, 1, 1], inputs, limit, batched) == [
            [(0, 1)],
            [(1, 1)],
            [(2, 1)],
        ]
