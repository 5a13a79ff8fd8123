"""TorchScript backend: ``model.pt`` under Triton's ``pytorch_libtorch`` platform.

Tensor names follow Triton's PyTorch backend (see ``torch_runtime.positions``):
``INPUT__0`` / ``OUTPUT__1`` style names give positions, or inputs named like the
forward method's arguments, or else the config's order. A forward method taking one
``Dict[str, Tensor]`` gets the inputs by their config names.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from warpserve.protos import model_config_pb2 as mc
from warpserve.server.backends import torch_runtime as rt
from warpserve.server.backends.spec import BackendSpec, Capabilities
from warpserve.server.errors import ModelLoadError

log = logging.getLogger(__name__)


def load_instance(
    config: mc.ModelConfig, version_dir: Path, index: int, count: int
) -> rt.TorchInstance:
    import torch

    path = SPEC.model_path(config, version_dir)
    rt.configure_threads(config, count)
    device = rt.device_for(config, index)
    try:
        module = torch.jit.load(str(path), map_location=device)
    except Exception as exc:  # torch raises RuntimeError, ValueError ... for bad files
        raise ModelLoadError(f"TorchScript could not load {path}: {exc}") from exc
    module.eval()
    arguments = _forward_arguments(module)
    inputs = [t.name for t in config.input]
    outputs = [t.name for t in config.output]
    call: Callable[..., Any] = module
    order = rt.positions(inputs, arguments)
    if _takes_a_dict(module):
        call, order = _dict_caller(module, inputs), list(range(len(inputs)))
    log.info("loaded %s instance %d/%d on %s", path, index + 1, count, device)
    return rt.TorchInstance(call, config, device, order, rt.positions(outputs))


def _forward_arguments(module: Any) -> list[str]:
    schema = module.forward.schema
    return [a.name for a in schema.arguments if a.name != "self"]


def _takes_a_dict(module: Any) -> bool:
    arguments = [a for a in module.forward.schema.arguments if a.name != "self"]
    return len(arguments) == 1 and str(arguments[0].type).startswith("Dict[str, Tensor]")


def _dict_caller(module: Any, names: list[str]) -> Callable[..., Any]:
    def call(*tensors: Any) -> Any:
        # The instance passes the tensors in the config's order (see load_instance).
        return module(dict(zip(names, tensors, strict=True)))

    return call


SPEC = BackendSpec(
    platform="pytorch_libtorch",
    backend="pytorch",
    default_filename="model.pt",
    loader=load_instance,
    description="TorchScript on PyTorch: CPU, or CUDA with streams and CUDA graphs",
    requires=("torch",),
    install_hint=rt.INSTALL_HINT,
    capabilities=Capabilities(gpu=True, cuda_graphs=True),
    parameters=rt.PARAMETERS,
    gpu_available=rt.gpu_available,
)
