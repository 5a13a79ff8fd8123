"""Kernel tests run Triton-lang kernels in its interpreter, and numba.cuda kernels in
numba's simulator, when there is no GPU.

TRITON_INTERPRET is read when a kernel is decorated and NUMBA_ENABLE_CUDASIM when
numba.cuda is imported, so both are set here, before any test module imports a kernel
module. On a machine with a GPU the kernels compile.
"""

from __future__ import annotations

import importlib.util
import os

import pytest


def _cuda_available() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


CUDA = _cuda_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
    # numba reads its configuration at import; numba.cuda picks the simulator when it is
    # first imported, which no module before these tests does (numba's CPU kernels do not).
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
    if importlib.util.find_spec("numba") is not None:
        import numba

        numba.config.reload_config()

needs_triton = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None or importlib.util.find_spec("torch") is None,
    reason="Triton-lang kernels need the triton and torch packages (Linux x86_64)",
)
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU; none on this machine")

needs_numba_cuda = pytest.mark.skipif(
    importlib.util.find_spec("numba") is None or importlib.util.find_spec("torch") is None,
    reason="numba.cuda kernels need the numba and torch packages",
)
