"""What a version runs before it takes traffic.

Triton runs the samples its config's ``model_warmup`` lists, and nothing when there are
none. warpserve runs, in order:

1. the ``model_warmup`` samples, with Triton's semantics (``zero_data``, ``random_data``,
   ``input_data_file`` under ``<model>/warmup/``, ``batch_size`` rows, ``count`` runs);
   one that fails fails the load, as in Triton;
2. the golden inputs, whose outputs are checked (see ``version.py``);
3. when the user gave neither: inputs valid for each declared type (zeros, empty strings)
   at one row and at max_batch_size, to page the model in. A model may reject any value
   it was not built for (a string parsed as a number), and nobody asked for this run, so
   its failure is logged and the load goes on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from warpserve.protos import model_config_pb2 as mc
from warpserve.server import dtypes
from warpserve.server.codec import deserialize_bytes
from warpserve.server.errors import InvalidInput, ModelLoadError
from warpserve.server.validation import InputValidator, TensorSpec

log = logging.getLogger(__name__)

WARMUP_DIR = "warmup"  # Triton's folder for input_data_file, beside config.pbtxt

Inputs = dict[str, np.ndarray]


@dataclass(frozen=True)
class WarmupSample:
    name: str
    inputs: Inputs  # with the batch dimension when the model batches
    count: int  # runs


def configured_samples(
    config: mc.ModelConfig, model_dir: Path, validator: InputValidator
) -> list[WarmupSample]:
    """The config's ``model_warmup`` samples, built and checked as requests are."""
    samples = []
    for setting in config.model_warmup:
        if setting.batch_size == 0:
            log.info(
                "model '%s': warm-up sample '%s' has batch_size 0; skipped (as in Triton)",
                config.name,
                setting.name,
            )
            continue
        sample = _sample(setting, model_dir, validator)
        try:
            validator.check(sample.inputs)
        except InvalidInput as exc:
            raise ModelLoadError(f"model_warmup sample '{setting.name}': {exc}") from exc
        samples.append(sample)
    return samples


def _sample(setting: mc.ModelWarmup, model_dir: Path, validator: InputValidator) -> WarmupSample:
    where = f"model_warmup sample '{setting.name}'"
    if not validator.batched and setting.batch_size > 1:
        raise ModelLoadError(
            f"{where}: batch_size {setting.batch_size} needs a model that batches; without "
            "max_batch_size, batch_size must be 1"
        )
    rng = np.random.default_rng(0)
    inputs: Inputs = {}
    for name, given in sorted(setting.inputs.items()):
        spec = validator.inputs.get(name)
        if spec is None:
            raise ModelLoadError(
                f"{where} names input '{name}', which the model does not have; it takes "
                f"{sorted(validator.inputs)}"
            )
        one = _sample_input(where, name, given, model_dir, rng)
        if validator.batched:
            one = np.repeat(one[np.newaxis], setting.batch_size, axis=0)
        inputs[name] = one
    return WarmupSample(setting.name, inputs, max(setting.count, 1))


def _sample_input(
    where: str, name: str, given: mc.ModelWarmup.Input, model_dir: Path, rng: np.random.Generator
) -> np.ndarray:
    dims = tuple(given.dims)
    if any(d < 0 for d in dims):
        raise ModelLoadError(
            f"{where}: warmup setting expects all variable-size dimensions are specified "
            f"for input '{name}' (dims {list(dims)})"
        )
    if given.data_type not in dtypes.BY_CONFIG:
        raise ModelLoadError(f"{where}: input '{name}' has no data_type")
    dt = dtypes.from_config(given.data_type)
    kind = given.WhichOneof("input_data_type")
    if kind == "input_data_file":
        return _from_file(where, name, dt, dims, model_dir, given.input_data_file)
    if kind == "random_data" and dt.wire != "BYTES":
        return _random(dt.numpy, dims, rng)
    if kind in ("zero_data", "random_data"):  # Triton's random strings are empty too
        return zeros(dt, dims)
    raise ModelLoadError(
        f"{where}: warmup setting expects input '{name}' to have input_data_type set "
        "(zero_data, random_data or input_data_file)"
    )


def _random(dtype: np.dtype, dims: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    if dtype.kind == "b":
        return rng.random(dims) < 0.5
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, dims, dtype=dtype, endpoint=True)
    return rng.random(dims).astype(dtype)  # floats in [0, 1)


def _from_file(
    where: str, name: str, dt: dtypes.DType, dims: tuple[int, ...], model_dir: Path, file: str
) -> np.ndarray:
    folder = (model_dir / WARMUP_DIR).resolve()
    path = (folder / file).resolve()
    if not path.is_relative_to(folder):
        raise ModelLoadError(
            f"{where}: input_data_file '{file}' for input '{name}' is outside "
            f"{model_dir / WARMUP_DIR}; keep warm-up data in that folder"
        )
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(
            f"{where}: input_data_file for input '{name}' cannot be read ({exc})"
        ) from exc
    count = int(np.prod(dims))
    if dt.wire == "BYTES":  # length-prefixed elements, as on the wire
        try:
            return deserialize_bytes(name, data, count).reshape(dims)
        except InvalidInput as exc:
            raise ModelLoadError(f"{where}: {path}: {exc}") from exc
    needed = count * dt.itemsize
    if len(data) < needed:
        raise ModelLoadError(
            f"{where}: warmup setting expects {needed} bytes for input '{name}', but the "
            f"data provided from {file} only has {len(data)} bytes"
        )
    return np.frombuffer(data[:needed], dtype=dt.numpy).reshape(dims).copy()


def zeros(dt: dtypes.DType, dims: tuple[int, ...] | list[int]) -> np.ndarray:
    """A tensor valid for the type: zeros, or empty strings for BYTES."""
    if dt.wire == "BYTES":
        return np.full(dims, b"", dtype=np.object_)
    return np.zeros(dims, dtype=dt.numpy)


def default_inputs(inputs: dict[str, TensorSpec], rows: int | None) -> Inputs:
    """Zeros (empty strings) for every input, variable dimensions of size 1; ``rows``
    in front when the model batches."""
    made = {}
    for spec in inputs.values():
        dims = [d if d > 0 else 1 for d in spec.dims]
        made[spec.name] = zeros(spec.dtype, [rows, *dims] if rows is not None else dims)
    return made


def with_rows(inputs: Inputs, rows: int) -> Inputs:
    """A batch of ``rows`` copies of the first row of inputs known to run."""
    return {name: np.repeat(array[:1], rows, axis=0) for name, array in inputs.items()}
