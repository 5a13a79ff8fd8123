"""Fused MLP layer: act(x @ weight.T + bias), and a small MLP made of such layers.

`weight` is `[out, in]` as in `torch.nn.Linear`. Activations: "relu", "gelu" (the exact,
erf form of `torch.nn.GELU()`), "sigmoid" and "none". float32 and float16 inputs; float16
accumulates in float32 and is rounded once, on the way out.

The reference below is what the fused kernels remove. For x `[M, K]` and weight `[N, K]`
in float32 it reads 4·(M·K + N·K + N) bytes and writes the product, 4·M·N; then the bias
add reads and writes 4·M·N again, and the activation once more per numpy step (relu one
pass, sigmoid three, gelu about eight). The fused kernels read the inputs once and write
4·M·N once: bias and activation are applied to the accumulator while it is in registers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from warpserve.kernels import arrays
from warpserve.kernels.errors import KernelInputError
from warpserve.kernels.registry import Provider, register, select

ACTIVATIONS = ("none", "relu", "gelu", "sigmoid")
DTYPES = ("float32", "float16")

register(Provider("mlp", "numpy", frozenset({"cpu"}), __name__, "fused_linear_reference"))
register(
    Provider(
        "mlp",
        "numba",
        frozenset({"cpu"}),
        "warpserve.kernels.mlp_numba",
        "fused_linear_numba",
        requires=("numba",),
        rank=10,
    )
)
register(
    Provider(
        "mlp",
        "triton",
        frozenset({"cuda"}),
        "warpserve.kernels.mlp_triton",
        "fused_linear_triton",
        takes="torch",
        requires=("triton", "torch"),
        rank=10,
        interpreter_env="TRITON_INTERPRET",
    )
)


def fused_linear(
    x: Any,
    weight: Any,
    bias: Any = None,
    activation: str = "relu",
    provider: str = "auto",
) -> Any:
    """act(x @ weight.T + bias) for x `[M, K]`, weight `[N, K]`, bias `[N]` or None.

    Returns `[M, N]` in x's dtype and kind (numpy array, or torch tensor on x's device).
    Raises `KernelInputError` naming the bad argument, `ProviderUnavailable` when
    `provider` cannot run here.
    """
    check_linear(x, weight, bias, activation)
    device = arrays.same_device({"x": x, "weight": weight, "bias": bias})
    chosen = select("mlp", device, provider)
    convert = arrays.to_torch if chosen.takes == "torch" else arrays.to_numpy
    args = [convert(a) if a is not None else None for a in (x, weight, bias)]
    return arrays.like(chosen.load()(*args, activation), x)


def check_linear(x: Any, weight: Any, bias: Any, activation: str) -> None:
    arrays.check_array(x, "x", 2, DTYPES)
    arrays.check_array(weight, "weight", 2, DTYPES)
    if weight.shape[0] == 0 or weight.shape[1] == 0:
        raise KernelInputError("weight", f"shape {tuple(weight.shape)} has an empty dimension")
    if weight.shape[1] != x.shape[1]:
        raise KernelInputError(
            "x",
            f"has {x.shape[1]} features but weight {tuple(weight.shape)} takes {weight.shape[1]}"
            " ([out, in], as torch.nn.Linear)",
        )
    if bias is not None:
        arrays.check_array(bias, "bias", 1, DTYPES)
        if bias.shape[0] != weight.shape[0]:
            raise KernelInputError(
                "bias", f"has {bias.shape[0]} values for {weight.shape[0]} outputs"
            )
    dtypes = {arrays.dtype_name(a) for a in (x, weight, bias) if a is not None}
    if len(dtypes) > 1:
        raise KernelInputError("weight", f"x, weight and bias must share a dtype; got {dtypes}")
    if activation not in ACTIVATIONS:
        raise KernelInputError("activation", f"{activation!r} is not one of {ACTIVATIONS}")


def fused_linear_reference(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, activation: str
) -> np.ndarray:
    """The numpy reference: a BLAS product, then bias and activation as separate passes."""
    y = x.astype(np.float32, copy=False) @ weight.astype(np.float32, copy=False).T
    if bias is not None:
        y += bias.astype(np.float32, copy=False)
    return activate_reference(y, activation).astype(x.dtype, copy=False)


def activate_reference(y: np.ndarray, activation: str) -> np.ndarray:
    if activation == "relu":
        return np.maximum(y, 0, out=y)
    if activation == "sigmoid":
        # tanh form: no overflow warning for large negative inputs, unlike 1 / (1 + exp(-y)).
        return 0.5 * (1.0 + np.tanh(0.5 * y))
    if activation == "gelu":
        # -inf gives -inf * 0 = NaN, as in torch; that is the answer, not a warning.
        with np.errstate(invalid="ignore"):
            return 0.5 * y * (1.0 + erf(y * np.float32(1 / np.sqrt(2))))
    return y


def erf(z: np.ndarray) -> np.ndarray:
    """erf to 1.5e-7 absolute (Abramowitz & Stegun 7.1.26); numpy itself has none."""
    a = np.abs(z)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (
        0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429)))
    )
    return np.sign(z) * (1.0 - poly * np.exp(-a * a))


@dataclass(frozen=True)
class LinearLayer:
    """One layer of a `FusedMLP`: weight `[out, in]`, bias `[out]` or None, activation."""

    weight: np.ndarray
    bias: np.ndarray | None
    activation: str = "relu"


class FusedMLP:
    """A stack of fused linear layers, checked once at construction.

    Built from numpy weights (e.g. a trained `nn.Sequential`'s Linear layers); each call
    runs `fused_linear` per layer with the chosen provider. Weights are moved to the
    input's kind and device once per kind and kept, so a GPU caller copies them only once.
    A float32 numpy batch on the Numba provider runs every layer in one compiled call
    (`mlp_numba.PackedMLP`): for a small MLP the Python around per-layer calls costs
    more than the arithmetic. ``threads``: the most Numba threads that call splits a
    batch over (`PackedMLP`: from 256 rows); None: Numba's thread count.
    """

    def __init__(self, layers: Sequence[LinearLayer], threads: int | None = None) -> None:
        if not layers:
            raise KernelInputError("layers", "an MLP needs at least one layer")
        for index, layer in enumerate(layers):
            probe = np.zeros((1, layer.weight.shape[-1]), layer.weight.dtype)
            try:
                check_linear(probe, layer.weight, layer.bias, layer.activation)
            except KernelInputError as error:
                raise KernelInputError(f"layers[{index}].{error.argument}", str(error)) from None
            if index and layers[index - 1].weight.shape[0] != layer.weight.shape[1]:
                raise KernelInputError(
                    f"layers[{index}].weight",
                    f"takes {layer.weight.shape[1]} inputs but the layer before gives "
                    f"{layers[index - 1].weight.shape[0]}",
                )
        self.layers = tuple(layers)
        self._placed: dict[tuple[bool, str], list[tuple[Any, Any]]] = {}
        self._float32 = all(
            ly.weight.dtype == np.float32 and (ly.bias is None or ly.bias.dtype == np.float32)
            for ly in self.layers
        )
        self._threads = threads
        self._packed: Any = None
        self._cpu_provider: dict[str, str] = {}

    @property
    def in_features(self) -> int:
        return int(self.layers[0].weight.shape[1])

    def __call__(self, x: Any, provider: str = "auto") -> Any:
        if self._one_call(x, provider):
            return self._packed(x)
        for (weight, bias), layer in zip(self._weights_like(x), self.layers, strict=True):
            x = fused_linear(x, weight, bias, layer.activation, provider)
        return x

    def _one_call(self, x: Any, provider: str) -> bool:
        if not (
            self._float32
            and type(x) is np.ndarray
            and x.dtype == np.float32
            and x.ndim == 2
            and x.shape[1] == self.in_features
            and x.flags.c_contiguous
            and x.flags.aligned
        ):
            return False
        if provider not in self._cpu_provider:
            self._cpu_provider[provider] = select("mlp", "cpu", provider).name
        if self._cpu_provider[provider] != "numba":
            return False
        if self._packed is None:
            from warpserve.kernels.mlp_numba import PackedMLP

            self._packed = PackedMLP(
                [(ly.weight, ly.bias, ly.activation) for ly in self.layers], self._threads
            )
        return True

    def _weights_like(self, x: Any) -> list[tuple[Any, Any]]:
        key = (arrays.is_torch(x), str(x.device) if arrays.is_torch(x) else "cpu")
        if key not in self._placed:
            self._placed[key] = [(_place(ly.weight, x), _place(ly.bias, x)) for ly in self.layers]
        return self._placed[key]


def _place(value: np.ndarray | None, template: Any) -> Any:
    if value is None or not arrays.is_torch(template):
        return value
    return arrays.to_torch(value).to(template.device)
