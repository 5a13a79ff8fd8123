"""Numba CPU kernel for fused image preprocessing (see `warpserve.kernels.preprocess`).

Threads take output rows (image, y) in parallel; a small output (`SERIAL_PIXELS`) is
done on the calling thread. A row reads two source rows, which stay
in cache across its W outputs, blends the four neighbours of each output pixel in the
order torch uses (horizontal inside, vertical outside), normalises, and writes each
channel straight into its NCHW plane: one write of the output, no intermediates. The GIL
is released, so server worker threads overlap.
"""

from __future__ import annotations

import numba
import numpy as np

from warpserve.kernels.preprocess import source_indices

# Up to this many output pixels (all images) one thread does the work: starting the
# parallel kernel's threads cost 0.3 to 7 ms on a loaded 2-core VM, where one 320x240
# photo to 32x32 takes 30 µs on one thread through `preprocess_images`.
SERIAL_PIXELS = 64 * 64


@numba.njit(nogil=True, cache=True, fastmath={"contract"}, inline="always")
def _row(images, n, y, y0, y1, wy, x0, x1, wx, scale, shift, out):
    """Output row y of image n, every channel."""
    top = images[n, y0[y]]
    bottom = images[n, y1[y]]
    b = wy[y]
    a = np.float32(1.0) - b
    for x in range(out.shape[3]):
        left, right = x0[x], x1[x]
        r = wx[x]
        q = np.float32(1.0) - r
        for c in range(3):
            upper = q * np.float32(top[left, c]) + r * np.float32(top[right, c])
            lower = q * np.float32(bottom[left, c]) + r * np.float32(bottom[right, c])
            out[n, c, y, x] = (a * upper + b * lower) * scale[c] + shift[c]


@numba.njit(nogil=True, cache=True, parallel=True, fastmath={"contract"})
def _preprocess_kernel(images, y0, y1, wy, x0, x1, wx, scale, shift, out):
    height = out.shape[2]
    for task in numba.prange(images.shape[0] * height):
        _row(images, task // height, task % height, y0, y1, wy, x0, x1, wx, scale, shift, out)


@numba.njit(nogil=True, cache=True, fastmath={"contract"})
def _preprocess_serial(images, y0, y1, wy, x0, x1, wx, scale, shift, out):
    for n in range(images.shape[0]):
        for y in range(out.shape[2]):
            _row(images, n, y, y0, y1, wy, x0, x1, wx, scale, shift, out)


def preprocess_numba(
    images: np.ndarray,
    size: tuple[int, int],
    scale: np.ndarray,
    shift: np.ndarray,
    out_dtype: str,
) -> np.ndarray:
    """Resize and normalise on the CPU; inputs already checked by `preprocess_images`."""
    y0, y1, wy = source_indices(images.shape[1], size[0])
    x0, x1, wx = source_indices(images.shape[2], size[1])
    out = np.empty((images.shape[0], 3, size[0], size[1]), np.float32)
    small = images.shape[0] * size[0] * size[1] <= SERIAL_PIXELS
    kernel = _preprocess_serial if small else _preprocess_kernel
    kernel(images, y0, y1, wy, x0, x1, wx, scale, shift, out)
    return out.astype(out_dtype, copy=False)
