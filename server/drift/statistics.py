"""PSI and the KS statistic between a reference histogram and a live one.

Both take counts of shape (features, bins) over the same bins and return one value per
feature. Computed from histograms, so merged windows (counts added across processes or
time slots) give the statistic of the merged data.
"""

from __future__ import annotations

import numpy as np

# Proportions below this are raised to it, so an empty bin on one side gives a large but
# finite PSI term instead of infinity (the usual convention for PSI).
PSI_FLOOR = 1e-4


def proportions(counts: np.ndarray) -> np.ndarray:
    totals = counts.sum(axis=1, keepdims=True)
    return counts / np.where(totals > 0, totals, 1)


def psi(reference: np.ndarray, live: np.ndarray) -> np.ndarray:
    """Population stability index: sum over bins of (q - p) * ln(q / p), where p and q
    are the reference and live proportions (both floored at PSI_FLOOR). Bins empty on
    both sides add nothing. 0 for identical distributions; 0.1-0.25 is usually read as
    a moderate shift and above 0.25 as a large one."""
    p, q = proportions(reference), proportions(live)
    used = (reference > 0) | (live > 0)
    p, q = np.maximum(p, PSI_FLOOR), np.maximum(q, PSI_FLOOR)
    return np.where(used, (q - p) * np.log(q / p), 0.0).sum(axis=1)


def ks(reference: np.ndarray, live: np.ndarray) -> np.ndarray:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the two
    cumulative distributions, evaluated at the bin edges. Exact when every value lies on
    an edge (a discrete feature); otherwise at most the exact statistic and at most one
    bin's share of mass below it."""
    gap = np.abs(np.cumsum(proportions(reference), axis=1) - np.cumsum(proportions(live), axis=1))
    return gap.max(axis=1)
