"""Numba CPU kernel for scoring with top-k (see `warpserve.kernels.topk`).

Items go through in chunks: SciPy's OpenBLAS sgemm scores a block of users against a
chunk (`np.dot` from Numba, no Python between calls) into a scratch tile that stays in L2,
and each user's row of the tile then feeds a min-heap of the k best so far. Once a heap
is full most of a row cannot enter it: runs of 32 scores are counted against the root
in a loop LLVM vectorises and skipped whole when none is above, so the scalar heap test
touches few items. No score matrix is materialised; beyond the inputs memory holds the
tile and the heaps.

The scalar loop nest this replaced (a dot product per item and user) ran 32 users over
1000 items in about 0.3 ms, where the tiles' products take 25 µs and the selection 50;
and its Python around the call (bounds, heaps, a numpy lexsort merge) cost more than
the arithmetic at batch 1. Now one compiled call scans, merges and sorts.

Catalogues past `ITEMS_PER_TASK` per thread split their items over Numba's threads, each
with its own heaps and tile, merged at the end (threads · k candidates per user). Tiles
stay under OpenBLAS's one-thread size (M·N·K ≤ 262,144), so a product never wakes BLAS
threads on top of Numba's.
"""

from __future__ import annotations

import numba
import numpy as np

# Items per thread below which one thread is faster than starting the pool.
ITEMS_PER_TASK = 8192
# OpenBLAS runs a product on one thread up to this M·N·K (see `mlp_numba`).
BLAS_ONE_THREAD_MNK = 65536 * 4
# A tile of at most this many float32 scores (64 KiB) stays in L2 for the selection.
TILE_ELEMENTS = 1 << 14
# Scores skipped together on their maximum once a heap is full.
RUN = 32
_NEG_INF = np.float32(-np.inf)


@numba.njit(nogil=True, cache=True, inline="always")
def _better(s1: float, i1: int, s2: float, i2: int) -> bool:
    return s1 > s2 or (s1 == s2 and i1 < i2)


@numba.njit(nogil=True, cache=True, inline="always")
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


@numba.njit(nogil=True, cache=True)
def _offer(heap_s, heap_i, s, i):
    # An unfilled slot holds id -1 and -inf, so the first k items always enter (NaN too,
    # as before a heap is full any score does).
    if heap_i[0] < 0 or _better(s, i, heap_s[0], heap_i[0]):
        _push(heap_s, heap_i, s, i)


@numba.njit(nogil=True, cache=True, error_model="numpy")
def _select(row, first, heap_s, heap_i):
    """Offer one user's tile row (ids from `first` on, in increasing order) to its heap.

    Ids only increase within a scan, so once the heap is full an item enters only with a
    score above the root's (an equal one loses the tie, NaN never compares above). A run
    of scores is first counted against that threshold, a compare-and-add loop LLVM
    vectorises without fast-math; only runs holding a candidate are walked one by one.
    """
    n = row.shape[0]
    j = 0
    while j < n and heap_i[0] < 0:
        _offer(heap_s, heap_i, row[j], first + j)
        j += 1
    threshold = heap_s[0]
    for r0 in range(j, n, RUN):
        r1 = min(r0 + RUN, n)
        above = 0
        for i in range(r0, r1):
            above += row[i] > threshold
        if above == 0:
            continue
        for i in range(r0, r1):
            if row[i] > threshold:
                _push(heap_s, heap_i, row[i], first + i)
                threshold = heap_s[0]


@numba.njit(nogil=True, cache=True, fastmath={"contract"}, error_model="numpy")
def _scan(users, items, bias, i0, i1, heap_s, heap_i, user_block, chunk):
    """Heaps of the best k of items [i0, i1) for every user: tiles of `user_block` users
    by `chunk` items scored by sgemm, bias added, rows selected while in cache."""
    n_users = users.shape[0]
    tile = np.empty(user_block * chunk, np.float32)
    for c0 in range(i0, i1, chunk):
        c1 = min(c0 + chunk, i1)
        n = c1 - c0
        items_t = items[c0:c1].T  # [dims, n], Fortran order: sgemm transposes for free
        for u0 in range(0, n_users, user_block):
            u1 = min(u0 + user_block, n_users)
            scores = tile[: (u1 - u0) * n].reshape((u1 - u0, n))
            np.dot(users[u0:u1], items_t, scores)
            for u in range(u1 - u0):
                row = scores[u]
                for j in range(n):
                    row[j] += bias[c0 + j]
                _select(row, c0, heap_s[u0 + u], heap_i[u0 + u])


