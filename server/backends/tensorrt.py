"""TensorRT backend: ``model.plan`` engines under Triton's ``tensorrt_plan`` platform.

Written against TensorRT 10's Python API (named I/O tensors: ``set_input_shape``,
``set_tensor_address``, ``execute_async_v3``); device memory and streams come from torch.
Each instance owns one execution context and one CUDA stream. Dynamic dimensions take
their bounds from the engine's optimisation profile (``instance_group.profile`` picks one,
as in Triton; the first by default), and a request outside them is refused by name.

This path needs a GPU and the tensorrt package; the shape and signature logic is plain
Python and tested without them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from warpserve.protos import model_config_pb2 as mc
from warpserve.server.backends import torch_runtime as rt
from warpserve.server.backends.spec import BackendSpec, Capabilities, Signature, TensorSignature
from warpserve.server.errors import InvalidInput, ModelLoadError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

# TensorRT DataType names -> wire datatypes.
TRT_TO_WIRE = {
    "FLOAT": "FP32",
    "HALF": "FP16",
    "BF16": "BF16",
    "INT8": "INT8",
    "INT32": "INT32",
    "INT64": "INT64",
    "BOOL": "BOOL",
    "UINT8": "UINT8",
}


@dataclass(frozen=True)
class Binding:
    """One I/O tensor of the engine, with its profile bounds (inputs only)."""

    name: str
    is_input: bool
    wire: str
    dims: tuple[int, ...]  # -1 where dynamic
    min_shape: tuple[int, ...] = ()
    max_shape: tuple[int, ...] = ()


def bindings(engine: Any, profile: int = 0) -> list[Binding]:
    """The engine's named I/O tensors (TensorRT 10: num_io_tensors, get_tensor_*)."""
    found = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        is_input = engine.get_tensor_mode(name).name == "INPUT"  # trt.TensorIOMode
        dtype = engine.get_tensor_dtype(name).name
        dims = tuple(int(d) for d in engine.get_tensor_shape(name))
        lo: tuple[int, ...] = ()
        hi: tuple[int, ...] = ()
        if is_input and -1 in dims:
            low, _, high = engine.get_tensor_profile_shape(name, profile)
            lo, hi = tuple(int(d) for d in low), tuple(int(d) for d in high)
        found.append(Binding(name, is_input, TRT_TO_WIRE.get(dtype, ""), dims, lo, hi))
    return found


def signature_of(found: Sequence[Binding]) -> Signature:
    inputs = tuple(TensorSignature(b.name, b.wire, b.dims) for b in found if b.is_input)
    outputs = tuple(TensorSignature(b.name, b.wire, b.dims) for b in found if not b.is_input)
    return Signature(inputs, outputs, max_batch_size(found))


def max_batch_size(found: Sequence[Binding]) -> int:
    """The largest batch every input's profile allows (0 when the first dim is fixed)."""
    inputs = [b for b in found if b.is_input]
    if not inputs or any(not b.dims or b.dims[0] != -1 or not b.max_shape for b in inputs):
        return 0
    return min(b.max_shape[0] for b in inputs)


def check_shape(binding: Binding, shape: tuple[int, ...]) -> None:
    """Refuse a shape outside the optimisation profile, naming the bounds."""
    if len(shape) != len(binding.dims):
        raise InvalidInput(
            f"input '{binding.name}' has {len(shape)} dimensions, the engine {len(binding.dims)}"
        )
    for axis, (size, fixed) in enumerate(zip(shape, binding.dims, strict=True)):
        if fixed != -1 and size != fixed:
            raise InvalidInput(
                f"input '{binding.name}' dim {axis} is {size}; the engine was built for {fixed}"
            )
        if fixed == -1 and binding.min_shape:
            lo, hi = binding.min_shape[axis], binding.max_shape[axis]
            if not lo <= size <= hi:
                raise InvalidInput(
                    f"input '{binding.name}' dim {axis} is {size}; the engine's optimisation "
                    f"profile allows {lo}..{hi} (rebuild it with a wider profile)"
                )


def _trt() -> Any:
    import tensorrt

    return tensorrt


