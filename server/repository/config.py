"""config.pbtxt: parse, complete from the model file, validate.

Parsing is strict, as in Triton: the proto declares Triton's whole ModelConfig, so a
Triton repository parses unmodified and a field Triton lacks is a typo that fails the
load. What a model format contributes (file
name, signature, GPU, instance defaults) comes from its spec in ``server/backends``.
"""

from __future__ import annotations

import difflib
import logging
import re
from pathlib import Path
from typing import Any

from google.protobuf import text_format

from warpserve.protos import model_config_pb2 as mc
from warpserve.server import dtypes
from warpserve.server.backends import spec as formats
from warpserve.server.backends.spec import BackendSpec, Signature, TensorSignature
from warpserve.server.errors import ModelLoadError

log = logging.getLogger(__name__)

CONFIG_FILE = "config.pbtxt"
# Triton's default when it completes max_batch_size for a model that can batch.
DEFAULT_MAX_BATCH_SIZE = 4

# Triton's default instance count for a KIND_CPU group that sets none, on the formats
# whose spec asks for it (Triton: the ONNX Runtime and TensorFlow backends).
DEFAULT_CPU_INSTANCES = 2


_UNKNOWN_FIELD = re.compile(r'Message type "inference\.([\w.]+)" has no field named "(\w+)"')


def parse_config(text: str, source: str) -> mc.ModelConfig:
    """Parse strictly, as Triton does: a field its ModelConfig lacks is a typo."""
    config = mc.ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise ModelLoadError(_parse_error(exc, source)) from exc
    return config


def _parse_error(exc: text_format.ParseError, source: str) -> str:
    where = f"{source}:{exc.GetLine()}:{exc.GetColumn()}" if exc.GetLine() else source
    unknown = _UNKNOWN_FIELD.search(str(exc))
    if unknown is None:
        return f"{where}: not a valid ModelConfig in text format: {exc}"
    message, field = unknown.groups()
    known = [f.name for f in _message_fields(message)]
    close = difflib.get_close_matches(field, known, n=1)
    hint = f"did you mean '{close[0]}'?" if close else f"{message} has: {', '.join(known)}"
    return f"{where}: unknown field '{field}' in {message}; {hint}"


def _message_fields(message: str) -> list[Any]:
    pool = mc.ModelConfig.DESCRIPTOR.file.pool
    try:
        return list(pool.FindMessageTypeByName(f"inference.{message}").fields)
    except KeyError:
        return []


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


def model_filename(config: mc.ModelConfig) -> str:
    """The model file's name in a version folder ("" for an unknown format)."""
    if config.default_model_filename:
        return config.default_model_filename
    spec = formats.find(config)
    return spec.default_filename if spec is not None else ""


def complete_from_signature(config: mc.ModelConfig, found: Signature, source: str) -> None:
    """Fill inputs, outputs and max_batch_size from the model file where unambiguous."""
    batchable = all(t.dims and t.dims[0] == -1 for t in (*found.inputs, *found.outputs))
    if not config.input and not config.output and config.max_batch_size == 0 and batchable:
        config.max_batch_size = found.max_batch_size or DEFAULT_MAX_BATCH_SIZE
        if not config.HasField("dynamic_batching"):
            config.dynamic_batching.SetInParent()
    skip = 1 if config.max_batch_size > 0 else 0
    _complete_tensors(config.input, found.inputs, skip, source)
    _complete_tensors(config.output, found.outputs, skip, source)


def _complete_tensors(
    configured: Any, found: tuple[TensorSignature, ...], skip: int, source: str
) -> None:
    by_name = {t.name: t for t in configured}
    for name, wire, dims in ((t.name, t.wire, t.dims) for t in found):
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
            tensor.dims.extend(dims[skip:] or (1,))


# Triton features that change what a model computes or returns; serving such a model
# without them would answer wrongly, so the load fails instead.
_UNSUPPORTED = {
    "sequence_batching": "sequence batching (stateful models)",
    "ensemble_scheduling": "ensembles",
    "batch_input": "batch inputs",
    "batch_output": "batch outputs",
}


def _unsupported(config: mc.ModelConfig) -> list[str]:
    found = [config.WhichOneof("scheduling_choice") or ""]
    found += [name for name in ("batch_input", "batch_output") if getattr(config, name)]
    return [name for name in found if name in _UNSUPPORTED]


def validate(config: mc.ModelConfig, source: str) -> None:
    for name in _unsupported(config):
        raise ModelLoadError(
            f"{source}: warpserve does not serve Triton's {_UNSUPPORTED[name]} ({name})"
        )
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
    spec = formats.find(config)
    paired = spec is not None and spec.capabilities.cpu_pair
    if group.kind == mc.ModelInstanceGroup.KIND_CPU and paired:
        return DEFAULT_CPU_INSTANCES
    return 1


def _gpu_available(spec: BackendSpec | None) -> bool:
    """Whether the format can run on a GPU here: KIND_AUTO (and a config without an
    instance_group) resolves to KIND_GPU only then, as in Triton."""
    return spec is not None and spec.capabilities.gpu and spec.gpu_available()


def complete(config: mc.ModelConfig, version_dir: Path) -> mc.ModelConfig:
    """Return a completed, validated copy of ``config`` for the given version folder.

    Raises ModelLoadError naming the missing package when the format's toolchain is
    not installed here, before anything reads the model file.
    """
    done = mc.ModelConfig()
    done.CopyFrom(config)
    spec = formats.find(done) if done.platform or done.backend else formats.guess(version_dir)
    if spec is not None:
        spec.check_toolchain(done.name)
        done.platform = done.platform or spec.platform
        done.backend = done.backend or spec.backend
        path = spec.model_path(done, version_dir)
        if spec.read_signature is not None and path.is_file():
            complete_from_signature(done, spec.read_signature(path), str(path))
    if not done.instance_group:
        done.instance_group.add(kind=mc.ModelInstanceGroup.KIND_AUTO)
    for group in done.instance_group:
        if group.kind == mc.ModelInstanceGroup.KIND_AUTO:
            gpu = _gpu_available(spec)
            group.kind = mc.ModelInstanceGroup.KIND_GPU if gpu else mc.ModelInstanceGroup.KIND_CPU
        if group.count < 1:
            group.count = default_instance_count(done, group)
        if not group.name:
            group.name = done.name
    if not done.HasField("version_policy"):
        done.version_policy.latest.num_versions = 1
    validate(done, str(version_dir.parent / CONFIG_FILE))
    return done
