"""Scoring with top-k: the k best items per user, without materialising every score.

Scores are `users @ items.T` (+ `item_bias` when given, the recommender's popularity
term). Results are best first; equal scores rank the lower item id first, in every
provider, so answers are deterministic. float16 inputs accumulate in float32 and return
float16 scores; ids are int64.

The reference below is what the fused kernels remove. For U users, I items and D
dimensions in float32 it reads 4·D·(U + I) bytes, writes the 4·U·I-byte score matrix,
reads it again in `argpartition`, which also writes 8·U·I bytes of indices, and reads
those back to gather (32 users over 100k items: 13 MB of scores and 26 MB of indices,
against 13 MB of items). The kernels read the items once and keep only k candidates per
user (per thread, or per tile on a GPU).
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np

from warpserve.kernels import arrays
from warpserve.kernels.errors import KernelInputError
from warpserve.kernels.registry import Provider, register, select

DTYPES = ("float32", "float16")

register(Provider("topk", "numpy", frozenset({"cpu"}), __name__, "score_topk_reference"))
register(
    Provider(
        "topk",
        "numba",
        frozenset({"cpu"}),
        "warpserve.kernels.topk_numba",
        "score_topk_numba",
        requires=("numba",),
        rank=10,
    )
)
register(
    Provider(
        "topk",
        "triton",
        frozenset({"cuda"}),
        "warpserve.kernels.topk_triton",
        "score_topk_triton",
        takes="torch",
        requires=("triton", "torch"),
        rank=10,
        interpreter_env="TRITON_INTERPRET",
    )
)


def score_topk(
    users: Any, items: Any, k: int, provider: str = "auto", item_bias: Any = None
) -> tuple[Any, Any]:
    """`(scores, ids)`, each `[n_users, k]`, best first, for users `[U, D]`, items `[I, D]`.

    Answers in the kind of `users` (numpy, or torch on its device). Raises
    `KernelInputError` naming the bad argument (k larger than the item count included),
    `ProviderUnavailable` when `provider` cannot run here.
    """
    k = check_topk(users, items, k, item_bias)
    device = arrays.same_device({"users": users, "items": items, "item_bias": item_bias})
    chosen = select("topk", device, provider)
    convert = arrays.to_torch if chosen.takes == "torch" else arrays.to_numpy
    args = [convert(a) if a is not None else None for a in (users, items, item_bias)]
    scores, ids = chosen.load()(args[0], args[1], k, args[2])
    return arrays.like(scores, users), arrays.like(ids, users)


def check_topk(users: Any, items: Any, k: object, item_bias: Any) -> int:
    """Validate the arguments; returns k as an int."""
    arrays.check_array(users, "users", 2, DTYPES)
    arrays.check_array(items, "items", 2, DTYPES)
    if items.shape[0] == 0 or items.shape[1] == 0:
        raise KernelInputError("items", f"shape {tuple(items.shape)} has an empty dimension")
    if users.shape[1] != items.shape[1]:
        raise KernelInputError(
            "users", f"vectors have {users.shape[1]} dimensions, items have {items.shape[1]}"
        )
    if arrays.dtype_name(users) != arrays.dtype_name(items):
        raise KernelInputError(
            "items", f"dtype {arrays.dtype_name(items)} differs from users' {users.dtype}"
        )
    if item_bias is not None:
        arrays.check_array(item_bias, "item_bias", 1, (arrays.dtype_name(items),))
        if item_bias.shape[0] != items.shape[0]:
            raise KernelInputError(
                "item_bias", f"has {item_bias.shape[0]} values for {items.shape[0]} items"
            )
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise KernelInputError("k", f"must be an integer, got {type(k).__name__}")
    if not 1 <= k <= items.shape[0]:
        raise KernelInputError(
            "k", f"must be between 1 and the item count {items.shape[0]}, got {k}"
        )
    return operator.index(k)


def score_topk_reference(
    users: np.ndarray, items: np.ndarray, k: int, item_bias: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """The numpy reference: the full score matrix, `argpartition`, then sort the k."""
    scores = users.astype(np.float32) @ items.astype(np.float32).T
    if item_bias is not None:
        scores += item_bias.astype(np.float32)
    n_items = items.shape[0]
    if k < n_items:
        # The k-th best score is the threshold; every item at or above it is a candidate,
        # so ties at the boundary are settled by id below, not by argpartition's whim.
        kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1 : k]
        return _best_of(scores, scores >= kth, k, users.dtype)
    return _best_of(scores, np.ones_like(scores, dtype=bool), k, users.dtype)


def _best_of(
    scores: np.ndarray, candidate: np.ndarray, k: int, dtype: np.dtype
) -> tuple[np.ndarray, np.ndarray]:
    out_scores = np.empty((scores.shape[0], k), dtype)
    out_ids = np.empty((scores.shape[0], k), np.int64)
    for row in range(scores.shape[0]):
        ids = np.flatnonzero(candidate[row])
        order = np.lexsort((ids, -scores[row, ids]))[:k]
        out_ids[row] = ids[order]
        out_scores[row] = scores[row, ids[order]]
    return out_scores, out_ids
