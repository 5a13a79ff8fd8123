"""PyTorch variants run in-process, for platforms this server has no backend for yet."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from warpserve.server.batching.executor import ModelInstance


class TorchInstance:
    """A TorchScript module or an AOTInductor package behind ``ModelInstance``."""

    def __init__(self, module: Any, input_names: list[str], output_names: list[str]) -> None:
        self._module = module
        self._inputs = input_names
        self._outputs = output_names

    def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tensors = [torch.from_numpy(inputs[name]) for name in self._inputs]
        with torch.no_grad():
            result = self._module(*tensors)
        values = result if isinstance(result, (tuple, list)) else (result,)
        return {n: v.numpy() for n, v in zip(self._outputs, values, strict=True)}

    def close(self) -> None:
        self._module = None


def open_instance(
    platform: str, path: Path, inputs: list[str], outputs: list[str]
) -> ModelInstance | None:
    """None for a platform torch cannot run; the names map positional tensors to names."""
    if platform == "pytorch_libtorch":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(path))
        return TorchInstance(module, inputs, outputs)
    if platform == "torch_aoti":
        from torch._inductor import aoti_load_package

        package = aoti_load_package(str(path))
        return TorchInstance(package, inputs, outputs)
    return None