def _deserialize(path: Path) -> Any:
    trt = _trt()
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(path.read_bytes())
    if engine is None:
        raise ModelLoadError(
            f"TensorRT could not deserialize {path}: an engine runs only on the TensorRT "
            "version and GPU it was built for; rebuild it here"
        )
    return engine


def read_signature(model_path: Path) -> Signature:
    found = bindings(_deserialize(model_path))
    return signature_of(found)


class TensorRTInstance:
    def __init__(self, engine: Any, config: mc.ModelConfig, device: str, profile: int) -> None:
        import torch

        self._engine = engine
        self._device = torch.device(device)
        self._stream = torch.cuda.Stream(self._device)
        self._context = engine.create_execution_context()
        if self._context is None:
            raise ModelLoadError(f"model '{config.name}': TensorRT made no execution context")
        self._context.set_optimization_profile_async(profile, self._stream.cuda_stream)
        self._bindings = {b.name: b for b in bindings(engine, profile)}
        self._outputs = [t.name for t in config.output]

    def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        with torch.cuda.stream(self._stream):
            keep = []  # device buffers must outlive the asynchronous run
            for name, array in inputs.items():
                binding = self._bindings[name]
                check_shape(binding, array.shape)
                if not array.flags.writeable:  # a view of the request's bytes
                    array = array.copy()
                tensor = torch.from_numpy(np.ascontiguousarray(array)).to(self._device)
                self._context.set_input_shape(name, tuple(array.shape))
                self._context.set_tensor_address(name, tensor.data_ptr())
                keep.append(tensor)
            outputs = {name: self._output_buffer(name) for name in self._outputs}
            if not self._context.execute_async_v3(self._stream.cuda_stream):
                raise ModelLoadError("TensorRT execute_async_v3 failed (see the server log)")
            # cpu() copies on this stream and waits for it, so the run has finished too.
            results = {name: tensor.cpu().numpy() for name, tensor in outputs.items()}
        return results

    def _output_buffer(self, name: str) -> torch.Tensor:
        import torch

        shape = tuple(self._context.get_tensor_shape(name))
        if any(d < 0 for d in shape):
            raise ModelLoadError(
                f"output '{name}' has a data-dependent shape {list(shape)}; this backend "
                "needs output shapes that follow from the input shapes"
            )
        dtype = _TORCH_DTYPES[self._bindings[name].wire]
        tensor = torch.empty(shape, dtype=getattr(torch, dtype), device=self._device)
        self._context.set_tensor_address(name, tensor.data_ptr())
        return tensor

    def close(self) -> None:
        del self._context
        del self._engine


_TORCH_DTYPES = {
    "FP32": "float32",
    "FP16": "float16",
    "BF16": "bfloat16",
    "INT8": "int8",
    "INT32": "int32",
    "INT64": "int64",
    "BOOL": "bool",
    "UINT8": "uint8",
}


def _profile(config: mc.ModelConfig, index: int) -> int:
    seen = 0
    for group in config.instance_group:
        if index < seen + group.count:
            return int(group.profile[0]) if group.profile else 0
        seen += group.count
    return 0


def load_instance(
    config: mc.ModelConfig, version_dir: Path, index: int, count: int
) -> TensorRTInstance:
    device = rt.device_for(config, index)
    if not device.startswith("cuda"):
        raise ModelLoadError(
            f"model '{config.name}': TensorRT engines run only on a GPU; use KIND_GPU"
        )
    path = SPEC.model_path(config, version_dir)
    import torch

    with torch.cuda.device(torch.device(device)):
        instance = TensorRTInstance(_deserialize(path), config, device, _profile(config, index))
    log.info("loaded %s instance %d/%d on %s", path, index + 1, count, device)
    return instance


SPEC = BackendSpec(
    platform="tensorrt_plan",
    backend="tensorrt",
    default_filename="model.plan",
    loader=load_instance,
    description="TensorRT 10 engines on a GPU",
    requires=("tensorrt", "torch"),
    install_hint="install them with `pip install 'warpserve[gpu,torch]'` on a CUDA machine",
    capabilities=Capabilities(gpu=True),
    gpu_available=rt.gpu_available,
    read_signature=read_signature,
)
