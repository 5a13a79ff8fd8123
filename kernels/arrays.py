"""numpy arrays and torch tensors at the kernels' boundary: checks and zero-copy conversion.

Ops accept either kind and answer in the kind they were given. torch is imported only when
the caller already has it loaded (a tensor can only exist then), so numpy callers never pay
for it.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from warpserve.kernels.errors import KernelInputError


def is_torch(value: object) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def device_of(value: object) -> str:
    """ "cpu" or "cuda" (the device type of a torch tensor; numpy is always "cpu")."""
    if is_torch(value):
        device_type: str = value.device.type  # type: ignore[attr-defined]
        return device_type
    return "cpu"


# str(np.dtype) costs microseconds per call; a dict lookup on the dtype does not.
_NUMPY_NAMES = {
    np.dtype(name): name
    for name in ("float16", "float32", "float64", "uint8", "int8", "int32", "int64", "bool")
}


def dtype_name(value: Any) -> str:
    """ "float32", "uint8", ... for either kind."""
    if is_torch(value):
        return str(value.dtype).removeprefix("torch.")
    return _NUMPY_NAMES.get(value.dtype) or str(value.dtype)


def check_array(value: object, argument: str, ndim: int, dtypes: tuple[str, ...]) -> None:
    """Raise `KernelInputError` unless `value` is a C-contiguous, aligned array we can use."""
    if not isinstance(value, np.ndarray) and not is_torch(value):
        raise KernelInputError(
            argument, f"expected a numpy array or torch tensor, got {type(value).__name__}"
        )
    array: Any = value
    if array.ndim != ndim:
        raise KernelInputError(
            argument, f"expected {ndim} dimensions, got shape {tuple(array.shape)}"
        )
    if dtype_name(array) not in dtypes:
        raise KernelInputError(
            argument, f"dtype {dtype_name(array)} is not supported; expected one of {dtypes}"
        )
    _check_layout(array, argument)


def _check_layout(array: Any, argument: str) -> None:
    if is_torch(array):
        contiguous = bool(array.is_contiguous())
        aligned = array.data_ptr() % array.element_size() == 0
    else:
        contiguous = bool(array.flags.c_contiguous)
        aligned = bool(array.flags.aligned)
    if not contiguous:
        raise KernelInputError(
            argument, "must be C-contiguous (row-major); pass np.ascontiguousarray(x)"
        )
    if not aligned:
        raise KernelInputError(
            argument, "is misaligned for its dtype; copy it into a fresh array first"
        )


def same_device(arrays: dict[str, object]) -> str:
    """The one device all `arrays` live on; mixing devices or kinds raises."""
    kinds = {name: (is_torch(a), device_of(a)) for name, a in arrays.items() if a is not None}
    if len(set(kinds.values())) > 1:
        found = ", ".join(
            f"{name}={'torch' if t else 'numpy'}/{d}" for name, (t, d) in kinds.items()
        )
        raise KernelInputError(
            next(iter(kinds)), f"all arrays must be of one kind on one device; got {found}"
        )
    return next(iter(kinds.values()))[1]


def to_numpy(value: Any) -> np.ndarray:
    """A numpy view of a CPU tensor (or the array itself)."""
    if is_torch(value):
        array: np.ndarray = value.detach().numpy()
        return array
    return np.asarray(value)


def to_torch(value: Any) -> Any:
    """A torch view of a numpy array (or the tensor itself)."""
    if is_torch(value):
        return value
    import torch

    return torch.from_numpy(value)


def like(result: Any, template: object) -> Any:
    """`result` in the kind of `template`: numpy for numpy callers, torch for torch ones."""
    if is_torch(template):
        return to_torch(result)
    return to_numpy(result)
