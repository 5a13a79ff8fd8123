"""Whether numba.cuda can launch kernels here, asked only when a CUDA provider is chosen.

`numba.cuda.is_available()` needs a driver and a GPU; compiling needs NVVM from the CUDA
toolkit as well, which a CUDA build of torch does not bring. Both are checked once per
process, so the registry can say which is missing instead of failing at the first launch.
Under NUMBA_ENABLE_CUDASIM=1 numba simulates a GPU and both checks pass.
"""

from __future__ import annotations

from functools import cache


@cache
def numba_cuda_reason() -> str | None:
    """None when numba.cuda kernels can run, else why not."""
    from numba import config, cuda

    if getattr(config, "ENABLE_CUDASIM", 0):
        return None
    if not cuda.is_available():
        return "numba.cuda finds no usable CUDA driver and GPU (numba.cuda.is_available())"
    try:
        from numba.cuda.cudadrv.nvvm import NVVM

        NVVM()
    except Exception as exc:  # numba raises its own error types, which vary by version
        return f"numba.cuda cannot compile: NVVM from the CUDA toolkit is missing ({exc})"
    return None
