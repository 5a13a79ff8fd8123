"""Triton-lang GPU kernel for scoring with top-k (see `warpserve.kernels.topk`).

Stage 1, one program per (block of users, block of items): a `tl.dot` score tile, then
`tl.topk` keeps K_PAD candidates per user (the next power of two at or above k). Scores
and ids travel together as one int64 key: the score's bits mapped so that integer order
is float order, in the high half, and 0x7FFFFFFF - id in the low half, so the larger key
is the better score and, on a tie, the lower id. Stage 2 takes the k best of the
candidates with `torch.topk`, over BLOCK_I / K_PAD times fewer values than the full
score matrix holds.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_I = 128
_LOW = 0x7FFFFFFF


@triton.jit
def _score_topk_kernel(
    u_ptr,
    it_ptr,
    bias_ptr,
    keys_ptr,
    U,
    N_ITEMS,
    D,
    n_blocks,
    HAS_BIAS: tl.constexpr,
    IEEE: tl.constexpr,
    BLOCK_U: tl.constexpr,
    BLOCK_I: tl.constexpr,
    BLOCK_D: tl.constexpr,
    K_PAD: tl.constexpr,
):
    ru = tl.program_id(0) * BLOCK_U + tl.arange(0, BLOCK_U)
    ri = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    rd = tl.arange(0, BLOCK_D)
    acc = tl.zeros((BLOCK_U, BLOCK_I), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        ds = d0 + rd
        a = tl.load(
            u_ptr + ru[:, None] * D + ds[None, :],
            mask=(ru[:, None] < U) & (ds[None, :] < D),
            other=0.0,
        )
        b = tl.load(
            it_ptr + ri[None, :] * D + ds[:, None],
            mask=(ri[None, :] < N_ITEMS) & (ds[:, None] < D),
            other=0.0,
        )
        acc = tl.dot(a, b, acc, input_precision="ieee") if IEEE else tl.dot(a, b, acc)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + ri, mask=ri < N_ITEMS, other=0.0).to(tl.float32)[None, :]
    bits = acc.to(tl.int32, bitcast=True)
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    key = (ordered.to(tl.int64) << 32) | (0x7FFFFFFF - ri).to(tl.int64)[None, :]
    key = tl.where(ri[None, :] < N_ITEMS, key, -9223372036854775807 - 1)
    top = tl.topk(key, K_PAD, dim=1)
    rk = tl.arange(0, K_PAD)
    out = keys_ptr + ru[:, None] * (n_blocks * K_PAD) + tl.program_id(1) * K_PAD + rk[None, :]
    tl.store(out, top, mask=ru[:, None] < U)


def score_topk_triton(
    users: torch.Tensor,
    items: torch.Tensor,
    k: int,
    item_bias: torch.Tensor | None,
    block_i: int = BLOCK_I,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k scores and ids; inputs already checked by `topk.score_topk`.

    `block_i` (a power of two) sets the items per program; tests make it small so the
    interpreter runs several blocks quickly.
    """
    n_users, dims = users.shape
    n_items = items.shape[0]
    scores = torch.empty((n_users, k), dtype=users.dtype, device=users.device)
    ids = torch.empty((n_users, k), dtype=torch.int64, device=users.device)
    if n_users == 0:
        return scores, ids
    k_pad = triton.next_power_of_2(k)
    block_i = max(block_i, k_pad)
    block_u = 16 if n_users <= 16 else 32
    block_d = max(16, min(64, triton.next_power_of_2(dims)))
    n_blocks = triton.cdiv(n_items, block_i)
    keys = torch.empty((n_users, n_blocks * k_pad), dtype=torch.int64, device=users.device)
    grid = (triton.cdiv(n_users, block_u), n_blocks)
    _score_topk_kernel[grid](
        users,
        items,
        item_bias if item_bias is not None else users,
        keys,
        n_users,
        n_items,
        dims,
        n_blocks,
        HAS_BIAS=item_bias is not None,
        IEEE=users.dtype == torch.float32,
        BLOCK_U=block_u,
        BLOCK_I=block_i,
        BLOCK_D=block_d,
        K_PAD=k_pad,
    )
    best = torch.topk(keys, k, dim=1).values
    return _decode_scores(best >> 32).to(users.dtype), _LOW - (best & _LOW)


def _decode_scores(ordered: torch.Tensor) -> torch.Tensor:
    """Undo the order-preserving map (it is its own inverse) and read the bits as float32."""
    bits = ordered.to(torch.int32)
    return (bits ^ ((bits >> 31) & _LOW)).view(torch.float32)
