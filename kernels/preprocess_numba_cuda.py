"""numba.cuda GPU kernel for fused image preprocessing (see `warpserve.kernels.preprocess`).

One thread per output pixel of one image (grid: pixel blocks x images), as the Triton-lang
kernel: source coordinates in float32 with torch's half-pixel formula, the four uint8
neighbours of each channel blended horizontally then vertically, normalised, and stored
into the three NCHW planes, so neighbouring threads write neighbouring addresses.

Takes torch tensors. CUDA tensors are wrapped without a copy (`__cuda_array_interface__`)
and the kernel runs on torch's current stream. Under NUMBA_ENABLE_CUDASIM=1 (the tests on
a machine without a GPU) numba simulates the kernel on CPU tensors' memory, one Python
thread per GPU thread: correct and very slow. float16 output is a conversion after the
kernel (numba.cuda's float16 stores were not available to test here).
"""

# numba's bundled annotations type CUDA intrinsics (grid, blockIdx) as Python callables
# and dimension records, which kernel code does not match; these two checks are off here.
# mypy: disable-error-code="call-arg,var-annotated"
from __future__ import annotations

import numba
import numpy as np
import torch
from numba import cuda

from warpserve.kernels.preprocess_launch import prepare

THREADS = 256


@cuda.jit
def _preprocess_kernel(images, out, scale_y, scale_x, scale, shift):
    idx, n = cuda.grid(2)  # blocks of THREADS x 1: the y index is the image
    h, w = images.shape[1], images.shape[2]
    height, width = out.shape[2], out.shape[3]
    if idx >= height * width:
        return
    y = idx // width
    x = idx % width
    half, zero, one = numba.float32(0.5), numba.float32(0.0), numba.float32(1.0)
    sy = max(scale_y * (numba.float32(y) + half) - half, zero)
    sx = max(scale_x * (numba.float32(x) + half) - half, zero)
    y0, x0 = numba.int32(sy), numba.int32(sx)
    y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
    b, r = sy - numba.float32(y0), sx - numba.float32(x0)
    for c in range(3):
        upper = (one - r) * numba.float32(images[n, y0, x0, c]) + r * numba.float32(
            images[n, y0, x1, c]
        )
        lower = (one - r) * numba.float32(images[n, y1, x0, c]) + r * numba.float32(
            images[n, y1, x1, c]
        )
        out[n, c, y, x] = ((one - b) * upper + b * lower) * scale[c] + shift[c]


def preprocess_numba_cuda(
    images: torch.Tensor,
    size: tuple[int, int],
    scale: np.ndarray,
    shift: np.ndarray,
    out_dtype: str,
) -> torch.Tensor:
    """Resize and normalise on the GPU; inputs already checked by `preprocess_images`."""
    # float32 whatever out_dtype: the kernel stores float32, converted after it
    n, _, _, height, width, scale_y, scale_x, out = prepare(images, size, "float32")
    if n:
        on_gpu = images.is_cuda
        launch = _preprocess_kernel[((height * width + THREADS - 1) // THREADS, n), THREADS]
        if on_gpu:
            stream = cuda.external_stream(torch.cuda.current_stream(images.device).cuda_stream)
            launch = _preprocess_kernel[
                ((height * width + THREADS - 1) // THREADS, n), THREADS, stream
            ]
        args = (
            _device(images),
            _device(out),
            scale_y,
            scale_x,
            _device(torch.from_numpy(scale).to(images.device)),
            _device(torch.from_numpy(shift).to(images.device)),
        )
        launch(*args)
    return out if out_dtype == "float32" else out.to(getattr(torch, out_dtype))


def _device(tensor: torch.Tensor) -> object:
    """A CUDA tensor as a numba device array (no copy); a CPU tensor's numpy view, which
    the simulator reads and writes in place."""
    return cuda.as_cuda_array(tensor) if tensor.is_cuda else tensor.numpy()
