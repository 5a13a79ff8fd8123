"""Triton's ``reshape`` on config inputs and outputs.

Clients send and receive a tensor in its config ``dims``; the model takes and produces
it in ``reshape.shape``. The batch dimension, when the model batches, stays in front and
is not part of either. The k-th variable (-1) dimension of one shape takes its size from
the k-th variable dimension of the other. The classic use: a model whose batched input
or output is a plain ``[batch]`` vector, which the protocol cannot express (``dims`` must
not be empty), declares ``dims: [ 1 ] reshape: { shape: [ ] }``.

Reshaping happens around a model instance, after a batch is gathered and before it is
scattered, so validation, batching, golden data and warm-up all see the client's shapes.
It never copies: the arrays are contiguous, so numpy reshapes them in place.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from warpserve.protos import model_config_pb2 as mc
from warpserve.server.batching.executor import ModelInstance
from warpserve.server.errors import BackendError, ModelLoadError

Shape = tuple[int, ...]
# name -> (shape the client sees: dims, shape the model sees: reshape.shape)
Reshapes = dict[str, tuple[Shape, Shape]]


def _count(dims: Shape) -> int:
    """Triton's element count: -1 with a variable dimension, 0 for no dimensions."""
    if -1 in dims:
        return -1
    return math.prod(dims) if dims else 0


def _trunks(dims: Shape) -> list[int]:
    """Element counts of the runs of fixed dimensions between variable ones."""
    counts, current = [], 1
    for dim in dims:
        if dim == -1:
            counts.append(current)
            current = 1
        else:
            current *= dim
    return [*counts, current]


def _check(tensor: mc.ModelInput | mc.ModelOutput, batched: bool, source: str) -> None:
    """Triton's rules for one tensor's reshape, with its messages' substance."""
    where = f"{source}: tensor '{tensor.name}'"
    dims, shape = tuple(tensor.dims), tuple(tensor.reshape.shape)
    if not shape and not batched:
        raise ModelLoadError(
            f"{where} cannot have empty reshape for non-batching model as scalar tensors are "
            "not supported; give reshape a shape, or set max_batch_size"
        )
    if any(d < 1 and d != -1 for d in shape):
        raise ModelLoadError(
            f"{where}: reshape dimensions must be integer >= 1, or -1 to indicate a "
            f"variable-size dimension; got {list(shape)}"
        )
    dims_count, shape_count = _count(dims), _count(shape)
    if dims_count != shape_count and (shape_count != 0 or dims_count != 1):
        raise ModelLoadError(
            f"{where} has different size for dims {list(dims)} and reshape {list(shape)}; "
            "both must hold the same number of elements"
        )
    if dims_count == -1 and _trunks(dims) != _trunks(shape):
        raise ModelLoadError(
            f"{where}: dims {list(dims)} and reshape {list(shape)} must have the same "
            "variable-size dimensions, with equal element counts between them"
        )


def _reshapes(
    tensors: Iterable[mc.ModelInput | mc.ModelOutput], batched: bool, source: str
) -> Reshapes:
    found: Reshapes = {}
    for tensor in tensors:
        if tensor.HasField("reshape"):
            _check(tensor, batched, source)
            found[tensor.name] = (tuple(tensor.dims), tuple(tensor.reshape.shape))
    return found


def convert(array: np.ndarray, source: Shape, target: Shape, batched: bool) -> np.ndarray:
    """``array``, whose shape (past the batch dimension) matches ``source``, in ``target``."""
    lead = 1 if batched else 0
    shape = array.shape[lead:]
    fits = len(shape) == len(source)
    if not fits or any(s not in (-1, n) for s, n in zip(source, shape, strict=True)):
        raise ValueError(f"shape {list(array.shape)} does not match {list(source)}")
    variable = iter(n for s, n in zip(source, shape, strict=True) if s == -1)
    resolved = [next(variable) if t == -1 else t for t in target]
    return array.reshape(*array.shape[:lead], *resolved)


@dataclass(frozen=True)
class ReshapePlan:
    """A model's reshaped inputs and outputs (empty when it has none)."""

    inputs: Reshapes
    outputs: Reshapes
    batched: bool

    def wrap(self, instance: ModelInstance) -> ModelInstance:
        if not self.inputs and not self.outputs:
            return instance
        return ReshapedInstance(instance, self)


def plan(config: mc.ModelConfig, source: str) -> ReshapePlan:
    """Validate the config's reshapes (Triton's rules) and plan them; raises
    ModelLoadError naming the tensor."""
    batched = config.max_batch_size > 0
    return ReshapePlan(
        _reshapes(config.input, batched, source),
        _reshapes(config.output, batched, source),
        batched,
    )


class ReshapedInstance:
    """A model instance that takes and returns the client's shapes."""

    def __init__(self, inner: ModelInstance, reshapes: ReshapePlan) -> None:
        self.inner = inner
        self._plan = reshapes

    def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batched, to_model = self._plan.batched, self._plan.inputs
        feed = {
            name: convert(array, *to_model[name], batched) if name in to_model else array
            for name, array in inputs.items()
        }
        return {name: self._output(name, array) for name, array in self.inner.execute(feed).items()}

    def _output(self, name: str, array: np.ndarray) -> np.ndarray:
        shapes = self._plan.outputs.get(name)
        if shapes is None:
            return array
        dims, model_shape = shapes
        try:
            return convert(array, model_shape, dims, self._plan.batched)
        except ValueError as exc:
            raise BackendError(
                f"output '{name}' came out as {list(array.shape)}, but its config reshape "
                f"says the model produces {list(model_shape)} per row ({exc}); correct "
                "reshape.shape in config.pbtxt"
            ) from exc

    def single_threaded(self) -> ReshapedInstance | None:
        """The inner instance's single-threaded copy (see the ONNX Runtime backend)."""
        make = getattr(self.inner, "single_threaded", None)
        replacement = make() if make is not None else None
        return None if replacement is None else ReshapedInstance(replacement, self._plan)

    def close(self) -> None:
        self.inner.close()
