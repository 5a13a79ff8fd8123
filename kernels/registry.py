"""Which implementation of an op runs: one frozen record per provider, one selection rule.

Each op module registers its providers at import: the numpy reference, Numba on the CPU,
Triton-lang and CuPy on the GPU. `select(op, device, explicit)` returns the provider to
run; "auto" takes the fastest available one for the device (providers carry a rank from
the benchmarks in bench/), an explicit name that cannot run raises saying why.

Availability is decided without importing the provider's packages (`find_spec` only), so
selecting costs microseconds and a missing Triton or CuPy never slows down the CPU path.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

from warpserve.kernels.errors import ProviderUnavailable

PROVIDER_NAMES = ("numpy", "numba", "triton", "cupy")
DEVICES = ("cpu", "cuda")
ArrayKind = Literal["numpy", "torch"]


@dataclass(frozen=True)
class Provider:
    """One implementation of one op.

    `module` and `function` name the entry point, imported on first use. It takes the op's
    arguments already validated, as numpy arrays (`takes="numpy"`) or torch tensors
    (`takes="torch"`). `rank` orders "auto" (lower runs first, from measured speed).
    `interpreter_env`, when set, lets a GPU provider run on the CPU under that environment
    variable (TRITON_INTERPRET=1): slow, for tests, never picked by "auto". `probe`,
    "module:function" in warpserve.kernels, is asked only once the device fits: it returns
    None when the provider can run, else why not (numba.cuda: a driver, a GPU and NVVM).
    One name may be registered for different devices (numba on the CPU and numba.cuda on
    the GPU): `provider="numba"` then means the one for the input's device.
    """

    op: str
    name: str
    devices: frozenset[str]
    module: str
    function: str
    takes: ArrayKind = "numpy"
    requires: tuple[str, ...] = ()
    rank: int = 100
    interpreter_env: str | None = None
    probe: str | None = None

    def __post_init__(self) -> None:
        if not self.op.isidentifier():
            raise ValueError(f"provider op {self.op!r} must be an identifier")
        if self.name not in PROVIDER_NAMES:
            raise ValueError(f"provider name {self.name!r} must be one of {PROVIDER_NAMES}")
        unknown = set(self.devices) - set(DEVICES)
        if not self.devices or unknown:
            raise ValueError(
                f"provider {self.op}/{self.name}: devices {sorted(self.devices)} must be a "
                f"non-empty subset of {DEVICES}"
            )
        if not self.module.startswith("warpserve.kernels.") or not self.function:
            raise ValueError(
                f"provider {self.op}/{self.name}: entry point {self.module}.{self.function} "
                "must live in warpserve.kernels"
            )
        if self.takes not in ("numpy", "torch"):
            raise ValueError(f"provider {self.op}/{self.name}: takes must be numpy or torch")
        if self.probe is not None and not (
            self.probe.startswith("warpserve.kernels.") and ":" in self.probe
        ):
            raise ValueError(
                f"provider {self.op}/{self.name}: probe {self.probe!r} must be "
                "'warpserve.kernels.module:function'"
            )

    def unavailable_reason(self, device: str) -> str | None:
        """Why this provider cannot run on `device` here, or None when it can."""
        missing = [package for package in self.requires if not _installed(package)]
        if missing:
            return f"needs {', '.join(missing)}, not installed"
        if device in self.devices or (
            self.interpreter_env and device == "cpu" and _interpreting(self.interpreter_env)
        ):
            return _probe(self.probe) if self.probe else None
        hint = f" (or set {self.interpreter_env}=1 to interpret it, slowly)"
        return f"runs on {'/'.join(sorted(self.devices))}, not {device}" + (
            hint if self.interpreter_env and device == "cpu" else ""
        )

    def load(self) -> Callable[..., Any]:
        """The entry point (imports its module the first time)."""
        return _entry_point(self.module, self.function)


_PROVIDERS: dict[str, list[Provider]] = {}


def register(provider: Provider) -> Provider:
    """Add `provider`; a different record under the same op and name for one of its
    devices raises."""
    registered = _PROVIDERS.setdefault(provider.op, [])
    for existing in registered:
        if existing == provider:
            return existing
        if existing.name == provider.name and existing.devices & provider.devices:
            raise ValueError(
                f"provider {provider.op}/{provider.name} is already registered for "
                f"{'/'.join(sorted(existing.devices & provider.devices))}"
            )
    registered.append(provider)
    return provider


def providers(op: str) -> tuple[Provider, ...]:
    """The providers registered for `op`, fastest first."""
    return tuple(sorted(_PROVIDERS.get(op, []), key=lambda p: (p.rank, p.name)))


def select(op: str, device: str, explicit: str = "auto") -> Provider:
    """The provider to run `op` on `device`: `explicit` if it can, else the fastest."""
    registered = providers(op)
    if not registered:
        raise ProviderUnavailable(f"no providers registered for op {op!r}")
    names = ", ".join(sorted({p.name for p in registered}))
    if explicit == "auto":
        return _fastest(op, device, registered, names)
    # The record for the device first, then one that may interpret it elsewhere.
    named = sorted(
        (p for p in registered if p.name == explicit), key=lambda p: device not in p.devices
    )
    if not named:
        raise ProviderUnavailable(
            f"{op}: provider {explicit!r} is not registered; registered: {names} (or 'auto')"
        )
    reasons = [p.unavailable_reason(device) for p in named]
    for provider, reason in zip(named, reasons, strict=True):
        if reason is None:
            return provider
    raise ProviderUnavailable(f"{op}: provider {explicit!r} is unavailable: {reasons[0]}")


def _fastest(op: str, device: str, registered: tuple[Provider, ...], names: str) -> Provider:
    reasons = []
    for provider in registered:
        # Interpreted GPU providers are for tests; "auto" only takes native devices.
        if device in provider.devices and provider.unavailable_reason(device) is None:
            return provider
        reasons.append(f"{provider.name}: {provider.unavailable_reason(device) or 'not native'}")
    raise ProviderUnavailable(
        f"{op}: no provider runs on {device}; registered: {names} ({'; '.join(reasons)})"
    )


@cache
def _installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


@cache
def _probe(target: str) -> str | None:
    module, function = target.split(":")
    reason: str | None = _entry_point(module, function)()
    return reason


def _interpreting(env: str) -> bool:
    return os.environ.get(env, "0") not in ("", "0")


@cache
def _entry_point(module: str, function: str) -> Callable[..., Any]:
    entry: Callable[..., Any] = getattr(importlib.import_module(module), function)
    return entry
