"""Check a decoded request against a model version's config before it is queued."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from warpserve.protos import model_config_pb2 as mc
from warpserve.server import dtypes
from warpserve.server.errors import InvalidInput, unknown_output


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: dtypes.DType
    dims: tuple[int, ...]  # without the batch dimension; -1: any size
    optional: bool = False

    def metadata_shape(self, batched: bool) -> list[int]:
        return [-1, *self.dims] if batched else list(self.dims)


def tensor_specs(tensors: Iterable[mc.ModelInput | mc.ModelOutput]) -> dict[str, TensorSpec]:
    """Config tensors by name, in config order."""
    return {
        t.name: TensorSpec(
            t.name,
            dtypes.from_config(t.data_type),
            tuple(t.dims),
            isinstance(t, mc.ModelInput) and t.optional,
        )
        for t in tensors
    }


class InputValidator:
    def __init__(self, config: mc.ModelConfig) -> None:
        self.model = config.name
        self.max_batch_size = config.max_batch_size
        self.batched = config.max_batch_size > 0
        self.inputs = tensor_specs(config.input)
        self._required = {n for n, spec in self.inputs.items() if not spec.optional}
        self.outputs = tensor_specs(config.output)
        # Shapes without a -1 dimension compare as whole tuples.
        self._fixed = {n: None if -1 in s.dims else s.dims for n, s in self.inputs.items()}

    def check(self, inputs: dict[str, np.ndarray]) -> int:
        """Validate ``inputs`` and return how many batch rows they carry."""
        if len(inputs) != len(self.inputs) or not self._required <= inputs.keys():
            self._check_names(inputs)
        rows = 0
        for name, array in inputs.items():
            spec = self.inputs.get(name)
            if spec is None:
                self._check_names(inputs)
                raise AssertionError("unreachable: _check_names raises")
            if array.dtype != spec.dtype.numpy:
                self._check_dtype(spec, array)
            rows = self._check_shape(spec, array.shape, rows)
        return rows if self.batched else 1

    def check_outputs(self, requested: list[str]) -> None:
        for name in requested:
            if name not in self.outputs:
                raise InvalidInput(
                    f"{unknown_output(name, self.model)}: the model's outputs are "
                    f"{sorted(self.outputs)}"
                )

    def _check_names(self, inputs: dict[str, np.ndarray]) -> None:
        # A misnamed input is both unknown and missing: name the one sent and the one
        # expected in one message, so the fix is visible without reading the config.
        missing = [n for n, s in self.inputs.items() if n not in inputs and not s.optional]
        extra = [n for n in inputs if n not in self.inputs]
        takes = f"it takes {sorted(self.inputs)}"
        if extra:
            lacks = f" and the request lacks {missing}" if missing else ""
            raise InvalidInput(
                f"model '{self.model}' has no input(s) {extra}, which the request sent; "
                f"{takes}{lacks}{_did_you_mean(extra, missing)}"
            )
        if missing:
            sent = sorted(inputs) if inputs else "none"
            raise InvalidInput(
                f"model '{self.model}' expects input(s) {missing} which the request lacks; "
                f"the request sent {sent}, {takes}"
            )

    def _check_dtype(self, spec: TensorSpec, array: np.ndarray) -> None:
        got = dtypes.from_numpy(array.dtype).wire
        if got != spec.dtype.wire:
            raise InvalidInput(
                f"model '{self.model}' input '{spec.name}': datatype {got} does not match "
                f"the model's {spec.dtype.wire}; convert before sending"
            )

    def _check_shape(self, spec: TensorSpec, shape: tuple[int, ...], rows: int) -> int:
        fixed = self._fixed[spec.name]
        if fixed is not None:  # no -1 dimension: one tuple comparison
            if self.batched:
                matches = len(shape) == len(fixed) + 1 and shape[1:] == fixed
            else:
                matches = shape == fixed
        else:
            expected = spec.metadata_shape(self.batched)
            matches = len(shape) == len(expected) and all(
                e == -1 or e == s for e, s in zip(expected, shape, strict=True)
            )
        if not matches:
            expected = spec.metadata_shape(self.batched)
            raise InvalidInput(
                f"model '{self.model}' input '{spec.name}': shape {list(shape)} does not "
                f"match the expected {expected} (-1: any size)"
            )
        if not self.batched:
            return rows
        batch = shape[0]
        if batch == 0:
            raise InvalidInput(
                f"model '{self.model}' input '{spec.name}': the batch is empty (0 rows); "
                "send at least one row"
            )
        if batch > self.max_batch_size:
            raise InvalidInput(
                f"model '{self.model}' input '{spec.name}': batch of {batch} rows exceeds "
                f"max_batch_size {self.max_batch_size}; split the request"
            )
        if rows and batch != rows:
            raise InvalidInput(
                f"model '{self.model}': inputs disagree on the batch size ({rows} vs "
                f"{batch} rows in '{spec.name}')"
            )
        return batch


def _did_you_mean(sent: list[str], missing: list[str]) -> str:
    """'did you mean' for each unknown name close to a missing one (case or a typo)."""
    hints = []
    for name in sent:
        folded = {m.lower(): m for m in missing}
        close = folded.get(name.lower()) or next(
            iter(difflib.get_close_matches(name, missing, n=1, cutoff=0.6)), None
        )
        if close is not None:
            hints.append(f"did you mean '{close}' for '{name}'?")
    return "; " + " ".join(hints) if hints else ""
