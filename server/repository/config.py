"""config.pbtxt: parse, complete from the model file, validate.

Triton repositories load unmodified: fields warpserve does not declare are skipped
with a warning rather than failing the load.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from google.protobuf import text_format

from warpserve.protos import model_config_pb2 as mc
from warpserve.server import dtypes
from warpserve.server.errors import ModelLoadError

log = logging.getLogger(__name__)

CONFIG_FILE = "config.pbtxt"
# Triton's default when it completes max_batch_size for a model that can batch.
DEFAULT_MAX_BATCH_SIZE = 4

PLATFORM_FILES = {
    "onnxruntime_onnx": "model.onnx",
    "tensorrt_plan": "model.plan",
    "pytorch_libtorch": "model.pt",
    "torch_aoti": "model.pt2",
}
# Triton's default instance count for a KIND_CPU group that sets none, and the
# platforms it applies to (Triton: the ONNX Runtime and TensorFlow backends).
DEFAULT_CPU_INSTANCES = 2
CPU_PAIRED = frozenset({"onnxruntime_onnx"})
BACKEND_PLATFORMS = {
    "onnxruntime": "onnxruntime_onnx",
    "tensorrt": "tensorrt_plan",
    "pytorch": "pytorch_libtorch",
}


def parse_config(text: str, source: str) -> mc.ModelConfig:
    config = mc.ModelConfig()
    try:
        text_format.Parse(text, config, allow_unknown_field=True)
    except text_format.ParseError as exc:
        raise ModelLoadError(f"{source}: not a valid ModelConfig in text format: {exc}") from exc
    return config


def read_config(model_dir: Path) -> mc.ModelConfig:
    path = model_dir / CONFIG_FILE
    if not path.is_file():
        return mc.ModelConfig(name=model_dir.name)
    config = parse_config(path.read_text(), str(path))
    if config.name and config.name != model_dir.name:
        raise ModelLoadError(
            f"{path}: name '{config.name}' differs from its folder '{model_dir.name}'; "
            "make them equal or drop the name field"
        )
    config.name = model_dir.name
    return config


def platform_of(config: mc.ModelConfig) -> str:
    if config.platform:
        return config.platform
    return BACKEND_PLATFORMS.get(config.backend, config.backend)


def model_filename(config: mc.ModelConfig) -> str:
    if config.default_model_filename:
        return config.default_model_filename
    return PLATFORM_FILES.get(platform_of(config), "")


def guess_platform(version_dir: Path) -> str:
    for platform, filename in PLATFORM_FILES.items():
        if (version_dir / filename).exists():
            return platform
    return ""


def _onnx_tensors(values: list) -> list[tuple[str, str, list[int]]]:
    from onnx import helper

    tensors = []
    for value in values:
        tt = value.type.tensor_type
        onnx_name = helper.tensor_dtype_to_string(tt.elem_type)  # e.g. TensorProto.FLOAT
        wire = _ONNX_ELEM_TO_WIRE.get(onnx_name.rsplit(".", 1)[-1], "")
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim]
        tensors.append((value.name, wire, dims))
    return tensors


_ONNX_ELEM_TO_WIRE = {
    "BOOL": "BOOL",
    "UINT8": "UINT8",
    "UINT16": "UINT16",
    "UINT32": "UINT32",
    "UINT64": "UINT64",
    "INT8": "INT8",
    "INT16": "INT16",
    "INT32": "INT32",
    "INT64": "INT64",
    "FLOAT16": "FP16",
    "FLOAT": "FP32",
    "DOUBLE": "FP64",
    "STRING": "BYTES",
    "BFLOAT16": "BF16",
}


def complete_from_onnx(config: mc.ModelConfig, model_path: Path) -> None:
    """Fill inputs, outputs and max_batch_size from the ONNX graph where unambiguous."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    inputs = _onnx_tensors([v for v in graph.input if v.name not in initializers])
    outputs = _onnx_tensors(list(graph.output))
    batchable = all(dims and dims[0] == -1 for _, _, dims in inputs + outputs)
    if not config.input and not config.output and config.max_batch_size == 0 and batchable:
        config.max_batch_size = DEFAULT_MAX_BATCH_SIZE
        if not config.HasField("dynamic_batching"):
            config.dynamic_batching.SetInParent()
    skip = 1 if config.max_batch_size > 0 else 0
    _complete_tensors(config.input, inputs, skip, str(model_path))
    _complete_tensors(config.output, outputs, skip, str(model_path))


