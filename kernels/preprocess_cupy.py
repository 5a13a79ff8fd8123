"""CuPy GPU kernel for fused image preprocessing (see `warpserve.kernels.preprocess`).

The same computation as the Triton-lang kernel written as a CUDA C `RawKernel`, one
thread per output pixel of one image, for GPUs where Triton is not installed. Tensors
cross between torch and CuPy through DLPack, without copies.
"""

from __future__ import annotations

from functools import cache

import cupy
import numpy as np
import torch

from warpserve.kernels.preprocess_launch import prepare

_SOURCE = r"""
extern "C" __global__ void preprocess(
    const unsigned char* images, void* out, int half, int n, int h, int w,
    int H, int W, float scale_y, float scale_x, float s0, float s1, float s2,
    float m0, float m1, float m2) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long pixels = (long long)H * W;
    if (i >= pixels * n) return;
    int image = (int)(i / pixels);
    int idx = (int)(i % pixels);
    int y = idx / W, x = idx % W;
    float sy = fmaxf(scale_y * (y + 0.5f) - 0.5f, 0.0f);
    float sx = fmaxf(scale_x * (x + 0.5f) - 0.5f, 0.0f);
    int y0 = (int)sy, x0 = (int)sx;
    int y1 = min(y0 + 1, h - 1), x1 = min(x0 + 1, w - 1);
    float b = sy - y0, r = sx - x0;
    const unsigned char* base = images + (long long)image * h * w * 3;
    const unsigned char* top = base + (long long)y0 * w * 3;
    const unsigned char* bottom = base + (long long)y1 * w * 3;
    float scale[3] = {s0, s1, s2};
    float shift[3] = {m0, m1, m2};
    for (int c = 0; c < 3; ++c) {
        float upper = (1.0f - r) * top[x0 * 3 + c] + r * top[x1 * 3 + c];
        float lower = (1.0f - r) * bottom[x0 * 3 + c] + r * bottom[x1 * 3 + c];
        float value = ((1.0f - b) * upper + b * lower) * scale[c] + shift[c];
        long long o = ((long long)image * 3 + c) * pixels + idx;
        if (half) ((__half*)out)[o] = __float2half(value); else ((float*)out)[o] = value;
    }
}
"""
THREADS = 256


@cache
def _kernel() -> cupy.RawKernel:
    return cupy.RawKernel("#include <cuda_fp16.h>\n" + _SOURCE, "preprocess")


def preprocess_cupy(
    images: torch.Tensor,
    size: tuple[int, int],
    scale: np.ndarray,
    shift: np.ndarray,
    out_dtype: str,
) -> torch.Tensor:
    """Resize and normalise; inputs already checked by `preprocess_images`."""
    n, h, w, height, width, scale_y, scale_x, out = prepare(images, size, out_dtype)
    total = n * height * width
    if total == 0:
        return out
    src = cupy.from_dlpack(images)
    dst = cupy.from_dlpack(out)
    f32 = np.float32
    args: tuple[object, ...] = (src, dst, np.int32(out_dtype == "float16"), np.int32(n))
    args += (np.int32(h),)
    args += (np.int32(w), np.int32(height), np.int32(width))
    args += (scale_y, scale_x, *scale.astype(f32), *shift.astype(f32))
    with cupy.cuda.ExternalStream(torch.cuda.current_stream(images.device).cuda_stream):
        _kernel()(((total + THREADS - 1) // THREADS,), (THREADS,), args)
    return out