@numba.njit(nogil=True, cache=True)
def _finish(heap_s, heap_i, k, out_s, out_i):
    """Best k of every task's heap per user into the outputs, best first (lower id first
    on ties). Empty slots (id -1, when a task saw fewer than k items) are left out."""
    tasks, n_users = heap_s.shape[0], heap_s.shape[1]
    best_s = np.empty(k, np.float32)
    best_i = np.empty(k, np.int64)
    for u in range(n_users):
        best_s[:] = _NEG_INF
        best_i[:] = -1
        for t in range(tasks):
            for j in range(heap_s.shape[2]):
                if heap_i[t, u, j] >= 0:
                    _offer(best_s, best_i, heap_s[t, u, j], heap_i[t, u, j])
        # Heap sort: the root is the worst kept, so it goes to the back.
        for last in range(k - 1, -1, -1):
            out_s[u, last] = best_s[0]
            out_i[u, last] = best_i[0]
            if last:
                _push(best_s[:last], best_i[:last], best_s[last], best_i[last])


@numba.njit(nogil=True, cache=True)
def _topk_serial(users, items, bias, k, user_block, chunk, out_s, out_i):
    heap_s = np.full((1, users.shape[0], k), _NEG_INF, np.float32)
    heap_i = np.full((1, users.shape[0], k), -1, np.int64)
    _scan(users, items, bias, 0, items.shape[0], heap_s[0], heap_i[0], user_block, chunk)
    _finish(heap_s, heap_i, k, out_s, out_i)


@numba.njit(nogil=True, cache=True, parallel=True)
def _topk_parallel(users, items, bias, k, user_block, chunk, tasks, out_s, out_i):
    n_items = items.shape[0]
    heap_s = np.full((tasks, users.shape[0], k), _NEG_INF, np.float32)
    heap_i = np.full((tasks, users.shape[0], k), -1, np.int64)
    for t in numba.prange(tasks):
        i0, i1 = n_items * t // tasks, n_items * (t + 1) // tasks
        _scan(users, items, bias, i0, i1, heap_s[t], heap_i[t], user_block, chunk)
    _finish(heap_s, heap_i, k, out_s, out_i)


def tile_shape(n_users: int, dims: int) -> tuple[int, int]:
    """(users, items) per tile: its product on one BLAS thread, its scores in L2."""
    chunk = 256
    users = max(1, min(n_users, BLAS_ONE_THREAD_MNK // (chunk * dims), TILE_ELEMENTS // chunk))
    chunk = max(1, min(BLAS_ONE_THREAD_MNK // (users * dims), TILE_ELEMENTS // users))
    return users, chunk


def score_topk_numba(
    users: np.ndarray, items: np.ndarray, k: int, item_bias: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k scores and ids on the CPU; inputs already checked by `topk.score_topk`."""
    bias = np.zeros(items.shape[0], np.float32) if item_bias is None else item_bias
    scorer = TopKScorer(items, k, bias)
    scores, ids = scorer(np.ascontiguousarray(users, dtype=np.float32))
    return scores.astype(users.dtype, copy=False), ids


class TopKScorer:
    """Items (and bias) converted once for repeated `score_topk` calls on float32 users:
    the kernel backend's scoring step. Call with a C-contiguous float32 `[U, D]` array."""

    def __init__(self, items: np.ndarray, k: int, item_bias: np.ndarray | None) -> None:
        self.items = np.ascontiguousarray(items, dtype=np.float32)
        n_items = self.items.shape[0]
        self.bias = (
            np.zeros(n_items, np.float32)
            if item_bias is None
            else np.ascontiguousarray(item_bias, dtype=np.float32)
        )
        self.k = k

    def takes(self, users: object) -> bool:
        """Whether `users` can go to `__call__` as it is (else through `score_topk`, which
        converts or refuses it naming what is wrong)."""
        return (
            type(users) is np.ndarray
            and users.dtype == np.float32
            and users.ndim == 2
            and users.shape[1] == self.items.shape[1]
            and users.flags.c_contiguous
            and users.flags.aligned
        )

    def __call__(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n_users, n_items = users.shape[0], self.items.shape[0]
        out_s = np.empty((n_users, self.k), np.float32)
        out_i = np.empty((n_users, self.k), np.int64)
        if n_users == 0:
            return out_s, out_i
        block, chunk = tile_shape(n_users, self.items.shape[1])
        # Asking Numba for its thread count takes a lock and ~1 µs: only where it matters.
        tasks = n_items // ITEMS_PER_TASK
        if tasks > 1:
            tasks = min(numba.get_num_threads(), tasks)
        if tasks <= 1:
            _topk_serial(users, self.items, self.bias, self.k, block, chunk, out_s, out_i)
        else:
            args = (users, self.items, self.bias, self.k, block, chunk, tasks, out_s, out_i)
            _topk_parallel(*args)
        return out_s, out_i
