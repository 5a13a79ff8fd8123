"""Numba CPU kernel for the fused linear layer (see `warpserve.kernels.mlp`).

Rows are taken four at a time: each weight row loaded from cache feeds four accumulators,
and the inner loop over outputs is a contiguous axpy that LLVM vectorises. That needs the
weight as `[in, out]`, so it is transposed once per call (N·K elements, small next to the
product for a batch of rows). Bias and activation run on the accumulators before the one
write of the output. Row blocks run in parallel threads above a work threshold (below it
thread start-up costs more than the product); the GIL is released throughout, so server
worker threads overlap.

Only "contract" fastmath (fused multiply-add): full fastmath would let LLVM assume no NaN,
and a NaN input must come out NaN as it does from torch.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from warpserve.kernels.mlp import ACTIVATIONS

ROWS_PER_TASK = 64
# Multiply-adds below which one thread is faster than starting the pool (measured, 2 cores).
PARALLEL_WORK = 1 << 18
_INV_SQRT2 = 1.0 / math.sqrt(2.0)


@numba.njit(nogil=True, cache=True, fastmath={"contract"}, inline="always")
def _activate(v: float, act: int) -> float:
    if act == 1:
        return 0.0 if v < 0.0 else v  # keeps NaN, as torch.relu does
    if act == 2:
        return 0.5 * v * (1.0 + math.erf(v * _INV_SQRT2))
    if act == 3:
        return 1.0 / (1.0 + math.exp(-v))
    return v


@numba.njit(nogil=True, cache=True, fastmath={"contract"})
def _rows(x, wt, bias, act, out, r0, r1):
    k, n = wt.shape
    a0 = np.empty(n, np.float32)
    a1 = np.empty(n, np.float32)
    a2 = np.empty(n, np.float32)
    a3 = np.empty(n, np.float32)
    i = r0
    while i + 4 <= r1:
        a0[:] = bias
        a1[:] = bias
        a2[:] = bias
        a3[:] = bias
        for kk in range(k):
            x0, x1, x2, x3 = x[i, kk], x[i + 1, kk], x[i + 2, kk], x[i + 3, kk]
            w = wt[kk]
            for j in range(n):
                wj = w[j]
                a0[j] += x0 * wj
                a1[j] += x1 * wj
                a2[j] += x2 * wj
                a3[j] += x3 * wj
        for j in range(n):
            out[i, j] = _activate(a0[j], act)
            out[i + 1, j] = _activate(a1[j], act)
            out[i + 2, j] = _activate(a2[j], act)
            out[i + 3, j] = _activate(a3[j], act)
        i += 4
    for r in range(i, r1):
        a0[:] = bias
        for kk in range(k):
            xv = x[r, kk]
            w = wt[kk]
            for j in range(n):
                a0[j] += xv * w[j]
        for j in range(n):
            out[r, j] = _activate(a0[j], act)


@numba.njit(nogil=True, cache=True, fastmath={"contract"}, parallel=True)
def _fused_linear_parallel(x, wt, bias, act, out):
    m = x.shape[0]
    tasks = (m + ROWS_PER_TASK - 1) // ROWS_PER_TASK
    for t in numba.prange(tasks):
        r0 = t * ROWS_PER_TASK
        _rows(x, wt, bias, act, out, r0, min(r0 + ROWS_PER_TASK, m))


@numba.njit(nogil=True, cache=True, fastmath={"contract"})
def _fused_linear_serial(x, wt, bias, act, out):
    _rows(x, wt, bias, act, out, 0, x.shape[0])


def fused_linear_numba(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, activation: str
) -> np.ndarray:
    """act(x @ weight.T + bias) on the CPU; inputs already checked by `mlp.fused_linear`."""
    return fused_linear_packed(x, pack_weight(weight), bias, activation, x.dtype)


def pack_weight(weight: np.ndarray) -> np.ndarray:
    """`[out, in]` → contiguous float32 `[in, out]`, the layout the kernel streams."""
    return np.ascontiguousarray(weight.T, dtype=np.float32)


def fused_linear_packed(
    x: np.ndarray,
    packed: np.ndarray,
    bias: np.ndarray | None,
    activation: str,
    out_dtype: np.dtype | type = np.float32,
) -> np.ndarray:
    """The kernel on a weight already packed by `pack_weight` (reused across calls)."""
    m, n = x.shape[0], packed.shape[1]
    x32 = x.astype(np.float32, copy=False)
    b32 = np.zeros(n, np.float32) if bias is None else bias.astype(np.float32, copy=False)
    out = np.empty((m, n), np.float32)
    kernel = _fused_linear_parallel if m * n * packed.shape[0] >= PARALLEL_WORK else None
    (kernel or _fused_linear_serial)(x32, packed, b32, ACTIVATIONS.index(activation), out)
    return out.astype(out_dtype, copy=False)


# ------------------------------------------------------------------ a whole MLP in one call
# For a small MLP (the fraud scorer: 16-64-32-1) the per-layer Python around each kernel
# call costs more than the arithmetic, so `PackedMLP` runs every layer of a block of rows
# in one compiled call: weights packed once into one flat buffer, activations of the
# block kept in two scratch rows-by-width buffers that stay in cache.


@numba.njit(nogil=True, cache=True, fastmath={"contract"})
def _dense(src, s0, params, w_off, b_off, k, n, act, dst, d0, rows):
    """dst rows = act(src rows @ W + b) for `rows` rows, all arrays flat."""
    a0 = np.empty(n, np.float32)
    a1 = np.empty(n, np.float32)
    a2 = np.empty(n, np.float32)
    a3 = np.empty(n, np.float32)
    i = 0
    while i + 4 <= rows:
        for j in range(n):
            bj = params[b_off + j]
            a0[j], a1[j], a2[j], a3[j] = bj, bj, bj, bj
        base = s0 + i * k
        for kk in range(k):
            x0, x1 = src[base + kk], src[base + k + kk]
            x2, x3 = src[base + 2 * k + kk], src[base + 3 * k + kk]
            w = w_off + kk * n
            for j in range(n):
                wj = params[w + j]
                a0[j] += x0 * wj
                a1[j] += x1 * wj
                a2[j] += x2 * wj
                a3[j] += x3 * wj
        out = d0 + i * n
        for j in range(n):
            dst[out + j] = _activate(a0[j], act)
            dst[out + n + j] = _activate(a1[j], act)
            dst[out + 2 * n + j] = _activate(a2[j], act)
            dst[out + 3 * n + j] = _activate(a3[j], act)
        i += 4
    while i < rows:
        for j in range(n):
            a0[j] = params[b_off + j]
        for kk in range(k):
            xv = src[s0 + i * k + kk]
            w = w_off + kk * n
            for j in range(n):
                a0[j] += xv * params[w + j]
        for j in range(n):
            dst[d0 + i * n + j] = _activate(a0[j], act)
        i += 1


@numba.njit(nogil=True, cache=True)
def _mlp_rows(x, params, layout, out, r0, r1, widest):
    rows = r1 - r0
    ping = np.empty(rows * widest, np.float32)
    pong = np.empty(rows * widest, np.float32)
    layers = layout.shape[0]
    src, s0 = x, r0 * layout[0, 2]
    for layer in range(layers):
        w_off, b_off, k, n, act = layout[layer]
        if layer == layers - 1:
            dst, d0 = out, r0 * n
        else:
            dst, d0 = (ping, 0) if layer % 2 == 0 else (pong, 0)
        _dense(src, s0, params, w_off, b_off, k, n, act, dst, d0, rows)
        src, s0 = dst, d0


@numba.njit(nogil=True, cache=True, parallel=True)
def _mlp_parallel(x, params, layout, out, m, widest):
    tasks = (m + ROWS_PER_TASK - 1) // ROWS_PER_TASK
    for t in numba.prange(tasks):
        r0 = t * ROWS_PER_TASK
        _mlp_rows(x, params, layout, out, r0, min(r0 + ROWS_PER_TASK, m), widest)


class PackedMLP:
    """Float32 layers `(weight [out, in], bias [out] or None, activation)` packed for
    `_mlp_rows`; calling it with a C-contiguous float32 `[M, in]` array runs them all."""

    def __init__(self, layers: list[tuple[np.ndarray, np.ndarray | None, str]]) -> None:
        chunks: list[np.ndarray] = []
        layout, offset = [], 0
        for weight, bias, activation in layers:
            n, k = weight.shape
            packed = pack_weight(weight).reshape(-1)
            b = np.zeros(n, np.float32) if bias is None else bias.astype(np.float32)
            layout.append((offset, offset + packed.size, k, n, ACTIVATIONS.index(activation)))
            chunks += [packed, b]
            offset += packed.size + n
        self.params = np.concatenate(chunks)
        self.layout = np.asarray(layout, np.int64)
        self.in_features = int(self.layout[0, 2])
        self.out_features = int(self.layout[-1, 3])
        self.widest = int(self.layout[:, 3].max())
        self._work_per_row = int((self.layout[:, 2] * self.layout[:, 3]).sum())

    def __call__(self, x: np.ndarray) -> np.ndarray:
        m = x.shape[0]
        out = np.empty(m * self.out_features, np.float32)
        flat = x.reshape(-1)
        if m * self._work_per_row >= PARALLEL_WORK:
            _mlp_parallel(flat, self.params, self.layout, out, m, self.widest)
        elif m:
            _mlp_rows(flat, self.params, self.layout, out, 0, m, self.widest)
        return out.reshape(m, self.out_features)
