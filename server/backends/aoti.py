"""AOTInductor backend: ``model.pt2`` packages from ``torch._inductor.aoti_compile_and_package``.

warpserve's own platform (Triton has none for AOTInductor). The package holds kernels
compiled ahead of time for one device kind: C++ on the CPU, Inductor's Triton kernels on
a GPU; the package's metadata says which. Inputs are positional: ``<name>__<index>``
names give positions, else the config's order is the exported program's.
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

# Metadata key AOTInductor stores the compile device under ("cpu", "cuda").
DEVICE_KEY = "AOTI_DEVICE_KEY"


def load_instance(
    config: mc.ModelConfig, version_dir: Path, index: int, count: int
) -> rt.TorchInstance:
    import torch._inductor

    path = SPEC.model_path(config, version_dir)
    rt.configure_threads(config, count)
    device = rt.device_for(config, index)
    device_index = torch.device(device).index
    try:
        model = torch._inductor.aoti_load_package(
            str(path), device_index=-1 if device_index is None else device_index
        )
    except Exception as exc:  # a bad file raises RuntimeError from the C++ loader
        raise ModelLoadError(f"AOTInductor could not load {path}: {exc}") from exc
    compiled_for = model.get_metadata().get(DEVICE_KEY, "cpu")
    if compiled_for != torch.device(device).type:
        raise ModelLoadError(
            f"{path} was compiled for {compiled_for}, but instance {index} runs on {device}; "
            f"set the instance group's kind to match or compile for {device}"
        )
    inputs = [t.name for t in config.input]
    outputs = [t.name for t in config.output]
    log.info("loaded %s instance %d/%d on %s", path, index + 1, count, device)
    call = _direct_call(model, len(inputs))
    return rt.TorchInstance(call, config, device, rt.positions(inputs), rt.positions(outputs))


def _direct_call(model: Any, inputs: int) -> Callable[..., Any]:
    """The package's runner without the wrapper's per-call work.

    AOTICompiledModel.__call__ parses its input and output tree specs from text on
    every call, which for a small model costs about as much as the model (measured:
    25 us against 16 us eager for an 8-16-3 MLP). When the program takes exactly the
    config's tensors, positionally, the flat inputs are those tensors, so the specs are
    parsed once here.
    """
    from torch.utils import _pytree as pytree

    in_text, out_text = model.loader.get_call_spec()
    in_spec, out_spec = pytree.treespec_loads(in_text), pytree.treespec_loads(out_text)
    if in_spec.num_leaves != inputs:
        return model  # keyword or nested inputs: let the wrapper flatten them
    run = model.loader.boxed_run

    def call(*tensors: Any) -> Any:
        return pytree.tree_unflatten(run(list(tensors)), out_spec)

    return call


SPEC = BackendSpec(
    platform="torch_aoti",
    backend="torch_aoti",
    default_filename="model.pt2",
    loader=load_instance,
    description="AOTInductor packages: C++ kernels on the CPU, Triton kernels on a GPU",
    requires=("torch",),
    install_hint=rt.INSTALL_HINT,
    capabilities=Capabilities(gpu=True, cuda_graphs=True),
    parameters=rt.PARAMETERS,
    gpu_available=rt.gpu_available,
)
