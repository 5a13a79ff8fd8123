"""PSI and KS from histograms, checked against scipy on data where binning loses nothing."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from warpserve.server.drift import statistics
from warpserve.server.drift.reference import bin_counts


def _integer_data(seed: int, shift: float, n: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(np.round(rng.normal(5.0 + shift, 2.0, n)), 0, 10)


def test_ks_equals_scipy_when_every_value_lies_on_an_edge() -> None:
    edges = np.arange(0.0, 11.0)[None, :]  # one edge per value the data takes
    for shift in (0.0, 0.3, 1.5):
        ref, live = _integer_data(1, 0.0, 3000), _integer_data(2, shift, 1700)
        got = statistics.ks(bin_counts(edges, ref[:, None]), bin_counts(edges, live[:, None]))
        want = stats.ks_2samp(ref, live).statistic
        assert got[0] == pytest.approx(want, abs=1e-12)


def test_ks_of_continuous_data_is_at_most_scipy_and_close_with_fine_bins() -> None:
    rng = np.random.default_rng(3)
    ref, live = rng.normal(0, 1, 5000), rng.normal(0.4, 1, 5000)
    edges = np.quantile(ref, np.linspace(0, 1, 51)[1:-1])[None, :]
    got = statistics.ks(bin_counts(edges, ref[:, None]), bin_counts(edges, live[:, None]))[0]
    want = stats.ks_2samp(ref, live).statistic
    assert want - 0.02 <= got <= want + 1e-12


def test_psi_equals_the_symmetric_kl_divergence() -> None:
    # PSI = sum (q - p) ln(q / p) = KL(q || p) + KL(p || q); scipy's entropy(q, p) is KL.
    reference = np.array([[120, 300, 250, 90, 40], [10, 10, 10, 10, 10]])
    live = np.array([[60, 200, 300, 200, 90], [10, 10, 10, 10, 10]])
    got = statistics.psi(reference, live)
    for i in range(2):
        want = stats.entropy(live[i], reference[i]) + stats.entropy(reference[i], live[i])
        assert got[i] == pytest.approx(want, rel=1e-12)
    assert got[1] == 0.0


def test_an_empty_bin_gives_a_large_finite_psi_and_bins_empty_on_both_sides_add_nothing() -> None:
    with_empty = statistics.psi(np.array([[50, 50, 0, 0]]), np.array([[50, 40, 10, 0]]))[0]
    assert np.isfinite(with_empty) and with_empty > 0.3
    padded = statistics.psi(np.array([[50, 50, 0]]), np.array([[40, 60, 0]]))[0]
    plain = statistics.psi(np.array([[50, 50]]), np.array([[40, 60]]))[0]
    assert padded == plain


def test_bin_counts_are_right_closed_ignore_nan_and_never_use_padding() -> None:
    edges = np.array([[1.0, 2.0, np.inf], [0.0, np.inf, np.inf]])
    rows = np.array([[0.5, -1.0], [1.0, 0.0], [1.5, 3.0], [2.0, np.nan], [9.0, 0.0]])
    counts = bin_counts(edges, rows)
    assert counts.tolist() == [[2, 2, 1, 0], [3, 1, 0, 0]]
