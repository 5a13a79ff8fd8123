"""Small torch models written as TorchScript and AOTInductor repositories for the tests.

The AOTInductor compile takes a while on a small CPU, so each package is compiled once
per test session (see the fixtures in test_torch.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

FEATURES, CLASSES, MAX_BATCH = 8, 3, 8


def mlp() -> Any:
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(FEATURES, 16), torch.nn.ReLU(), torch.nn.Linear(16, CLASSES)
    ).eval()


def eager(module: Any, *arrays: np.ndarray) -> Any:
    import torch

    with torch.inference_mode():
        return module(*[torch.from_numpy(a) for a in arrays])


def rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, FEATURES)).astype(np.float32)


def config(name: str, platform: str, inputs: list[str], outputs: list[str], extra: str = "") -> str:
    def tensors(names: list[str], dims: int) -> str:
        return ", ".join(f'{{ name: "{n}" data_type: TYPE_FP32 dims: [ {dims} ] }}' for n in names)

    return (
        f'name: "{name}"\nplatform: "{platform}"\nmax_batch_size: {MAX_BATCH}\n'
        f"input [{tensors(inputs, FEATURES)}]\noutput [{tensors(outputs, CLASSES)}]\n"
        "dynamic_batching { }\ninstance_group [{ count: 1 kind: KIND_CPU }]\n" + extra
    )


def write_model(repo: Path, name: str, text: str, model: Path, filename: str) -> Path:
    from warpserve.server.repository import versionfolder

    folder = repo / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.pbtxt").write_text(text)
    return versionfolder.write_version(folder, 1, model, filename)


def torchscript_mlp(path: Path) -> Any:
    """The MLP scripted to ``path``; returns the eager module."""
    import torch

    module = mlp()
    torch.jit.script(module).save(str(path))
    return module


class TwoInTwoOut:
    """forward(x, y) -> (x + y, x * y): argument names and result positions matter."""

    @staticmethod
    def build(path: Path) -> None:
        import torch

        class Pair(torch.nn.Module):
            def forward(
                self, x: torch.Tensor, y: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor]:
                return x + y, x * y

        torch.jit.script(Pair()).save(str(path))


def aoti_mlp(path: Path) -> Any:
    """The MLP exported with a dynamic batch and compiled into an AOTInductor package."""
    import torch

    module = mlp()
    batch = torch.export.Dim("batch", min=1, max=64)
    example = (torch.from_numpy(rows(4)),)
    program = torch.export.export(module, example, dynamic_shapes=({0: batch},))
    torch._inductor.aoti_compile_and_package(program, package_path=str(path))
    return module