def _complete_tensors(
    configured: Any, found: list[tuple[str, str, list[int]]], skip: int, source: str
) -> None:
    by_name = {t.name: t for t in configured}
    for name, wire, dims in found:
        if not wire:
            raise ModelLoadError(f"{source}: tensor '{name}' has a type warpserve cannot serve")
        tensor = by_name.get(name)
        if tensor is None:
            if configured and by_name:
                continue  # the config lists a subset on purpose (e.g. optional outputs)
            tensor = configured.add(name=name)
        if tensor.data_type == mc.TYPE_INVALID:
            tensor.data_type = dtypes.BY_WIRE[wire].config
        if not tensor.dims:
            tensor.dims.extend(dims[skip:] or [1])


def validate(config: mc.ModelConfig, source: str) -> None:
    if not config.input:
        raise ModelLoadError(f"{source}: the model declares no inputs; list them in config.pbtxt")
    if not config.output:
        raise ModelLoadError(f"{source}: the model declares no outputs; list them in config.pbtxt")
    for tensor in [*config.input, *config.output]:
        if tensor.data_type not in dtypes.BY_CONFIG:
            raise ModelLoadError(f"{source}: tensor '{tensor.name}' has no data_type")
        if any(d < -1 or d == 0 for d in tensor.dims):
            raise ModelLoadError(
                f"{source}: tensor '{tensor.name}' dims {list(tensor.dims)}: use positive "
                "sizes or -1 for a variable dimension"
            )
    if config.max_batch_size < 0:
        raise ModelLoadError(f"{source}: max_batch_size must be >= 0")
    db = config.dynamic_batching
    if any(p <= 0 or p > max(config.max_batch_size, 1) for p in db.preferred_batch_size):
        raise ModelLoadError(
            f"{source}: preferred_batch_size {list(db.preferred_batch_size)} must lie in "
            f"1..max_batch_size ({config.max_batch_size})"
        )
    if db.priority_levels and db.default_priority_level > db.priority_levels:
        raise ModelLoadError(f"{source}: default_priority_level exceeds priority_levels")


def default_instance_count(config: mc.ModelConfig, group: mc.ModelInstanceGroup) -> int:
    """Triton's default for a group without a count: two instances on the CPU for the
    backends that run well side by side (ONNX Runtime here), one otherwise. The two
    split the cores between them (see the ONNX Runtime backend), so one batch computes
    while the other's requests are decoded and answered."""
    if group.kind == mc.ModelInstanceGroup.KIND_CPU and platform_of(config) in CPU_PAIRED:
        return DEFAULT_CPU_INSTANCES
    return 1


def _gpu_available(platform: str) -> bool:
    """Whether ``platform`` can run on a GPU here: KIND_AUTO (and a config without an
    instance_group) resolves to KIND_GPU only then, as in Triton."""
    if platform != "onnxruntime_onnx":
        return False
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def complete(config: mc.ModelConfig, version_dir: Path) -> mc.ModelConfig:
    """Return a completed, validated copy of ``config`` for the given version folder."""
    done = mc.ModelConfig()
    done.CopyFrom(config)
    if not done.platform and not done.backend:
        done.platform = guess_platform(version_dir)
    if done.backend in BACKEND_PLATFORMS and not done.platform:
        done.platform = BACKEND_PLATFORMS[done.backend]
    if not done.backend:
        done.backend = {v: k for k, v in BACKEND_PLATFORMS.items()}.get(done.platform, "")
    path = version_dir / model_filename(done)
    if platform_of(done) == "onnxruntime_onnx" and path.is_file():
        complete_from_onnx(done, path)
    if not done.instance_group:
        done.instance_group.add(kind=mc.ModelInstanceGroup.KIND_AUTO)
    for group in done.instance_group:
        if group.kind == mc.ModelInstanceGroup.KIND_AUTO:
            gpu = _gpu_available(platform_of(done))
            group.kind = mc.ModelInstanceGroup.KIND_GPU if gpu else mc.ModelInstanceGroup.KIND_CPU
        if group.count < 1:
            group.count = default_instance_count(done, group)
        if not group.name:
            group.name = done.name
    if not done.HasField("version_policy"):
        done.version_policy.latest.num_versions = 1
    validate(done, str(version_dir.parent / CONFIG_FILE))
    return done
