"""The golden check's verdict: a match within tolerance, or the mismatch in numbers."""

from __future__ import annotations

import numpy as np

from warpserve.server.repository.versionfolder import compare


def output_mismatch(name: str, got: np.ndarray, want: np.ndarray, atol: float, rtol: float) -> str:
    """The check's message for one output ('' within tolerance)."""
    return "; ".join(compare({name: got}, {name: want}, atol, rtol).failures())


WANT = np.array([[1.0, 2.0], [0.0, -4.0]], np.float32)


def test_outputs_within_tolerance_match() -> None:
    assert output_mismatch("y", WANT + 1e-5, WANT, atol=1e-4, rtol=1e-3) == ""
    nan = np.array([np.nan, 1.0])
    assert output_mismatch("y", nan, nan, atol=0, rtol=0) == ""


def test_a_mismatch_reports_where_and_by_how_much() -> None:
    got = WANT.copy()
    got[1, 1] = -3.0  # abs error 1, relative 0.25
    got[1, 0] = 0.01  # beside a golden 0: relative error infinite, abs error 0.01
    text = output_mismatch("y", got, WANT, atol=1e-4, rtol=1e-3)
    assert "output 'y'" in text and "at 2 of 4 elements" in text
    assert "max abs error 1," in text and "max rel error inf" in text
    assert "worst at [1, 1]: got -3, golden -4" in text
    assert "atol 0.0001 + rtol 0.001 * |golden|" in text


def test_nan_on_one_side_is_a_mismatch() -> None:
    text = output_mismatch("y", np.array([np.nan, 1.0]), np.array([0.5, 1.0]), 1e-4, 1e-3)
    assert "at 1 of 2 elements" in text and "worst at [0]: got nan, golden 0.5" in text


def test_shape_and_exact_dtypes() -> None:
    assert "shape [2]" in output_mismatch("y", np.zeros(2), np.zeros(3), 1e-4, 1e-3)
    words = np.array([b"cat", b"dog"], dtype=np.object_)
    assert output_mismatch("label", words.copy(), words, 1e-4, 1e-3) == ""
    other = np.array([b"cat", b"cow"], dtype=np.object_)
    text = output_mismatch("label", other, words, 1e-4, 1e-3)
    assert "at 1 of 2 elements" in text and "first at [1]: got b'cow', golden b'dog'" in text
    counts = np.array([1, 2], np.int64)
    assert "max abs error 1," in output_mismatch("n", counts + 1, counts, 0, 0)
