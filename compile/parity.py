"""Numerical parity of a variant with eager PyTorch on the validation rows."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from warpserve.compile.errors import UsageError

Run = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float


# Per precision. FP32 variants reorder float sums (fused kernels, other BLAS), which moves
# results by ~1e-6 relative; FP16 keeps ~3 significant digits; INT8 weights ~2.
DEFAULT_TOLERANCES = {
    "fp32": Tolerance(1e-4, 1e-3),
    "fp16": Tolerance(1e-2, 1e-2),
    "int8": Tolerance(5e-2, 5e-2),
}


@dataclass
class OutputParity:
    max_abs: float
    max_rel: float
    within: bool
    problem: str = ""  # a shape, dtype or missing-output mismatch


@dataclass
class Parity:
    tolerance: Tolerance
    outputs: dict[str, OutputParity] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(o.within for o in self.outputs.values())

    def worst(self) -> str:
        parts = []
        for name, o in self.outputs.items():
            if o.problem:
                parts.append(f"{name}: {o.problem}")
            elif not o.within:
                parts.append(f"{name}: max abs error {o.max_abs:.3g}, max rel {o.max_rel:.3g}")
        tol = f"(atol {self.tolerance.atol:g}, rtol {self.tolerance.rtol:g})"
        return "; ".join(parts) + f" {tol}"


def parse_tolerance(text: str) -> tuple[str, Tolerance]:
    """``int8=0.1,0.05`` -> ("int8", Tolerance(0.1, 0.05))."""
    precision, _, values = text.partition("=")
    try:
        atol, rtol = (float(v) for v in values.split(","))
    except ValueError:
        atol = rtol = -1.0
    if precision not in DEFAULT_TOLERANCES or atol < 0 or rtol < 0:
        raise UsageError(
            f"--tolerance {text!r}: expected PRECISION=ATOL,RTOL with PRECISION one of "
            f"{', '.join(DEFAULT_TOLERANCES)} and non-negative numbers, e.g. int8=0.1,0.05"
        )
    return precision, Tolerance(atol, rtol)


def check(
    run: Run,
    inputs: dict[str, np.ndarray],
    expected: dict[str, np.ndarray],
    tolerance: Tolerance,
) -> Parity:
    """All validation rows in one batch, then the first row alone (a traced or compiled
    variant that baked in the example batch size fails there)."""
    result = Parity(tolerance)
    full = run(inputs)
    one = run({k: v[:1] for k, v in inputs.items()})
    for name, want in expected.items():
        parts = [
            _compare(full.get(name), want, tolerance),
            _compare(one.get(name), want[:1], tolerance),
        ]
        problem = next((p.problem for p in parts if p.problem), "")
        result.outputs[name] = OutputParity(
            max(p.max_abs for p in parts),
            max(p.max_rel for p in parts),
            all(p.within for p in parts),
            problem,
        )
    return result


def _compare(got: np.ndarray | None, want: np.ndarray, tol: Tolerance) -> OutputParity:
    if got is None:
        return OutputParity(float("inf"), float("inf"), False, "output missing")
    got = np.asarray(got)
    if got.shape != want.shape:
        return OutputParity(
            float("inf"),
            float("inf"),
            False,
            f"shape {list(got.shape)}, expected {list(want.shape)}",
        )
    if np.issubdtype(want.dtype, np.integer) or want.dtype == np.bool_:
        wrong = int(np.count_nonzero(got != want))
        error = float(np.max(np.abs(got.astype(np.int64) - want.astype(np.int64)), initial=0))
        problem = f"{wrong} of {want.size} values differ (compared exactly)" if wrong else ""
        return OutputParity(error, error, wrong == 0, problem)
    diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
    scale = np.abs(want.astype(np.float64))
    max_abs = float(diff.max(initial=0.0))
    # Relative error only where the reference is clearly non-zero; near zero the absolute
    # tolerance governs, and a ratio there would only report noise.
    significant = scale > tol.atol
    max_rel = float((diff[significant] / scale[significant]).max(initial=0.0))
    within = bool(np.all(diff <= tol.atol + tol.rtol * scale)) and bool(np.isfinite(got).all())
    return OutputParity(max_abs, max_rel, within)
