"""Triton-lang GPU kernel for the fused linear layer (see `warpserve.kernels.mlp`).

One program computes a BLOCK_M x BLOCK_N tile of the output, walking K in BLOCK_K steps
with `tl.dot` into a float32 accumulator; bias and activation are applied to the
accumulator and the tile is written once. float32 inputs multiply in IEEE precision, not
TF32, so results match torch's default matmul on the same GPU.

On a GPU the launch goes through `triton.autotune` over `CONFIGS` (keyed by the problem
size). Under TRITON_INTERPRET=1 there is no GPU to time configurations on, so the plain
kernel runs with the first configuration; the tests run every configuration that way.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

from warpserve.kernels.mlp import ACTIVATIONS

CONFIGS = [
    triton.Config({"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32}, num_warps=2, num_stages=2),
    triton.Config({"BLOCK_M": 32, "BLOCK_N": 64, "BLOCK_K": 32}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 32}, num_warps=8, num_stages=3),
]


@triton.jit
def _fused_linear_kernel(
    x_ptr,
    w_ptr,
    b_ptr,
    out_ptr,
    M,
    N,
    K,
    stride_xm,
    stride_wn,
    stride_om,
    HAS_BIAS: tl.constexpr,
    ACT: tl.constexpr,
    IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + rk
        a = tl.load(
            x_ptr + rm[:, None] * stride_xm + ks[None, :],
            mask=(rm[:, None] < M) & (ks[None, :] < K),
            other=0.0,
        )
        # weight is [N, K]; this tile is read transposed as [BLOCK_K, BLOCK_N].
        b = tl.load(
            w_ptr + rn[None, :] * stride_wn + ks[:, None],
            mask=(rn[None, :] < N) & (ks[:, None] < K),
            other=0.0,
        )
        acc = tl.dot(a, b, acc, input_precision="ieee") if IEEE else tl.dot(a, b, acc)
    if HAS_BIAS:
        acc += tl.load(b_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
    if ACT == 1:
        acc = tl.where(acc < 0.0, 0.0, acc)
    elif ACT == 2:
        acc = 0.5 * acc * (1.0 + tl.math.erf(acc * 0.7071067811865476))
    elif ACT == 3:
        acc = tl.sigmoid(acc)
    tl.store(
        out_ptr + rm[:, None] * stride_om + rn[None, :],
        acc.to(out_ptr.dtype.element_ty),
        mask=(rm[:, None] < M) & (rn[None, :] < N),
    )


_fused_linear_autotuned = triton.autotune(configs=CONFIGS, key=["M", "N", "K", "ACT"])(
    _fused_linear_kernel
)


def fused_linear_triton(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    activation: str,
    config: triton.Config | None = None,
) -> torch.Tensor:
    """act(x @ weight.T + bias); inputs already checked by `mlp.fused_linear`.

    `config` forces one configuration (tests); otherwise a GPU autotunes and the
    interpreter takes the first.
    """
    m, k = x.shape
    n = weight.shape[0]
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m == 0:
        return out
    args: tuple[Any, ...] = (x, weight, bias if bias is not None else x, out, m, n, k)
    args += (x.stride(0), weight.stride(0), out.stride(0))
    flags = {
        "HAS_BIAS": bias is not None,
        "ACT": ACTIVATIONS.index(activation),
        "IEEE": x.dtype == torch.float32,
    }
    if config is None and x.is_cuda:

        def tuned_grid(meta: dict[str, int]) -> tuple[int, int]:
            return (triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(n, meta["BLOCK_N"]))

        _fused_linear_autotuned[tuned_grid](*args, **flags)
        return out
    meta = (config or CONFIGS[0]).kwargs
    grid = (triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(n, meta["BLOCK_N"]))
    _fused_linear_kernel[grid](*args, **flags, **meta)
    return out
