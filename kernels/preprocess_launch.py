"""What the preprocess launchers for torch tensors share (see `warpserve.kernels.preprocess`):
the sizes, the source-to-output scales and the NCHW output their kernels fill.

Arguments come here already checked by `preprocess_images`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch


class Launch(NamedTuple):
    n: int  # images
    in_height: int
    in_width: int
    height: int
    width: int
    # Source pixels per output pixel, divided in float32 as torch does, so that the
    # kernels' half-pixel coordinates round as torch's own.
    scale_y: np.float32
    scale_x: np.float32
    out: torch.Tensor  # [n, 3, height, width], uninitialised


def prepare(images: torch.Tensor, size: tuple[int, int], out_dtype: str) -> Launch:
    """The sizes of resizing uint8 `[N, h, w, 3]` `images` to `size`, and an empty
    output of `out_dtype` on their device."""
    n, h, w, _ = images.shape
    height, width = size
    out = torch.empty((n, 3, height, width), dtype=getattr(torch, out_dtype), device=images.device)
    scale_y = np.float32(np.float32(h) / np.float32(height))
    scale_x = np.float32(np.float32(w) / np.float32(width))
    return Launch(n, h, w, height, width, scale_y, scale_x, out)
