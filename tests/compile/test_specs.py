"""Input specs, example archives and parity arithmetic (no torch export involved)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from warpserve.compile import parity, specs
from warpserve.compile.errors import UsageError
from warpserve.compile.specs import TensorSpec


def test_input_spec_parses_dims_without_batch() -> None:
    assert specs.parse_input("image:3x224x224:FP32") == TensorSpec("image", (3, 224, 224), "FP32")
    assert specs.parse_input("INPUT0:30:fp32") == TensorSpec("INPUT0", (30,), "FP32")
    assert specs.parse_input("ids:8:TYPE_INT64").numpy == np.int64


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("image:3x224x224", "expected NAME:DIMS:DTYPE"),
        ("image:3x0:FP32", "must be positive sizes"),
        ("image:3xa:FP32", "must be positive sizes"),
        ("image:3:FLOAT", "unknown or unsupported DTYPE"),
        ("image:3:BYTES", "unknown or unsupported DTYPE"),
        ("9 lives:3:FP32", "is not a tensor name"),
    ],
)
def test_bad_input_spec_says_what_is_expected(text: str, fragment: str) -> None:
    with pytest.raises(UsageError, match=fragment):
        specs.parse_input(text)


def test_examples_give_specs_and_must_match_declared_inputs(tmp_path: Path) -> None:
    path = tmp_path / "rows.npz"
    np.savez(path, x=np.zeros((5, 16), np.float32))
    examples = specs.read_examples(path)
    assert specs.specs_from_examples(examples) == [TensorSpec("x", (16,), "FP32")]
    with pytest.raises(UsageError, match="expected \\[rows, 8\\]"):
        specs.check_examples([TensorSpec("x", (8,), "FP32")], examples)
    with pytest.raises(UsageError, match="missing \\['y'\\]"):
        specs.check_examples([TensorSpec("y", (16,), "FP32")], examples)


def test_unreadable_or_ragged_examples_are_usage_errors(tmp_path: Path) -> None:
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(UsageError, match=r"not a readable \.npz"):
        specs.read_examples(tmp_path / "junk.npz")
    np.savez(tmp_path / "ragged.npz", a=np.zeros((2, 3)), b=np.zeros((3, 3)))
    with pytest.raises(UsageError, match="same number of rows"):
        specs.read_examples(tmp_path / "ragged.npz")


def test_tile_rows_repeats_examples_to_any_batch() -> None:
    rows = {"x": np.arange(3, dtype=np.float32)[:, None]}
    assert specs.tile_rows(rows, 7)["x"][:, 0].tolist() == [0, 1, 2, 0, 1, 2, 0]


def test_parity_records_errors_and_rejects_beyond_tolerance() -> None:
    expected = {"y": np.array([[1.0, 100.0], [0.0, -2.0]], np.float32)}
    tol = parity.Tolerance(1e-3, 1e-3)

    def close(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"y": expected["y"][: len(inputs["x"])] * (1 + 5e-4)}

    def off(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"y": expected["y"][: len(inputs["x"])] + 0.01}

    x = {"x": np.zeros((2, 1), np.float32)}
    good = parity.check(close, x, expected, tol)
    assert good.passed
    assert good.outputs["y"].max_abs == pytest.approx(0.05, rel=1e-3)
    assert good.outputs["y"].max_rel == pytest.approx(5e-4, rel=1e-2)
    bad = parity.check(off, x, expected, tol)  # positive control: really wrong
    assert not bad.passed
    assert "max abs error 0.01" in bad.worst() and "atol 0.001" in bad.worst()


def test_parity_compares_integer_outputs_exactly_and_checks_shapes() -> None:
    expected = {"ids": np.array([[1, 2], [3, 4]])}
    swapped = parity.check(
        lambda i: {"ids": np.array([[2, 1], [3, 4]])[: len(i["x"])]},
        {"x": np.zeros((2, 1))},
        expected,
        parity.Tolerance(1.0, 1.0),
    )
    assert not swapped.passed
    assert "values differ (compared exactly)" in swapped.worst()
    fixed = parity.check(
        lambda i: {"ids": np.array([[1, 2], [3, 4]])},  # ignores the batch size
        {"x": np.zeros((2, 1))},
        expected,
        parity.Tolerance(0, 0),
    )
    assert not fixed.passed
    assert "shape [2, 2], expected [1, 2]" in fixed.worst()


@pytest.mark.parametrize("text", ["int8=0.1", "int4=0.1,0.1", "fp16=-1,0", "fp32"])
def test_bad_tolerance_flag(text: str) -> None:
    with pytest.raises(UsageError, match="PRECISION=ATOL,RTOL"):
        parity.parse_tolerance(text)


def test_tolerance_flag() -> None:
    assert parity.parse_tolerance("int8=0.1,0.05") == ("int8", parity.Tolerance(0.1, 0.05))


def test_compile_never_imports_the_grpc_layer() -> None:
    import subprocess
    import sys

    script = (
        "import sys, pkgutil, importlib, warpserve.compile as c\n"
        "for m in pkgutil.iter_modules(c.__path__):\n"
        "    importlib.import_module(f'warpserve.compile.{m.name}')\n"
        "print(sorted(n for n in sys.modules if n.startswith('warpserve.server.grpc')))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
