"""Drift references: built from training inputs, stored beside the model, read back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from warpserve.server.drift.reference import (
    REFERENCE_FILE,
    DriftReference,
    build_reference,
    read_reference,
    write_reference,
)


def _training(n: int = 2000) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (n, 3)).astype(np.float32)
    x[:, 2] = rng.integers(0, 2, n)  # a 0/1 flag
    images = rng.normal(0, 1, (n, 3, 32, 32)).astype(np.float32)
    return {"X": x, "IMAGE": images, "TEXT": np.array([b"a"] * n, dtype=object)}


def test_quantile_bins_hold_equal_shares_and_a_flag_gets_one_bin_per_value() -> None:
    ref = build_reference(_training(), bins=10, feature_names={"X": ["a", "b", "flag"]})
    assert set(ref.inputs) == {"X"}  # images have too many features, text none
    x = ref.inputs["X"]
    assert x.features == ("a", "b", "flag")
    shares = x.counts[0] / x.counts[0].sum()
    assert shares[:10] == pytest.approx(np.full(10, 0.1), abs=0.002)
    flag_edges = x.edges[2][np.isfinite(x.edges[2])]
    assert flag_edges.tolist() == [0.0, 1.0]
    assert x.counts[2, 2:].sum() == 0 and x.counts[2, :2].sum() == 2000


def test_written_reference_reads_back_equal(tmp_path: Path) -> None:
    ref = build_reference(_training())
    path = write_reference(tmp_path, ref)
    assert path == tmp_path / REFERENCE_FILE
    back = read_reference(tmp_path)
    assert back is not None and back.rows == ref.rows
    np.testing.assert_array_equal(back.inputs["X"].edges, ref.inputs["X"].edges)
    np.testing.assert_array_equal(back.inputs["X"].counts, ref.inputs["X"].counts)
    assert read_reference(tmp_path / "missing") is None


def test_bad_references_and_training_data_are_refused_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="too few"):
        build_reference({"X": np.zeros((10, 2), np.float32)})
    with pytest.raises(ValueError, match="no input has numeric features"):
        build_reference({"IMAGE": np.zeros((500, 3, 32, 32), np.float32)})
    with pytest.raises(ValueError, match="2 feature names for 3"):
        build_reference(_training(), feature_names={"X": ["a", "b"]})
    (tmp_path / REFERENCE_FILE).write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="not a drift reference"):
        read_reference(tmp_path)
    with pytest.raises(ValueError, match="increasing edges"):
        DriftReference.from_json(
            '{"format": "warpserve-drift-reference/1", "rows": 5, "inputs": {"X": '
            '{"features": ["a"], "edges": [[2, 1]], "counts": [[1, 2, 2]]}}}'
        )
