"""Weighted quantile summaries: computed at a silo, merged at the coordinator.

A summary of one column is a bounded list of entries ``(value, rmin, rmax, wmin)``
in the style of XGBoost's ``WQSummary``: ``value`` is a float32 value present in
the column, ``rmin``/``rmax`` bound the total weight of rows strictly below /
at-or-below it and ``wmin`` is the weight at that value. Merging sums the bounds;
pruning keeps at most ``max_size`` entries spread evenly in rank.

What a summary reveals
----------------------
For every column, up to ``max_size`` (default ``8 * max_bin``) exact values that
occur at the silo, among them its minimum and maximum, with the approximate
number of rows below and at each, plus the silo's count of non-missing values.
A column with at most ``max_size`` distinct values is described exactly: its full
value histogram. Rows are never sent and values cannot be linked across columns,
but small silos, rare extreme values and low-cardinality columns are disclosed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Entries a silo keeps per column, per requested bin (XGBoost's ``kFactor``).
SKETCH_FACTOR = 8


@dataclass(frozen=True, slots=True)
class QuantileSummary:
    """Weighted quantile summary of one column (NaNs excluded)."""

    values: np.ndarray  # float32, strictly increasing
    rmin: np.ndarray  # float64, weight of rows < value (lower bound)
    rmax: np.ndarray  # float64, weight of rows <= value (upper bound)
    wmin: np.ndarray  # float64, weight of rows == value (lower bound)

    @property
    def size(self) -> int:
        """Return the number of entries."""
        return int(self.values.shape[0])

    @property
    def total_weight(self) -> float:
        """Return the weight of the summarised non-missing values."""
        return float(self.rmax[-1]) if self.size else 0.0

    def max_rank_error(self) -> float:
        """Return the largest uncertainty of a rank query, as a weight."""
        if self.size == 0:
            return 0.0
        own = self.rmax - self.rmin - self.wmin
        gaps = self.rmax[1:] - self.wmin[1:] - self.rmin[:-1] - self.wmin[:-1]
        return float(max(own.max(), gaps.max(initial=0.0)))


def sketch_size(max_bin: int) -> int:
    """Return the number of entries a silo keeps per column for ``max_bin``."""
    return SKETCH_FACTOR * max_bin


def empty_summary() -> QuantileSummary:
    """Return the summary of a column with no non-missing value."""
    return QuantileSummary(
        values=np.empty(0, np.float32),
        rmin=np.empty(0),
        rmax=np.empty(0),
        wmin=np.empty(0),
    )


def summarize_column(
    x: np.ndarray, max_size: int, weights: np.ndarray | None = None
) -> QuantileSummary:
    """Summarise one column in float32, NaNs excluded, pruned to ``max_size``."""
    # + 0.0 turns -0.0 into 0.0: equal values, one spelling at every silo.
    x = np.asarray(x, dtype=np.float32) + np.float32(0.0)
    keep = ~np.isnan(x)
    if weights is None:  # unit weights: a sort and run lengths (no argsort)
        xs = np.sort(x[keep])
        if xs.size == 0:
            return empty_summary()
        starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
        wmin = np.diff(np.r_[starts, xs.size]).astype(np.float64)
        rmax = np.cumsum(wmin)
        exact = QuantileSummary(
            values=xs[starts], rmin=rmax - wmin, rmax=rmax, wmin=wmin
        )
        return prune(exact, max_size)
    w = np.asarray(weights, np.float64)
    x, w = x[keep], w[keep]
    if x.size == 0:
        return empty_summary()
    order = np.argsort(x, kind="stable")
    xs, ws = x[order], w[order]
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    wmin = np.add.reduceat(ws, starts)
    rmax = np.cumsum(wmin)
    exact = QuantileSummary(values=xs[starts], rmin=rmax - wmin, rmax=rmax, wmin=wmin)
    return prune(exact, max_size)


def summarize(
    X: np.ndarray, max_size: int, weights: np.ndarray | None = None
) -> list[QuantileSummary]:
    """Summarise every column of a silo's feature matrix."""
    X = np.asarray(X, dtype=np.float32)
    return [summarize_column(X[:, j], max_size, weights) for j in range(X.shape[1])]


