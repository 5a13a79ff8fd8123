"""A version's drift reference: per-feature histograms of its training inputs.

Stored beside the model as ``<version>/drift_reference.json``: for every numeric input,
each feature's bin edges (interior quantiles of the reference data, duplicates dropped)
and how many reference rows fell in each bin. Bins are right-closed, ``(e[i-1], e[i]]``,
with open ends below the first edge and above the last, so every value has a bin and a
discrete feature (0/1 flags, small counts) gets one bin per value it takes.

Written by ``warpserve compile`` from its example inputs, by the demo build from the
training data, and by users' training code::

    from warpserve.server.drift.reference import build_reference, write_reference
    write_reference(version_dir, build_reference({"TRANSACTION": x_train}))
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REFERENCE_FILE = "drift_reference.json"
FORMAT = "warpserve-drift-reference/1"
DEFAULT_BINS = 20
# Inputs with more values per row (images) are left out: a histogram per pixel says
# little about drift and would cost the hot path thousands of comparisons per row.
MAX_FEATURES = 256
# Fewer rows than this describe a distribution too poorly to compare against.
MIN_ROWS = 100
_NUMERIC = "biuf"


@dataclass(frozen=True)
class InputReference:
    """One input's features: names, padded edges (F, K) and counts (F, K + 1)."""

    features: tuple[str, ...]
    edges: np.ndarray  # float64, each row's unused tail is +inf
    counts: np.ndarray  # int64, bins past a feature's own edges stay 0

    @property
    def bins(self) -> int:
        return int(self.counts.shape[1])


@dataclass(frozen=True)
class DriftReference:
    inputs: dict[str, InputReference]
    rows: int

    def to_json(self) -> str:
        body = {"format": FORMAT, "rows": self.rows, "inputs": {}}
        for name, ref in self.inputs.items():
            body["inputs"][name] = {  # type: ignore[index]
                "features": list(ref.features),
                "edges": [_finite(row).tolist() for row in ref.edges],
                "counts": [
                    row[: len(_finite(e)) + 1].tolist()
                    for row, e in zip(ref.counts, ref.edges, strict=True)
                ],
            }
        return json.dumps(body, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str = REFERENCE_FILE) -> DriftReference:
        try:
            body = json.loads(text)
            if body.get("format") != FORMAT:
                raise ValueError(f"format is {body.get('format')!r}, expected {FORMAT!r}")
            inputs = {
                name: _input_from_lists(item["features"], item["edges"], item["counts"])
                for name, item in body["inputs"].items()
            }
            return cls(inputs, int(body["rows"]))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(
                f"{where}: not a drift reference ({exc}); rewrite it with "
                "warpserve.server.drift.reference.write_reference"
            ) from None


def _finite(edges: np.ndarray) -> np.ndarray:
    return edges[np.isfinite(edges)]


def _input_from_lists(
    features: Sequence[str], edges: Sequence[Sequence[float]], counts: Sequence[Sequence[int]]
) -> InputReference:
    if not (len(features) == len(edges) == len(counts)) or not features:
        raise ValueError("features, edges and counts must have one entry per feature")
    width = max(len(e) for e in edges)
    padded = np.full((len(edges), width), np.inf)
    full = np.zeros((len(edges), width + 1), np.int64)
    for i, (e, c) in enumerate(zip(edges, counts, strict=True)):
        if len(c) != len(e) + 1 or list(e) != sorted(set(e)):
            raise ValueError(f"feature {features[i]!r}: needs increasing edges and one more count")
        padded[i, : len(e)] = e
        full[i, : len(c)] = c
    return InputReference(tuple(str(f) for f in features), padded, full)


