"""Kernel tests run Triton-lang kernels in its interpreter when there is no GPU.

TRITON_INTERPRET is read when a kernel is decorated, so it is set here, before any test
module imports a Triton kernel module. On a machine with a GPU the kernels compile.
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

needs_triton = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None or importlib.util.find_spec("torch") is None,
    reason="Triton-lang kernels need the triton and torch packages (Linux x86_64)",
)
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU; none on this machine")
