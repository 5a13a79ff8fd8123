"""Version folders: atomic writes, golden data round trips, comparison numbers."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from warpserve.server.repository import versionfolder as vf
from warpserve.server.repository.repository import ModelRepository

X = np.arange(6, dtype=np.float32).reshape(3, 2)


def _golden() -> vf.Golden:
    return vf.Golden({"INPUT0": X}, {"OUTPUT0": X * 2, "IDS": np.array([[1], [2], [3]])})


def test_write_version_holds_model_golden_and_reports(tmp_path: Path) -> None:
    model_dir = tmp_path / "m"
    path = vf.write_version(
        model_dir, 1, b"onnx bytes", "model.onnx", golden=_golden(), reports={"r.json": "{}"}
    )
    assert path == model_dir / "1"
    assert (path / "model.onnx").read_bytes() == b"onnx bytes"
    assert (path / "r.json").read_text() == "{}"
    golden = vf.read_golden(path)
    assert golden is not None
    np.testing.assert_array_equal(golden.inputs["INPUT0"], X)
    assert sorted(golden.outputs) == ["IDS", "OUTPUT0"]
    assert os.stat(path).st_mode & 0o755 == 0o755
    assert [p.name for p in model_dir.iterdir()] == ["1"]  # no staging left behind
    assert vf.next_version(model_dir) == 2 and vf.next_version(tmp_path / "new") == 1


def test_write_version_copies_a_model_file(tmp_path: Path) -> None:
    source = tmp_path / "exported.pt"
    source.write_bytes(b"torchscript")
    path = vf.write_version(tmp_path / "m", 3, source, "model.pt")
    assert (path / "model.pt").read_bytes() == b"torchscript"
    assert vf.read_golden(path) is None


def test_write_version_carries_companion_model_files(tmp_path: Path) -> None:
    weights = tmp_path / "built" / "weights.npz"
    weights.parent.mkdir()
    weights.write_bytes(b"npz")
    path = vf.write_version(
        tmp_path / "m", 1, b"{}", "plan.json", companions={"weights.npz": weights, "x": b"y"}
    )
    assert sorted(p.name for p in path.iterdir()) == ["plan.json", "weights.npz", "x"]
    assert (path / "weights.npz").read_bytes() == b"npz"


def test_a_missing_companion_leaves_no_version(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    with pytest.raises(FileNotFoundError):
        vf.write_version(
            tmp_path / "m", 1, b"{}", "plan.json", companions={"weights.npz": tmp_path / "no"}
        )
    assert list((tmp_path / "m").iterdir()) == []
    with pytest.raises(ValueError, match="plain file name"):
        vf.write_version(tmp_path / "m", 1, b"{}", "plan.json", companions={"../w": b""})
    assert list((tmp_path / "m").iterdir()) == []


def test_existing_version_is_never_overwritten(tmp_path: Path) -> None:
    vf.write_version(tmp_path / "m", 1, b"first", "model.onnx")
    with pytest.raises(FileExistsError, match="choose a new version"):
        vf.write_version(tmp_path / "m", 1, b"second", "model.onnx")
    assert (tmp_path / "m" / "1" / "model.onnx").read_bytes() == b"first"


def test_a_failed_write_leaves_nothing_a_server_would_see(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    missing = tmp_path / "not-there.onnx"
    with pytest.raises(FileNotFoundError):
        vf.write_version(tmp_path / "m", 1, missing, "model.onnx")
    assert list((tmp_path / "m").iterdir()) == []
    assert (
        ModelRepository(tmp_path).incomplete_folders("m", ModelRepository(tmp_path).config("m"))
        == []
    )


def test_staging_folders_are_not_versions(tmp_path: Path) -> None:
    # What the scan sees while a version is being written: the staging name is no number.
    staging = tmp_path / "m" / ".2.abc"
    staging.mkdir(parents=True)
    (staging / "model.onnx").write_bytes(b"")
    repo = ModelRepository(tmp_path)
    assert repo.version_folders("m", repo.config("m")) == []


def test_compare_within_tolerance_reports_the_errors() -> None:
    expected = {"y": np.array([1.0, 2.0, np.nan, np.inf], np.float32)}
    actual = {"y": np.array([1.00001, 2.0, np.nan, np.inf], np.float32), "extra": X}
    result = vf.compare(actual, expected, atol=1e-4, rtol=0)
    assert result.ok and result.failures() == []
    assert result.max_abs_error == pytest.approx(1e-5, rel=0.1)
    assert result.max_rel_error == pytest.approx(1e-5, rel=0.1)


def test_compare_counts_and_measures_mismatches() -> None:
    expected = {"y": np.array([1.0, 2.0, 4.0, np.inf])}
    actual = {"y": np.array([1.0, 2.5, 4.0, 1e30])}
    result = vf.compare(actual, expected, atol=1e-3, rtol=1e-3)
    (diff,) = result.outputs
    assert not result.ok and diff.problem == "values"
    assert diff.mismatched == 2 and diff.total == 4  # 2.5 vs 2, and a number vs inf
    assert diff.max_abs_error == np.inf and diff.max_rel_error == np.inf
    message = result.failures()[0]
    assert "'y'" in message and "2 of 4 elements" in message


def test_compare_relative_error() -> None:
    result = vf.compare({"y": np.array([1.5, 110.0])}, {"y": np.array([1.0, 100.0])}, 0, 0)
    assert result.max_abs_error == pytest.approx(10.0)
    assert result.max_rel_error == pytest.approx(0.5)


def test_compare_missing_shape_and_exact_outputs() -> None:
    expected = {"a": X, "b": X, "ids": np.array([3, 1]), "text": np.array([b"x"], object)}
    actual = {"b": X[:2], "ids": np.array([3, 2]), "text": np.array([b"x"], object)}
    result = vf.compare(actual, expected, atol=10.0, rtol=0)
    problems = {d.name: d.problem for d in result.outputs}
    assert problems == {"a": "missing", "b": "shape", "ids": "", "text": ""}
    ids = next(d for d in result.outputs if d.name == "ids")
    assert ids.max_abs_error == 1.0  # integers compare as numbers, within atol here
    strict = vf.compare(actual, {"ids": expected["ids"]}, atol=0, rtol=0)
    assert not strict.ok and strict.outputs[0].mismatched == 1
    text = vf.compare({"t": np.array([b"y"], object)}, {"t": np.array([b"x"], object)}, 1, 1)
    assert not text.ok
    assert "no output 'a'" in result.failures()[0] and "shape [2, 2]" in result.failures()[1]