def bin_counts(
    edges: np.ndarray, rows: np.ndarray, offsets: np.ndarray | None = None
) -> np.ndarray:
    """Counts (F, K + 1) of ``rows`` (N, F, any numeric dtype) in each feature's
    right-closed bins.

    A value's bin is the number of its feature's edges below it (+inf padding never
    is). NaN counts nowhere. Costs N x F x K comparisons and one bincount. ``offsets``
    (``bin_offsets(edges)``) saves computing them per call.
    """
    features, width = edges.shape
    bins = width + 1
    index = (rows[:, :, None] > edges[None, :, :]).sum(axis=2, dtype=np.intp)
    index += bin_offsets(edges) if offsets is None else offsets
    if rows.dtype.kind == "f":
        index = index[~np.isnan(rows)]
    return np.bincount(index.ravel(), minlength=features * bins).reshape(features, bins)


def bin_offsets(edges: np.ndarray) -> np.ndarray:
    """Where each feature's bins start in the flat counts."""
    features, width = edges.shape
    return np.arange(features, dtype=np.intp) * (width + 1)


def feature_rows(array: np.ndarray) -> np.ndarray | None:
    """The input as (rows, features), or None when it has no numeric features. Not
    converted: comparing with the float64 edges promotes it as a conversion would."""
    if array.dtype.kind not in _NUMERIC or array.ndim < 1 or len(array) == 0:
        return None
    return array.reshape(len(array), -1)


def build_reference(
    inputs: Mapping[str, np.ndarray],
    *,
    bins: int = DEFAULT_BINS,
    feature_names: Mapping[str, Sequence[str]] | None = None,
) -> DriftReference:
    """A reference from batched training inputs ([rows, ...] per input name).

    Inputs that are not numeric, or have more than MAX_FEATURES values per row, are
    left out. Raises ValueError when nothing is left or there are too few rows.
    """
    if bins < 2:
        raise ValueError(f"bins={bins}: a histogram needs at least 2 bins")
    built, rows = {}, 0
    for name, array in inputs.items():
        table = feature_rows(np.asarray(array))
        if table is None or table.shape[1] > MAX_FEATURES:
            continue
        table = table.astype(np.float64)  # quantiles in full precision
        names = list((feature_names or {}).get(name, ()))
        if names and len(names) != table.shape[1]:
            raise ValueError(f"input {name!r}: {len(names)} feature names for {table.shape[1]}")
        built[name] = _input_reference(table, bins, names or [str(i) for i in range(len(table.T))])
        rows = max(rows, len(table))
    if not built:
        raise ValueError(
            f"no input has numeric features (at most {MAX_FEATURES} per row) to take a "
            "drift reference of"
        )
    if rows < MIN_ROWS:
        raise ValueError(f"{rows} rows are too few for a drift reference; give {MIN_ROWS} or more")
    return DriftReference(built, rows)


def _input_reference(table: np.ndarray, bins: int, names: list[str]) -> InputReference:
    levels = np.linspace(0.0, 1.0, bins + 1)[1:-1]
    edges = []
    for column in table.T:
        finite = column[np.isfinite(column)]
        values = np.unique(np.quantile(finite, levels)) if len(finite) else np.zeros(1)
        edges.append(values.tolist())
    width = max(len(e) for e in edges)
    padded = np.full((len(edges), width), np.inf)
    for i, e in enumerate(edges):
        padded[i, : len(e)] = e
    return InputReference(tuple(names), padded, bin_counts(padded, table))


def write_reference(version_dir: Path, reference: DriftReference) -> Path:
    """Write (or replace) the version's reference atomically; returns its path."""
    path = Path(version_dir) / REFERENCE_FILE
    staging = path.with_name(f".{REFERENCE_FILE}.tmp")
    staging.write_text(reference.to_json(), encoding="utf-8")
    os.replace(staging, path)
    return path


def read_reference(version_dir: Path) -> DriftReference | None:
    """The version's reference, or None when it has none; ValueError when malformed."""
    path = Path(version_dir) / REFERENCE_FILE
    if not path.is_file():
        return None
    return DriftReference.from_json(path.read_text(encoding="utf-8"), str(path))
