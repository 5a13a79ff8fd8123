"""Fused image preprocessing: uint8 NHWC → bilinear resize → normalise → NCHW.

`out[n, c, y, x] = (resize(images)[n, y, x, c] / 255 - mean[c]) / std[c]`, with `mean` and
`std` on the 0..1 scale (ImageNet's 0.485, 0.456, 0.406 / 0.229, 0.224, 0.225). The resize
is bilinear with half-pixel centres and no antialiasing, the convention of
`torch.nn.functional.interpolate(mode="bilinear", align_corners=False, antialias=False)`:
source = (destination + 0.5) · in/out - 0.5, clamped at 0, computed in float32 as torch
does, so results match torch to float32 rounding.

The reference below is what the fused kernels remove. For N images h x w resized to H x W it
reads N·h·w·3 bytes, then writes and reads float32 intermediates: the gathered rows
(2 · 12·N·H·w bytes), the gathered columns (2 · 12·N·H·W), normalisation (12·N·H·W twice)
and the NCHW transpose copy (12·N·H·W twice): about ten passes over the output. The
kernels read each source pixel from cache and write the output once (float16 output in
the Numba kernel adds a conversion pass: Numba cannot store float16).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from warpserve.kernels import arrays
from warpserve.kernels.errors import KernelInputError
from warpserve.kernels.registry import Provider, register, select

OUT_DTYPES = ("float32", "float16")
# A 10,000 x 10,000 photo is 300 MB of pixels: refused unless the caller raises the limit.
MAX_IMAGE_PIXELS = 1 << 26
MAX_SIZE = 8192

register(Provider("preprocess", "numpy", frozenset({"cpu"}), __name__, "preprocess_reference"))
register(
    Provider(
        "preprocess",
        "numba",
        frozenset({"cpu"}),
        "warpserve.kernels.preprocess_numba",
        "preprocess_numba",
        requires=("numba",),
        rank=10,
    )
)
register(
    Provider(
        "preprocess",
        "triton",
        frozenset({"cuda"}),
        "warpserve.kernels.preprocess_triton",
        "preprocess_triton",
        takes="torch",
        requires=("triton", "torch"),
        rank=10,
        interpreter_env="TRITON_INTERPRET",
    )
)
register(
    Provider(
        "preprocess",
        "numba",
        frozenset({"cuda"}),
        "warpserve.kernels.preprocess_numba_cuda",
        "preprocess_numba_cuda",
        takes="torch",
        requires=("numba", "torch"),
        rank=30,  # not yet measured on a GPU: after Triton-lang and CuPy
        interpreter_env="NUMBA_ENABLE_CUDASIM",
        probe="warpserve.kernels.cuda_probe:numba_cuda_reason",
    )
)
register(
    Provider(
        "preprocess",
        "cupy",
        frozenset({"cuda"}),
        "warpserve.kernels.preprocess_cupy",
        "preprocess_cupy",
        takes="torch",
        requires=("cupy", "torch"),
        rank=20,
    )
)


def preprocess_images(
    images: Any,
    size: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    out_dtype: str = "float32",
    provider: str = "auto",
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> Any:
    """uint8 `[N, h, w, 3]` → `[N, 3, H, W]` of `out_dtype`, for `size=(H, W)`.

    Answers in the kind of `images` (numpy, or torch on its device). Raises
    `KernelInputError` naming the bad argument, `ProviderUnavailable` when `provider`
    cannot run here.
    """
    out_size = check_preprocess(images, size, out_dtype, max_pixels)
    scale, shift = normalisation(mean, std)
    chosen = select("preprocess", arrays.device_of(images), provider)
    convert = arrays.to_torch if chosen.takes == "torch" else arrays.to_numpy
    result = chosen.load()(convert(images), out_size, scale, shift, out_dtype)
    return arrays.like(result, images)


def check_preprocess(
    images: Any, size: object, out_dtype: str, max_pixels: int = MAX_IMAGE_PIXELS
) -> tuple[int, int]:
    """Validate the arguments; returns (H, W) as ints."""
    arrays.check_array(images, "images", 4, ("uint8",))
    if images.shape[3] != 3:
        raise KernelInputError(
            "images", f"expected [N, height, width, 3] RGB, got shape {tuple(images.shape)}"
        )
    height, width = int(images.shape[1]), int(images.shape[2])
    if height == 0 or width == 0:
        raise KernelInputError("images", f"an image of {height}x{width} pixels is empty")
    if height * width > max_pixels:
        raise KernelInputError(
            "images",
            f"{height}x{width} is {height * width:,} pixels, over the limit of {max_pixels:,}; "
            "downscale it before sending",
        )
    if out_dtype not in OUT_DTYPES:
        raise KernelInputError("out_dtype", f"{out_dtype!r} is not one of {OUT_DTYPES}")
    if (
        not isinstance(size, (tuple, list))
        or len(size) != 2
        or not all(isinstance(s, (int, np.integer)) and 1 <= s <= MAX_SIZE for s in size)
    ):
        raise KernelInputError("size", f"expected (height, width) in 1..{MAX_SIZE}, got {size!r}")
    return int(size[0]), int(size[1])


def normalisation(mean: Sequence[float], std: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (scale, shift) such that out = pixel · scale + shift, float32."""
    m = _channels(mean, "mean")
    s = _channels(std, "std")
    if not (s > 0).all():
        raise KernelInputError("std", f"every channel's std must be positive, got {list(s)}")
    scale = 1.0 / (255.0 * s)
    return scale.astype(np.float32), (-m / s).astype(np.float32)


def _channels(values: Sequence[float], argument: str) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise KernelInputError(argument, f"expected 3 numbers, got {values!r}") from None
    if array.shape != (3,) or not np.isfinite(array).all():
        raise KernelInputError(argument, f"expected 3 finite numbers, got {values!r}")
    return array


@lru_cache(maxsize=64)
def source_indices(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(first, second, weight of second) source index per output index, torch's way."""
    scale = np.float32(in_size) / np.float32(out_size)
    dst = np.arange(out_size, dtype=np.float32)
    src = np.maximum(scale * (dst + np.float32(0.5)) - np.float32(0.5), np.float32(0))
    first = src.astype(np.int64)
    second = np.minimum(first + 1, in_size - 1)
    return first, second, (src - first).astype(np.float32)


def preprocess_reference(
    images: np.ndarray,
    size: tuple[int, int],
    scale: np.ndarray,
    shift: np.ndarray,
    out_dtype: str,
) -> np.ndarray:
    """The numpy reference: gather rows, gather columns, normalise, transpose, each a pass."""
    y0, y1, wy = source_indices(images.shape[1], size[0])
    x0, x1, wx = source_indices(images.shape[2], size[1])
    pixels = images.astype(np.float32)
    wy4 = wy[None, :, None, None]
    rows = pixels[:, y0] * (1 - wy4) + pixels[:, y1] * wy4
    wx3 = wx[None, None, :, None]
    resized = rows[:, :, x0] * (1 - wx3) + rows[:, :, x1] * wx3
    normalised = resized * scale + shift
    return np.ascontiguousarray(normalised.transpose(0, 3, 1, 2), dtype=out_dtype)
