"""Scoring with top-k: every provider against the numpy reference.

Scores must match to 1e-4 (float32; the dot products are summed in another order) and
2e-2 (float16 outputs). Ids must match exactly: the inputs are random floats, so no two
scores in a row tie, except in the test that makes ties on purpose.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tests.kernels.compare import assert_close
from tests.kernels.conftest import needs_triton
from warpserve.kernels.errors import KernelInputError
from warpserve.kernels.topk import score_topk

TOLERANCE = {"float32": 1e-4, "float16": 2e-2}
# (users, items, dims, k): single item and k, odd sizes, k equal to the item count,
# and an item count that is no multiple of the GPU block (128) or the CPU task.
SHAPES = [(1, 1, 1, 1), (7, 50, 7, 3), (3, 1023, 19, 10), (2, 37, 5, 37), (0, 9, 4, 2)]


def _inputs(u: int, n: int, d: int, dtype: str, seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    users = rng.standard_normal((u, d)).astype(dtype)
    items = rng.standard_normal((n, d)).astype(dtype)
    return users, items, rng.standard_normal(n).astype(dtype)


def test_reference_matches_a_full_sort() -> None:
    users, items, bias = _inputs(5, 300, 8, "float32")
    scores, ids = score_topk(users, items, 20, provider="numpy", item_bias=bias)
    full = users @ items.T + bias
    want_ids = np.argsort(-full, axis=1, kind="stable")[:, :20]
    np.testing.assert_array_equal(ids, want_ids)
    assert_close(scores, np.take_along_axis(full, want_ids, 1), 1e-5, 1e-5)


def _check_against_reference(provider: str, shape: tuple[int, ...], dtype: str) -> None:
    u, n, d, k = shape
    users, items, bias = _inputs(u, n, d, dtype)
    for item_bias in (None, bias):
        want_scores, want_ids = score_topk(users, items, k, "numpy", item_bias)
        scores, ids = score_topk(users, items, k, provider, item_bias)
        assert ids.dtype == np.int64
        assert ids.shape == (u, k)
        if dtype == "float32":  # float16 rounding may swap near-equal neighbours
            np.testing.assert_array_equal(ids, want_ids)
        assert_close(scores, want_scores, TOLERANCE[dtype], TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("shape", SHAPES)
def test_numba_matches_reference(shape: tuple[int, int, int, int], dtype: str) -> None:
    _check_against_reference("numba", shape, dtype)


# The interpreter runs tl.topk's bitonic network op by op (seconds per block), so the
# Triton shapes stay small; several blocks are covered below with a small block size.
@needs_triton
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (7, 50, 7, 3), (0, 9, 4, 2)])
def test_triton_matches_reference(shape: tuple[int, int, int, int], dtype: str) -> None:
    _check_against_reference("triton", shape, dtype)


@needs_triton
@pytest.mark.parametrize(("shape", "block_i"), [((3, 101, 19, 10), 32), ((2, 37, 5, 20), 16)])
def test_triton_over_several_item_blocks(shape: tuple[int, int, int, int], block_i: int) -> None:
    from warpserve.kernels import topk_triton

    u, n, d, k = shape
    users, items, bias = _inputs(u, n, d, "float32")
    want_scores, want_ids = score_topk(users, items, k, "numpy", bias)
    tensors = [topk_triton.torch.from_numpy(a) for a in (users, items, bias)]
    scores, ids = topk_triton.score_topk_triton(tensors[0], tensors[1], k, tensors[2], block_i)
    np.testing.assert_array_equal(ids.numpy(), want_ids)
    assert_close(scores, want_scores, 1e-4, 1e-4)


def test_numba_over_several_tiles_of_users_and_items() -> None:
    from warpserve.kernels.topk_numba import tile_shape

    users, items, bias = _inputs(300, 1023, 64, "float32")
    block, chunk = tile_shape(300, 64)
    assert block < 300 and chunk < 1023  # the shape really spans several tiles each way
    want = score_topk(users, items, 10, "numpy", bias)
    got = score_topk(users, items, 10, "numba", bias)
    np.testing.assert_array_equal(got[1], want[1])
    assert_close(got[0], want[0], 1e-4, 1e-4)


def test_numba_every_item_entering_the_heap() -> None:
    # Scores rising with the id: each item beats the root, the worst case of the scan.
    items = np.ascontiguousarray(np.linspace(0, 1, 2000, dtype=np.float32)[:, None])
    scores, ids = score_topk(np.ones((2, 1), np.float32), items, 7, "numba")
    np.testing.assert_array_equal(ids, [np.arange(1999, 1992, -1)] * 2)
    np.testing.assert_array_equal(scores, items[ids[:, :], 0])


def test_numba_ties_across_tiles_rank_the_lower_id_first() -> None:
    # Every score equal, over several item chunks and (with two threads) two tasks.
    items = np.ones((20_000, 4), np.float32)
    scores, ids = score_topk(np.ones((3, 4), np.float32), items, 5, "numba")
    np.testing.assert_array_equal(scores, np.full((3, 5), 4.0))
    np.testing.assert_array_equal(ids, [np.arange(5)] * 3)


def test_numba_parallel_path_over_many_items() -> None:
    users, items, bias = _inputs(4, 40_001, 16, "float32")  # several tasks of 8192 items
    want = score_topk(users, items, 17, "numpy", bias)
    got = score_topk(users, items, 17, "numba", bias)
    np.testing.assert_array_equal(got[1], want[1])
    assert_close(got[0], want[0], 1e-4, 1e-4)


@pytest.mark.parametrize("provider", ["numpy", "numba", pytest.param("triton", marks=needs_triton)])
def test_ties_rank_the_lower_id_first(provider: str) -> None:
    users = np.ones((2, 4), np.float32)
    items = np.repeat(np.arange(5, dtype=np.float32)[:, None], 4, axis=1)[[1, 3, 1, 3, 0, 2]]
    items = np.ascontiguousarray(items)  # scores 4, 12, 4, 12, 0, 8
    scores, ids = score_topk(users, items, 4, provider)
    np.testing.assert_array_equal(ids, [[1, 3, 5, 0]] * 2)
    np.testing.assert_array_equal(scores, [[12, 12, 8, 4]] * 2)


def test_torch_tensors_come_back_as_torch_tensors() -> None:
    torch = pytest.importorskip("torch")
    users, items, _ = (torch.from_numpy(a) for a in _inputs(3, 40, 6, "float32"))
    scores, ids = score_topk(users, items, 5)
    assert isinstance(scores, torch.Tensor) and isinstance(ids, torch.Tensor)
    want = torch.topk(users @ items.T, 5, dim=1)
    torch.testing.assert_close(scores, want.values)
    torch.testing.assert_close(ids, want.indices)


@pytest.mark.parametrize(
    ("change", "argument", "message"),
    [
        ({"k": 10}, "k", "between 1 and the item count 6"),
        ({"k": 0}, "k", "between 1 and the item count"),
        ({"k": 2.0}, "k", "must be an integer"),
        ({"k": True}, "k", "must be an integer"),
        ({"items": np.zeros((0, 3), np.float32)}, "items", "empty dimension"),
        ({"items": np.zeros((6, 4), np.float32)}, "users", "3 dimensions, items have 4"),
        ({"items": np.zeros((6, 3), np.float16)}, "items", "differs from users"),
        ({"users": np.zeros((3,), np.float32)}, "users", "expected 2 dimensions"),
        ({"users": np.zeros((3, 2), np.float32).T}, "users", "C-contiguous"),
        ({"users": np.zeros((2, 3), np.int32)}, "users", "dtype int32"),
        ({"item_bias": np.zeros(5, np.float32)}, "item_bias", "5 values for 6 items"),
    ],
)
def test_bad_input_names_the_argument(change: dict, argument: str, message: str) -> None:
    args: dict[str, Any] = {"users": np.zeros((2, 3), np.float32), "k": 2}
    args |= {"items": np.zeros((6, 3), np.float32), **change}
    with pytest.raises(KernelInputError, match=message) as raised:
        score_topk(**args)
    assert raised.value.argument == argument
