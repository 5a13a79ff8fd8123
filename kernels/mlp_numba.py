"""Numba CPU kernel for the fused linear layer (see `warpserve.kernels.mlp`).

The product runs on BLAS: `np.dot` inside a Numba function calls the sgemm of SciPy's
OpenBLAS directly, with no Python between calls. The loop nest this replaced reached a
fifth of sgemm's rate at 1024 rows (and ONNX Runtime, the yardstick, uses a tuned GEMM).
Bias and activation are the epilogue: rows go through in blocks, each block's product
is written into the output (or a scratch buffer) and then biased and activated in place
while it is still in cache, so the output goes to memory once, not once per numpy pass.

The GIL is released throughout, so server worker threads overlap. In `fused_linear`
threads come only from OpenBLAS, for products above its own threshold (M·N·K > 262,144
per call); a parallel GELU epilogue was slower than the vectorised serial one. A whole
MLP (`PackedMLP`) splits a batch of `PARALLEL_ROWS` rows or more over Numba's threads,
each running its share of the rows through every layer on one BLAS thread. Below that a
batch runs on one thread: on a quiet 2-core machine two threads took the 128-row fraud
scorer from 12.3 to 9.9 µs only (with OpenMP's threads told not to spin, a split call
cost 60-100 µs more; on a loaded machine waking threads took up to a millisecond). At
512 rows two threads took it from 46 to 25 µs, where ONNX Runtime on its default two
threads took 26.
The cost: an OpenMP team's end waits for every worker, so on a machine with more runnable
threads than cores a call can wait for a parked worker's next time slice (12-24 ms were
measured under load). The server's kernel backend therefore runs its MLPs on one thread
per instance (``threads=1``), as its instances are its parallelism.

Only "contract" fastmath (fused multiply-add) in the epilogue: full fastmath would let
LLVM assume no NaN, and a NaN input must come out NaN as it does from torch. Numpy's
error model: Python's would test every division for zero, and that branch alone kept
LLVM from vectorising the GELU and sigmoid loops.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from warpserve.kernels.mlp import ACTIVATIONS

# Output elements per block: 16k float32 (64 KiB) stays in L2 between the product and
# the epilogue.
BLOCK_ELEMENTS = 1 << 14
# OpenBLAS runs a product on one thread up to this M·N·K. Blocks stay under it where that
# leaves at least MIN_BLOCK rows (the fraud scorer's 64x32 layer gives 128-row blocks):
# a thread hand-off per block cost more than it saved on 2 cores.
BLAS_ONE_THREAD_MNK = 65536 * 4
MIN_BLOCK = 16
# A whole MLP splits batches of this many rows or more over Numba's threads, at least
# half of it per thread.
PARALLEL_ROWS = 256
# float32 constants: a float64 literal would make Numba compute the epilogue in float64.
_INV_SQRT2 = np.float32(1.0 / math.sqrt(2.0))
_F1, _F4, _HALF, _ZERO = np.float32(1.0), np.float32(4.0), np.float32(0.5), np.float32(0.0)


@numba.njit(nogil=True, cache=True, fastmath={"contract"}, error_model="numpy", inline="always")
def _erf(z):
    """erf to 4.2e-7 absolute in float32 (Eigen's rational approximation, which
    TensorFlow uses): multiplies, adds and one division, so LLVM vectorises the loop
    around it, where `math.erf` is a scalar libm call (20 ns an element, most of a GELU
    layer). Only for GELU, whose product with its input restores a NaN."""
    # erf is ±1 in float32 beyond ±4. min/max may turn NaN into a number here; the
    # caller's product with its input gives NaN back.
    x = min(max(z, -_F4), _F4)
    x2 = x * x
    p = x2 * np.float32(-2.72614225801306e-10) + np.float32(2.77068142495902e-08)
    p = x2 * p + np.float32(-2.10102402082508e-06)
    p = x2 * p + np.float32(-5.69250639462346e-05)
    p = x2 * p + np.float32(-7.34990630326855e-04)
    p = x2 * p + np.float32(-2.95459980854025e-03)
    p = x2 * p + np.float32(-1.60960333262415e-02)
    q = x2 * np.float32(-1.45660718464996e-05) + np.float32(-2.13374055278905e-04)
    q = x2 * q + np.float32(-1.68282697438203e-03)
    q = x2 * q + np.float32(-7.37332916720468e-03)
    q = x2 * q + np.float32(-1.42647390514189e-02)
    # At ±4 the approximation overshoots 1 by an ulp; exactly ±1 keeps GELU(-inf) NaN
    # (-inf * 0) and GELU of a large negative number -0.0, as in torch.
    return min(max(x * p / q, -_F1), _F1)


@numba.njit(nogil=True, cache=True, fastmath={"contract"}, error_model="numpy", inline="always")
def _activate_row(row, bias, act):
    """row = act(row + bias), one loop per activation so that each vectorises."""
    n = row.shape[0]
    if act == 1:
        for j in range(n):
            v = row[j] + bias[j]
            row[j] = _ZERO if v < 0.0 else v  # keeps NaN, as torch.relu does
    elif act == 2:
        for j in range(n):
            v = row[j] + bias[j]
            row[j] = _HALF * v * (_F1 + _erf(v * _INV_SQRT2))
    elif act == 3:
        for j in range(n):
            row[j] = _F1 / (_F1 + math.exp(-(row[j] + bias[j])))
    else:
        for j in range(n):
            row[j] += bias[j]


@numba.njit(nogil=True, cache=True, fastmath={"contract"}, error_model="numpy")
def _epilogue(y, bias, act):
    """y = act(y + bias), in place, on the block BLAS has just written."""
    for i in range(y.shape[0]):
        _activate_row(y[i], bias, act)


@numba.njit(nogil=True, cache=True)
def _fused_linear_blocks(x, wt, bias, act, out, block):
    m = x.shape[0]
    for r0 in range(0, m, block):
        r1 = min(r0 + block, m)
        y = out[r0:r1]
        np.dot(x[r0:r1], wt, y)
        _epilogue(y, bias, act)


@numba.njit(nogil=True, cache=True)
def _fused_linear_whole(x, wt, bias, act, out):
    np.dot(x, wt, out)
    _epilogue(out, bias, act)


def _one_thread_rows(k: int, n: int) -> int:
    """Rows per block: a block's output fits BLOCK_ELEMENTS and its product stays on
    one OpenBLAS thread."""
    return min(BLOCK_ELEMENTS // n, BLAS_ONE_THREAD_MNK // (k * n))


def fused_linear_numba(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, activation: str
) -> np.ndarray:
    """act(x @ weight.T + bias) on the CPU; inputs already checked by `mlp.fused_linear`."""
    return fused_linear_packed(x, pack_weight(weight), bias, activation, x.dtype)


def pack_weight(weight: np.ndarray) -> np.ndarray:
    """`[out, in]` → contiguous float32 `[in, out]`: a row-major sgemm with no transpose."""
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
    x32 = np.ascontiguousarray(x, dtype=np.float32)
    b32 = np.zeros(n, np.float32) if bias is None else bias.astype(np.float32, copy=False)
    out = np.empty((m, n), np.float32)
    act, block = ACTIVATIONS.index(activation), _one_thread_rows(packed.shape[0], n)
    if block >= MIN_BLOCK:
        _fused_linear_blocks(x32, packed, b32, act, out, min(block, max(m, 1)))
    elif m:
        # A wide layer: blocks small enough for one BLAS thread would be a few rows each,
        # and per-block threaded products handed work between threads hundreds of times
        # (10x slower than one call on the loaded 2-core VM). One product on OpenBLAS's
        # threads, then the epilogue (0.24 ms for 1024x512 GELU, against 7 ms of product).
        _fused_linear_whole(x32, packed, b32, act, out)
    return out.astype(out_dtype, copy=False)


# ------------------------------------------------------------------ a whole MLP in one call
# For a small MLP (the fraud scorer: 16-64-32-1) the per-layer Python around each kernel
# call costs more than the arithmetic, so `PackedMLP` runs every layer of a block of rows
# in one compiled call: weights packed once into one flat buffer, the block's hidden
# activations kept in two scratch buffers that stay in cache from one layer to the next.


@numba.njit(nogil=True, cache=True)
def _mlp(x, params, layout, out, block, widest):
    m = x.shape[0]
    ping = np.empty(block * widest, np.float32)
    pong = np.empty(block * widest, np.float32)
    layers = layout.shape[0]
    for r0 in range(0, m, block):
        r1 = min(r0 + block, m)
        rows = r1 - r0
        src = x[r0:r1]
        for layer in range(layers):
            w_off, b_off, k, n, act = layout[layer]
            weight = params[w_off : w_off + k * n].reshape((k, n))
            if layer == layers - 1:
                dst = out[r0:r1]
            elif layer % 2 == 0:
                dst = ping[: rows * n].reshape((rows, n))
            else:
                dst = pong[: rows * n].reshape((rows, n))
            np.dot(src, weight, dst)
            _epilogue(dst, params[b_off : b_off + n], act)
            src = dst


@numba.njit(nogil=True, cache=True, parallel=True)
def _mlp_parallel(x, params, layout, out, block, widest, tasks):
    """`_mlp` on `tasks` contiguous shares of the rows, one per Numba thread."""
    m = x.shape[0]
    for t in numba.prange(tasks):
        r0, r1 = m * t // tasks, m * (t + 1) // tasks
        _mlp(x[r0:r1], params, layout, out[r0:r1], block, widest)


class PackedMLP:
    """Float32 layers `(weight [out, in], bias [out] or None, activation)` packed for
    `_mlp`; calling it with a C-contiguous float32 `[M, in]` array runs them all.

    ``threads``: the most Numba threads one call uses (batches of `PARALLEL_ROWS` rows or
    more); None: Numba's thread count at the time of the call.
    """

    def __init__(
        self, layers: list[tuple[np.ndarray, np.ndarray | None, str]], threads: int | None = None
    ) -> None:
        self.threads = threads
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
        largest = int((self.layout[:, 2] * self.layout[:, 3]).max())
        one_thread = max(MIN_BLOCK, BLAS_ONE_THREAD_MNK // largest)
        self.block = max(1, min(BLOCK_ELEMENTS // self.widest, one_thread))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        m = x.shape[0]
        out = np.empty((m, self.out_features), np.float32)
        if m >= PARALLEL_ROWS:
            # Asking Numba for its thread count takes a lock and ~1 µs: only where it matters.
            threads = numba.get_num_threads() if self.threads is None else self.threads
            tasks = min(threads, m // (PARALLEL_ROWS // 2))
            if tasks > 1:
                share = min(self.block, -(-m // tasks))
                _mlp_parallel(x, self.params, self.layout, out, share, self.widest, tasks)
                return out
        if m:
            _mlp(x, self.params, self.layout, out, min(self.block, m), self.widest)
        return out