def prune(summary: QuantileSummary, max_size: int) -> QuantileSummary:
    """Keep at most ``max_size`` entries, evenly spaced in rank (WQSummary prune)."""
    if max_size < 2:
        raise ValueError("max_size must be at least 2")
    size = summary.size
    if size <= max_size:
        return summary
    rmin, rmax, wmin = summary.rmin, summary.rmax, summary.wmin
    begin = rmax[0]
    span = rmin[-1] - rmax[0]
    n = max_size - 1
    k = np.arange(1, n, dtype=np.float64)
    dx2 = 2.0 * ((k * span) / n + begin)
    mid = rmax + rmin
    i = 1 + np.searchsorted(mid[2:], dx2, side="right")
    inside = i < size - 1
    i = i[inside]
    dx2 = dx2[inside]
    lower = rmin[i] + wmin[i] + rmax[i + 1] - wmin[i + 1]
    chosen = np.where(dx2 < lower, i, i + 1)
    keep = np.unique(np.r_[0, chosen, size - 1])
    return QuantileSummary(
        values=summary.values[keep], rmin=rmin[keep], rmax=rmax[keep], wmin=wmin[keep]
    )


def combine(parts: Sequence[QuantileSummary]) -> QuantileSummary:
    """Merge summaries of disjoint row sets without pruning (WQSummary combine)."""
    parts = [p for p in parts if p.size]
    if not parts:
        return empty_summary()
    if len(parts) == 1:
        return parts[0]
    values = np.unique(np.concatenate([p.values for p in parts]))
    rmin = np.zeros(values.shape[0])
    rmax = np.zeros(values.shape[0])
    wmin = np.zeros(values.shape[0])
    for p in parts:
        idx = np.searchsorted(p.values, values, side="left")
        at = np.minimum(idx, p.size - 1)
        present = (idx < p.size) & (p.values[at] == values)
        prev = np.maximum(idx - 1, 0)
        rmin_next_prev = np.where(idx > 0, p.rmin[prev] + p.wmin[prev], 0.0)
        rmax_prev_next = np.where(idx < p.size, p.rmax[at] - p.wmin[at], p.rmax[-1])
        rmin += np.where(present, p.rmin[at], rmin_next_prev)
        rmax += np.where(present, p.rmax[at], rmax_prev_next)
        wmin += np.where(present, p.wmin[at], 0.0)
    return QuantileSummary(values=values, rmin=rmin, rmax=rmax, wmin=wmin)


def merge_summaries(parts: Sequence[QuantileSummary], max_size: int) -> QuantileSummary:
    """Merge one column's summaries from several silos and prune to ``max_size``."""
    return prune(combine(parts), max_size)


def merge_sketches(
    sketches: Sequence[Sequence[QuantileSummary]], max_size: int
) -> list[QuantileSummary]:
    """Merge per-column summaries of several silos (each a list over columns)."""
    if not sketches:
        raise ValueError("no sketches to merge")
    n_columns = {len(s) for s in sketches}
    if len(n_columns) != 1:
        raise ValueError(f"sketches disagree on the number of columns: {n_columns}")
    return [
        merge_summaries([s[j] for s in sketches], max_size)
        for j in range(len(sketches[0]))
    ]


def column_cuts(summary: QuantileSummary, max_bin: int) -> np.ndarray:
    """Return one column's float32 cut points, strictly increasing, as XGBoost hist.

    The last cut lies above the column's maximum, so every value has a bin.
    """
    if summary.size == 0:
        raise ValueError("cannot cut a column without non-missing values")
    pruned = prune(summary, max_bin + 1)
    values = pruned.values[1 : min(pruned.size, max_bin)]
    top = pruned.values[-1]
    last = np.float32(top + (np.abs(top) + np.float32(1e-5)))
    # Values are strictly increasing already; the summary holds distinct values.
    return np.r_[values, last].astype(np.float32)


def cut_points(merged: Sequence[QuantileSummary], max_bin: int) -> list[np.ndarray]:
    """Return float32 cut points per feature from merged summaries."""
    if max_bin < 2:
        raise ValueError("max_bin must be at least 2")
    return [column_cuts(s, max_bin) for s in merged]
