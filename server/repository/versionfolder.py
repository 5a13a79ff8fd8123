"""One model version folder: written atomically; its golden data read and compared.

    <model>/<version>/<model file>            model.onnx, model.pt, model.plan ...
    <model>/<version>/<companion files>       what the model file needs beside it
                                              (weights.npz of a kernel plan.json)
    <model>/<version>/golden/inputs.npz       rows the version must reproduce
    <model>/<version>/golden/outputs.npz      what the reference model gave for them
    <model>/<version>/<report files>          compile_report.json, training.json ...

A version is built in a hidden staging folder beside its final place and renamed into
place in one step, so a server polling the repository never sees half of it (the
repository scan skips names that are not numbers). The server's warm-up check, the demo
build and ``compile`` all read and compare golden data through this module.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

GOLDEN_DIR = "golden"
INPUTS_FILE = "inputs.npz"
OUTPUTS_FILE = "outputs.npz"


@dataclass(frozen=True)
class Golden:
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]


def read_golden(version_dir: Path) -> Golden | None:
    """The version's golden data, or None when it has none (both files are needed)."""
    folder = version_dir / GOLDEN_DIR
    if not (folder / INPUTS_FILE).is_file() or not (folder / OUTPUTS_FILE).is_file():
        return None
    return Golden(_load(folder / INPUTS_FILE), _load(folder / OUTPUTS_FILE))


def _load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


def write_golden(version_dir: Path, golden: Golden) -> None:
    """Write (or replace) the golden files of an existing folder, each atomically."""
    folder = version_dir / GOLDEN_DIR
    folder.mkdir(parents=True, exist_ok=True)
    _save_atomic(folder / INPUTS_FILE, golden.inputs)
    _save_atomic(folder / OUTPUTS_FILE, golden.outputs)


def _save_atomic(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    staging = path.with_name(f".{path.name}.tmp")
    with open(staging, "wb") as file:
        np.savez(file, **arrays)  # type: ignore[arg-type]
    os.replace(staging, path)


def write_version(
    model_dir: Path,
    version: int,
    model: Path | bytes,
    filename: str,
    *,
    golden: Golden | None = None,
    reports: Mapping[str, str | bytes] | None = None,
    companions: Mapping[str, Path | bytes] | None = None,
) -> Path:
    """Write ``<model_dir>/<version>/`` in one step and return it.

    ``model`` is the model file's path or bytes, stored as ``filename``. Companions are
    further model files by name (paths or bytes), staged and renamed with the rest, so a
    format of several files appears whole or not at all. Reports are extra files by name
    (text or bytes). An existing version is never overwritten.
    """
    if version < 1:
        raise ValueError(f"version {version}: version folders are numbered from 1")
    model_dir.mkdir(parents=True, exist_ok=True)
    target = model_dir / str(version)
    if target.exists():
        raise FileExistsError(f"{target} exists; choose a new version number")
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=model_dir))
    try:
        staging.chmod(0o755)  # mkdtemp makes it private; servers may run as another user
        for name, content in {filename: model, **(companions or {})}.items():
            _put_model_file(staging, name, content)
        _fill(staging, golden, reports or {})
        # rename() would replace an empty folder created meanwhile; a non-empty one fails.
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _put_model_file(folder: Path, filename: str, model: Path | bytes) -> None:
    if Path(filename).name != filename or filename in ("", ".", ".."):
        raise ValueError(f"model file name {filename!r}: a plain file name is needed")
    if isinstance(model, bytes):
        (folder / filename).write_bytes(model)
    else:
        shutil.copyfile(model, folder / filename)


def _fill(folder: Path, golden: Golden | None, reports: Mapping[str, str | bytes]) -> None:
    if golden is not None:
        write_golden(folder, golden)
    for name, content in reports.items():
        if isinstance(content, bytes):
            (folder / name).write_bytes(content)
        else:
            (folder / name).write_text(content, encoding="utf-8")


def next_version(model_dir: Path) -> int:
    """One more than the highest numbered folder (1 for a new model)."""
    if not model_dir.is_dir():
        return 1
    numbers = [int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()]
    return max(numbers, default=0) + 1


# --- comparison --------------------------------------------------------------------------


@dataclass(frozen=True)
class OutputDiff:
    """How one output compares with its expected values.

    ``problem`` is "" when within tolerance, else "missing", "shape" or "values";
    ``mismatched`` counts elements outside ``atol + rtol * |expected|`` (for BYTES and
    other non-numeric outputs: elements not exactly equal). ``message`` says where and by
    how much: a worst error just past the tolerance reads as numerical noise, one of
    order 1 as a different model.
    """

    name: str
    problem: str
    max_abs_error: float
    max_rel_error: float
    mismatched: int
    total: int
    message: str = ""

    @property
    def ok(self) -> bool:
        return not self.problem


