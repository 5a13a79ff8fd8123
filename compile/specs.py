"""Input specs (``NAME:DIMS:DTYPE``) and example rows.

Example rows serve three purposes: the validation rows of the parity check, the calibration
data of INT8 variants, and the golden data written beside the model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from warpserve.compile.errors import UsageError
from warpserve.server import dtypes

EXAMPLE_ROWS = 8
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dims: tuple[int, ...]  # without the batch dimension
    dtype: str  # wire name: FP32, INT64, ...

    @property
    def numpy(self) -> np.dtype:
        return dtypes.BY_WIRE[self.dtype].numpy

    def text(self) -> str:
        dims = "x".join(map(str, self.dims)) or "scalar"
        return f"{self.name}:{dims}:{self.dtype}"


def parse_input(text: str) -> TensorSpec:
    """``image:3x224x224:FP32`` -> TensorSpec; dims exclude the batch dimension."""
    parts = text.split(":")
    if len(parts) != 3:
        raise UsageError(
            f"--input {text!r}: expected NAME:DIMS:DTYPE, e.g. INPUT0:30:FP32 or "
            "image:3x224x224:FP32 (DIMS without the batch dimension)"
        )
    name, dims_text, dtype = parts[0], parts[1], parts[2].upper().removeprefix("TYPE_")
    if not _NAME.match(name):
        raise UsageError(f"--input {text!r}: {name!r} is not a tensor name (letters, digits, _)")
    try:
        dims = tuple(int(d) for d in dims_text.lower().split("x"))
    except ValueError:
        dims = ()
    if not dims or any(d <= 0 for d in dims):
        raise UsageError(
            f"--input {text!r}: DIMS {dims_text!r} must be positive sizes joined by 'x' "
            "(e.g. 3x224x224)"
        )
    if dtype not in dtypes.BY_WIRE or dtype in ("BYTES", "BF16"):
        known = ", ".join(w for w in dtypes.BY_WIRE if w not in ("BYTES", "BF16"))
        raise UsageError(f"--input {text!r}: unknown or unsupported DTYPE {dtype!r}; use {known}")
    return TensorSpec(name, dims, dtype)


def read_examples(path: Path, flag: str = "--example-inputs") -> dict[str, np.ndarray]:
    """The arrays of an ``.npz``, each with the batch dimension first."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError) as exc:
        raise UsageError(f"{flag} {path}: not a readable .npz file ({exc})") from exc
    if not arrays:
        raise UsageError(f"{flag} {path}: the archive holds no arrays")
    rows = {len(a) if a.ndim else -1 for a in arrays.values()}
    if len(rows) != 1 or -1 in rows or 0 in rows:
        shapes = {k: list(v.shape) for k, v in arrays.items()}
        raise UsageError(
            f"{flag} {path}: every array needs the same number of rows (the first "
            f"dimension), at least one; got {shapes}"
        )
    return arrays


def specs_from_examples(examples: dict[str, np.ndarray]) -> list[TensorSpec]:
    specs = []
    for name, array in examples.items():
        try:
            wire = dtypes.from_numpy(array.dtype).wire
        except TypeError as exc:
            raise UsageError(f"example input {name!r}: {exc}") from exc
        specs.append(TensorSpec(name, tuple(array.shape[1:]), wire))
    return specs


def check_examples(specs: list[TensorSpec], examples: dict[str, np.ndarray]) -> None:
    """The example arrays must match the declared inputs by name, dims and dtype."""
    missing = [s.name for s in specs if s.name not in examples]
    extra = [k for k in examples if k not in {s.name for s in specs}]
    if missing or extra:
        raise UsageError(
            f"--example-inputs holds {sorted(examples)} but the inputs are "
            f"{[s.name for s in specs]} (missing {missing}, extra {extra}); name the arrays "
            "after the inputs"
        )
    for spec in specs:
        array = examples[spec.name]
        if tuple(array.shape[1:]) != spec.dims or array.dtype != spec.numpy:
            raise UsageError(
                f"example input {spec.name!r}: shape {list(array.shape)} {array.dtype}, "
                f"expected [rows, {', '.join(map(str, spec.dims))}] {spec.numpy}"
            )


def random_examples(specs: list[TensorSpec], rows: int = EXAMPLE_ROWS) -> dict[str, np.ndarray]:
    """Seeded rows for inputs declared without data: standard normal floats, small ints."""
    rng = np.random.default_rng(0)
    examples = {}
    for spec in specs:
        shape = (rows, *spec.dims)
        if spec.numpy.kind == "f":
            examples[spec.name] = rng.standard_normal(shape).astype(spec.numpy)
        elif spec.numpy.kind == "b":
            examples[spec.name] = rng.integers(0, 2, shape).astype(spec.numpy)
        else:
            examples[spec.name] = rng.integers(0, 10, shape).astype(spec.numpy)
    return examples


def tile_rows(examples: dict[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
    """``batch`` rows made by repeating the example rows (for the latency sweep)."""
    out = {}
    for name, array in examples.items():
        reps = -(-batch // len(array))
        out[name] = np.ascontiguousarray(np.concatenate([array] * reps)[:batch])
    return out
