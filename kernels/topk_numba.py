"""Numba CPU kernel for scoring with top-k (see `warpserve.kernels.topk`).

Threads split the items; each streams its range once and, per item, scores every user
(the user matrix stays in L1) into a per-user min-heap of the k best so far. Most items
fail the comparison with the heap's root and cost one dot product; no score is stored.
The threads' heaps are merged at the end (threads · k candidates per user).

"reassoc" fastmath lets LLVM vectorise the dot product's sum (the order of a float sum
changes in the last bits, as between any two BLAS builds); NaN is not assumed away.
"""

from __future__ import annotations

import numba
import numpy as np

# Items per thread below which one thread is faster than starting the pool.
ITEMS_PER_TASK = 8192


@numba.njit(nogil=True, cache=True, inline="always")
def _better(s1: float, i1: int, s2: float, i2: int) -> bool:
    return s1 > s2 or (s1 == s2 and i1 < i2)


@numba.njit(nogil=True, cache=True)
def _push(heap_s, heap_i, s, i):
    """Replace the root (the worst kept) by (s, i) and sift it down."""
    k = heap_s.shape[0]
    pos = 0
    while True:
        child = 2 * pos + 1
        if child >= k:
            break
        right = child + 1
        if right < k and _better(heap_s[child], heap_i[child], heap_s[right], heap_i[right]):
            child = right
        if not _better(s, i, heap_s[child], heap_i[child]):
            break
        heap_s[pos] = heap_s[child]
        heap_i[pos] = heap_i[child]
        pos = child
    heap_s[pos] = s
    heap_i[pos] = i


@numba.njit(nogil=True, cache=True, fastmath={"reassoc", "contract"})
def _scan(users, items, bias, i0, i1, heap_s, heap_i):
    n_users, dims = users.shape
    for j in range(i0, i1):
        item = items[j]
        for u in range(n_users):
            user = users[u]
            s = bias[j]
            for d in range(dims):
                s += user[d] * item[d]
            # An unfilled slot holds id -1 and -inf, so the first k items always enter.
            if heap_i[u, 0] < 0 or _better(s, j, heap_s[u, 0], heap_i[u, 0]):
                _push(heap_s[u], heap_i[u], s, j)


@numba.njit(nogil=True, cache=True, parallel=True)
def _scan_parallel(users, items, bias, bounds, heap_s, heap_i):
    for t in numba.prange(bounds.shape[0] - 1):
        _scan(users, items, bias, bounds[t], bounds[t + 1], heap_s[t], heap_i[t])


def score_topk_numba(
    users: np.ndarray, items: np.ndarray, k: int, item_bias: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k scores and ids on the CPU; inputs already checked by `topk.score_topk`."""
    u32 = users.astype(np.float32, copy=False)
    i32 = items.astype(np.float32, copy=False)
    n_items = items.shape[0]
    bias = np.zeros(n_items, np.float32) if item_bias is None else item_bias.astype(np.float32)
    tasks = max(1, min(numba.get_num_threads(), n_items // ITEMS_PER_TASK))
    bounds = np.linspace(0, n_items, tasks + 1).astype(np.int64)
    heap_s = np.full((tasks, users.shape[0], k), -np.inf, np.float32)
    heap_i = np.full((tasks, users.shape[0], k), -1, np.int64)
    if tasks == 1:
        _scan(u32, i32, bias, 0, n_items, heap_s[0], heap_i[0])
    else:
        _scan_parallel(u32, i32, bias, bounds, heap_s, heap_i)
    scores, ids = _merge(heap_s, heap_i, k)
    return scores.astype(users.dtype, copy=False), ids


def _merge(heap_s: np.ndarray, heap_i: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best k of every thread's heap per user, best first, lower id first on ties."""
    scores = np.concatenate(list(heap_s), axis=1)  # [users, tasks·k]
    ids = np.concatenate(list(heap_i), axis=1)
    # Empty slots (-1) exist only when a thread saw fewer than k items; they sort last.
    order = np.lexsort((np.where(ids < 0, np.iinfo(np.int64).max, ids), -scores), axis=1)[:, :k]
    return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)