@dataclass(frozen=True)
class Comparison:
    outputs: tuple[OutputDiff, ...]
    atol: float
    rtol: float

    @property
    def ok(self) -> bool:
        return all(d.ok for d in self.outputs)

    @property
    def max_abs_error(self) -> float:
        return max((d.max_abs_error for d in self.outputs), default=0.0)

    @property
    def max_rel_error(self) -> float:
        return max((d.max_rel_error for d in self.outputs), default=0.0)

    def failures(self) -> list[str]:
        return [d.message for d in self.outputs if not d.ok]


# Dtype kinds compared as numbers (bool, signed, unsigned, float); anything else
# (BYTES as object arrays, strings) must match exactly.
NUMERIC_KINDS = "biuf"


def compare(
    actual: Mapping[str, np.ndarray],
    expected: Mapping[str, np.ndarray],
    atol: float,
    rtol: float,
) -> Comparison:
    """Compare every expected output (extra actual outputs are ignored). NaN equals NaN;
    an expected inf is met only by the same inf, as in np.isclose."""
    diffs = tuple(
        _diff(name, actual.get(name), np.asarray(want), atol, rtol)
        for name, want in expected.items()
    )
    return Comparison(diffs, atol, rtol)


def _diff(
    name: str, got: np.ndarray | None, want: np.ndarray, atol: float, rtol: float
) -> OutputDiff:
    inf, size = float("inf"), want.size
    if got is None:
        return OutputDiff(
            name, "missing", inf, inf, size, size, f"the model produced no output '{name}'"
        )
    got = np.asarray(got)
    if got.shape != want.shape:
        text = f"output '{name}' has shape {list(got.shape)}, the golden data {list(want.shape)}"
        return OutputDiff(name, "shape", inf, inf, size, size, text)
    if got.dtype.kind in NUMERIC_KINDS and want.dtype.kind in NUMERIC_KINDS:
        return _numeric(name, got.astype(np.float64), want.astype(np.float64), atol, rtol)
    return _exact(name, got, want)


def _numeric(name: str, got: np.ndarray, want: np.ndarray, atol: float, rtol: float) -> OutputDiff:
    bad = ~np.isclose(got, want, atol=atol, rtol=rtol, equal_nan=True)
    # inf - inf, inf / inf and x / 0 give NaN or inf here; ``bad`` already decided those
    # pairs, so the warnings say nothing.
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        error = np.where(bad, np.abs(got - want), 0.0)
        relative = np.where(want != 0, error / np.abs(want), np.where(error > 0, np.inf, 0.0))
    # NaN on one side only (or inf against inf of the other sign) is a mismatch with no
    # size: rank it above every number.
    error = np.where(np.isnan(error) & bad, np.inf, error)
    relative = np.where(np.isnan(relative) & bad, np.inf, relative)
    count = int(bad.sum())
    max_abs = float(error.max(initial=0.0))
    max_rel = float(relative.max(initial=0.0))
    if not count:
        # Within tolerance: report the real (small) errors, for parity tables.
        with np.errstate(invalid="ignore", over="ignore"):
            close = np.where(np.isnan(got) & np.isnan(want), 0.0, np.abs(got - want))
            close = np.where(np.isnan(close), 0.0, close)  # inf - inf of equal infinities
            rel = np.where(want != 0, close / np.where(want != 0, np.abs(want), 1.0), 0.0)
            rel = np.where(np.isfinite(rel), rel, 0.0)
        return OutputDiff(
            name, "", float(close.max(initial=0.0)), float(rel.max(initial=0.0)), 0, want.size
        )
    worst = np.unravel_index(int(np.argmax(error)), got.shape)
    text = (
        f"output '{name}' differs from its golden output at {count} of {bad.size} "
        f"elements: max abs error {max_abs:.3g}, max rel error {max_rel:.3g}; worst at "
        f"{[int(i) for i in worst]}: got {got[worst]:.6g}, golden {want[worst]:.6g}; "
        f"tolerance: |got - golden| <= atol {atol:g} + rtol {rtol:g} * |golden| "
        "(parameters golden_atol, golden_rtol)"
    )
    return OutputDiff(name, "values", max_abs, max_rel, count, bad.size, text)


def _exact(name: str, got: np.ndarray, want: np.ndarray) -> OutputDiff:
    bad = np.asarray(got != want, dtype=bool).reshape(got.shape)
    count = int(bad.sum())
    if not count:
        return OutputDiff(name, "", 0.0, 0.0, 0, bad.size)
    first = tuple(int(i) for i in np.argwhere(bad)[0])
    text = (
        f"output '{name}' differs from its golden output at {count} of {bad.size} "
        f"elements (compared exactly: {got.dtype} and {want.dtype}); first at {list(first)}: "
        f"got {got[first]!r}, golden {want[first]!r}"
    )
    inf = float("inf")
    return OutputDiff(name, "values", inf, inf, count, bad.size, text)
