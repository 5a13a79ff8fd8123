"""How a version's output differs from the golden output stored with it, in numbers.

A failed check must say how far off the version is: a worst error just past the
tolerance reads as numerical noise (loosen ``golden_atol``/``golden_rtol``), one of
order 1 as a different model (fix the version or its golden data).
"""

from __future__ import annotations

import numpy as np

# Dtype kinds compared as numbers (bool, signed, unsigned, float); anything else
# (BYTES as object arrays, strings) must match exactly.
NUMERIC_KINDS = "biuf"


def output_mismatch(name: str, got: np.ndarray, want: np.ndarray, atol: float, rtol: float) -> str:
    """'' when ``got`` matches ``want`` within atol + rtol * |want|, else what differs."""
    if got.shape != want.shape:
        return f"output '{name}' has shape {list(got.shape)}, the golden data {list(want.shape)}"
    if got.dtype.kind in NUMERIC_KINDS and want.dtype.kind in NUMERIC_KINDS:
        return _numeric_mismatch(name, got.astype(np.float64), want.astype(np.float64), atol, rtol)
    return _exact_mismatch(name, got, want)


def _numeric_mismatch(
    name: str, got: np.ndarray, want: np.ndarray, atol: float, rtol: float
) -> str:
    bad = ~np.isclose(got, want, atol=atol, rtol=rtol, equal_nan=True)
    if not bad.any():
        return ""
    with np.errstate(invalid="ignore", divide="ignore"):
        error = np.abs(got - want)
        relative = np.where(want != 0, error / np.abs(want), np.where(error > 0, np.inf, 0.0))
    # NaN on one side only is a mismatch with no size: rank it above every number.
    error = np.where(np.isnan(error) & bad, np.inf, error)
    worst = np.unravel_index(int(np.nanargmax(np.where(bad, error, -1.0))), got.shape)
    return (
        f"output '{name}' differs from its golden output at {int(bad.sum())} of {bad.size} "
        f"elements: max abs error {float(np.nanmax(error)):.3g}, max rel error "
        f"{float(np.nanmax(relative)):.3g}; worst at {[int(i) for i in worst]}: got "
        f"{got[worst]:.6g}, golden {want[worst]:.6g}; tolerance: |got - golden| <= "
        f"atol {atol:g} + rtol {rtol:g} * |golden| (parameters golden_atol, golden_rtol)"
    )


def _exact_mismatch(name: str, got: np.ndarray, want: np.ndarray) -> str:
    bad = np.asarray(got != want, dtype=bool).reshape(got.shape)
    if not bad.any():
        return ""
    first = tuple(int(i) for i in np.argwhere(bad)[0])
    return (
        f"output '{name}' differs from its golden output at {int(bad.sum())} of {bad.size} "
        f"elements (compared exactly: {got.dtype} and {want.dtype}); first at {list(first)}: "
        f"got {got[first]!r}, golden {want[first]!r}"
    )
