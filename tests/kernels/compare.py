"""Comparing a kernel's output with its reference, saying plainly what differs."""

from __future__ import annotations

from typing import Any

import numpy as np


def as_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        return np.asarray(value.detach().cpu().numpy())
    return np.asarray(value)


def assert_close(actual: Any, expected: Any, atol: float, rtol: float) -> None:
    """Shapes and dtypes equal, NaN/Inf where the reference has them, values within tolerance."""
    got, want = as_numpy(actual), as_numpy(expected)
    assert got.shape == want.shape, f"shape {got.shape}, expected {want.shape}"
    assert got.dtype == want.dtype, f"dtype {got.dtype}, expected {want.dtype}"
    got64, want64 = got.astype(np.float64), want.astype(np.float64)
    nan_mismatch = np.isnan(got64) != np.isnan(want64)
    assert not nan_mismatch.any(), f"NaN differs at {np.argwhere(nan_mismatch)[:5].tolist()}"
    inf_mismatch = np.isinf(got64) != np.isinf(want64)
    assert not inf_mismatch.any(), f"Inf differs at {np.argwhere(inf_mismatch)[:5].tolist()}"
    finite = np.isfinite(want64)
    np.testing.assert_allclose(got64[finite], want64[finite], atol=atol, rtol=rtol)
