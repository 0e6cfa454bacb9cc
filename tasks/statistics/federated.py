"""Federated statistics: what a silo may send, and exact merges of what it sent.

A silo describes its own rows in two passes and the coordinator merges the
replies; no row moves.

Pass 1 (:func:`profile_frame`) per column: the count of present and of missing
values; for numeric columns the mean and the sum of squared deviations (merged
exactly with Chan et al.'s formula) and a quantile summary
(``tasks.gbdt.sketch``); for categorical columns and class labels the
count of every value. Pass 2 (:func:`histogram_counts`) counts a numeric
column's rows in bins whose edges the coordinator derived from the merged
summaries, so every silo counts on the same edges.

Small cells never leave a silo
------------------------------
A *cell* is a number that counts rows: a silo's row count, a column's present or
missing count, a histogram bin, a value's count. The silo withholds (sends
``None`` for) every cell with ``1 <= rows < min_count`` before it replies, and
everything derived from such a cell:

- a silo with fewer than ``min_count`` rows sends nothing but its name;
- a column whose present or missing count is small is withheld whole at that
  silo (present + missing = the silo's rows, so one gives the other away, and
  the mean, spread, quantiles and histogram all rest on those rows);
- a categorical value (or class label) held by fewer than ``min_count`` rows is
  not named: its rows join an unnamed ``rare`` cell;
- cells of a group with a published total (the bins of a column, the values of
  a column) are suppressed a second time when needed: while the withheld cells
  add up to fewer than ``min_count`` rows, the smallest remaining cell is
  withheld too, so no withheld cell is the difference of published numbers;
- a quantile summary keeps only values with at least ``min_count`` rows at or
  below and at least ``min_count`` at or above them: no silo's extremes.

Zero is published: it counts no row. A threshold of 1 withholds nothing.

Merges are exact over what was sent: a pooled number covers the silos that sent
its cells, and says when it does not cover all of them (``exact`` is false).
Standard deviations use ``ddof=1`` (pandas' default).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from tasks.gbdt.sketch import QuantileSummary, empty_summary, summarize_column
from tasks.protocol import codec
from tasks.statistics.categories import plain, value_order

#: Entries a silo keeps in each column's quantile summary.
SKETCH_SIZE = 256
#: Quantiles reported for every numeric column.
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
#: Name of the pooled row in every table.
POOLED = "pooled"


@dataclass(frozen=True, slots=True)
class NumericProfile:
    """One numeric column at one silo; ``None`` marks a withheld cell."""

    count: int | None
    missing: int | None
    mean: float | None
    m2: float | None
    sketch: QuantileSummary | None


@dataclass(frozen=True, slots=True)
class Tally:
    """Counts of a column's values at one silo; rare values are pooled unnamed."""

    count: int | None
    missing: int | None
    values: dict[Any, int | None]
    rare: int | None


@dataclass(frozen=True, slots=True)
class SiloProfile:
    """A silo's pass-1 reply: its rows, columns and labels, small cells withheld."""

    silo: str
    n_rows: int | None
    numeric: dict[str, NumericProfile]
    categorical: dict[str, Tally]
    labels: Tally | None


@dataclass(frozen=True, slots=True)
class SiloHistograms:
    """A silo's pass-2 reply: bin counts per numeric column on the shared edges."""

    silo: str
    counts: dict[str, tuple[int | None, ...]]


@dataclass(frozen=True, slots=True)
class FederatedStats:
    """The merged statistics of a federation, as tables (see docs/statistics.md)."""

    columns: pd.DataFrame
    silo_columns: pd.DataFrame
    histograms: pd.DataFrame
    values: pd.DataFrame
    heterogeneity: pd.DataFrame
    smd: pd.DataFrame
    min_count: int
    bins: int

    def tables(self) -> dict[str, pd.DataFrame]:
        """Return every table by the name it is stored under."""
        return {
            "columns": self.columns,
            "silo_columns": self.silo_columns,
            "histograms": self.histograms,
            "values": self.values,
            "heterogeneity": self.heterogeneity,
            "smd": self.smd,
        }


# --- at the silo --------------------------------------------------------------


def small(rows: int, min_count: int) -> bool:
    """Return True when a cell of ``rows`` rows must be withheld."""
    return 0 < rows < min_count


def suppress(counts: Sequence[int], min_count: int) -> tuple[int | None, ...]:
    """Withhold small cells of a group whose total is published, and cover them.

    Cells with ``1 <= c < min_count`` become ``None``; then, while the withheld
    cells add up to fewer than ``min_count`` rows, the smallest published
    non-zero cell is withheld as well.
    """
    cells = [int(c) for c in counts]
    hidden = [small(c, min_count) for c in cells]
    while 0 < sum(c for c, h in zip(cells, hidden, strict=True) if h) < min_count:
        shown = [i for i, c in enumerate(cells) if not hidden[i] and c > 0]
        if not shown:
            break
        hidden[min(shown, key=lambda i: cells[i])] = True
    return tuple(None if h else c for c, h in zip(cells, hidden, strict=True))


def trim_summary(summary: QuantileSummary, min_count: int) -> QuantileSummary:
    """Keep entries with ``min_count`` rows at or below and at or above them."""
    if summary.size == 0:
        return summary
    total = summary.rmax[-1]
    keep = (summary.rmax >= min_count) & (total - summary.rmin >= min_count)
    return QuantileSummary(
        values=summary.values[keep],
        rmin=summary.rmin[keep],
        rmax=summary.rmax[keep],
        wmin=summary.wmin[keep],
    )


def profile_numeric(
    x: np.ndarray, min_count: int, sketch_size: int = SKETCH_SIZE
) -> NumericProfile:
    """Describe one numeric column; a small present or missing count withholds it."""
    x = np.asarray(x, dtype=np.float64)
    present = x[~np.isnan(x)]
    count, missing = int(present.size), int(x.size - present.size)
    if small(count, min_count) or small(missing, min_count):
        return NumericProfile(None, None, None, None, None)
    if count == 0:
        return NumericProfile(0, missing, None, None, empty_summary())
    mean = float(present.mean())
    m2 = float(np.sum((present - mean) ** 2))
    sketch = trim_summary(summarize_column(present, sketch_size), min_count)
    return NumericProfile(count, missing, mean, m2, sketch)


def tally(values: pd.Series, min_count: int) -> Tally:
    """Count a column's values; rare ones are merged into one unnamed cell."""
    missing = int(values.isna().sum())
    count = int(values.size - missing)
    if small(count, min_count) or small(missing, min_count):
        return Tally(None, None, {}, None)
    found = values.dropna().value_counts(sort=False)
    named = {
        plain(value): int(rows)
        for value, rows in found.items()
        if not small(int(rows), min_count)
    }
    rare = count - sum(named.values())
    names = sorted(named, key=value_order)
    cells = suppress([*(named[n] for n in names), rare], min_count)
    return Tally(count, missing, dict(zip(names, cells[:-1], strict=True)), cells[-1])


def histogram_counts(
    x: np.ndarray, edges: np.ndarray, min_count: int
) -> tuple[int | None, ...]:
    """Count present values in the bins cut by the interior ``edges``.

    Bin 0 holds values below ``edges[0]``, bin ``k`` values in
    ``[edges[k-1], edges[k])`` and the last bin values at or above ``edges[-1]``.
    """
    x = np.asarray(x, dtype=np.float64)
    x = x[~np.isnan(x)]
    index = np.searchsorted(np.asarray(edges, np.float64), x, side="right")
    return suppress(np.bincount(index, minlength=len(edges) + 1).tolist(), min_count)


def profile_frame(
    silo: str,
    frame: pd.DataFrame,
    numeric: Sequence[str],
    categorical: Sequence[str],
    target: str,
    task: str,
    min_count: int,
    sketch_size: int = SKETCH_SIZE,
) -> SiloProfile:
    """Describe a silo's rows column by column (pass 1); small cells withheld.

    For classification the target is tallied as labels; for regression it is a
    numeric column like the features.
    """
    n_rows = len(frame)
    if small(n_rows, min_count):
        return SiloProfile(silo, None, {}, {}, None)
    numbers = list(numeric) + ([target] if task == "regression" else [])
    profiles = {
        name: profile_numeric(_floats(frame[name]), min_count, sketch_size)
        for name in numbers
    }
    tallies = {name: tally(frame[name], min_count) for name in categorical}
    labels = tally(frame[target], min_count) if task == "classification" else None
    return SiloProfile(silo, n_rows, profiles, tallies, labels)


def profile_histograms(
    silo: str, frame: pd.DataFrame, edges: Mapping[str, np.ndarray], min_count: int
) -> SiloHistograms:
    """Count a silo's rows on the shared edges (pass 2); small bins withheld."""
    if small(len(frame), min_count):
        return SiloHistograms(silo, {})
    counts = {}
    for name, cuts in edges.items():
        x = _floats(frame[name])
        n_present = int(np.sum(~np.isnan(x)))
        if small(n_present, min_count) or small(len(x) - n_present, min_count):
            continue
        counts[name] = histogram_counts(x, cuts, min_count)
    return SiloHistograms(silo, counts)


def _floats(series: pd.Series) -> np.ndarray:
    return np.asarray(series.to_numpy(dtype=np.float64, na_value=np.nan))


# --- at the coordinator ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PooledMoments:
    """A column's merged moments over the silos that sent theirs."""

    count: int
    missing: int
    mean: float
    std: float
    silos: int
    exact: bool


def merge_numeric(parts: Sequence[NumericProfile | None]) -> PooledMoments:
    """Merge one column's silo moments (Chan et al.), skipping withheld ones."""
    count = missing = 0
    mean = m2 = 0.0
    sent = 0
    for part in parts:
        if part is None or part.count is None or part.missing is None:
            continue
        sent += 1
        missing += part.missing
        if part.count == 0 or part.mean is None or part.m2 is None:
            continue
        total = count + part.count
        delta = part.mean - mean
        mean += delta * part.count / total
        m2 += part.m2 + delta * delta * count * part.count / total
        count = total
    std = math.sqrt(m2 / (count - 1)) if count > 1 else math.nan
    return PooledMoments(
        count=count,
        missing=missing,
        mean=mean if count else math.nan,
        std=std,
        silos=sent,
        exact=sent == len(parts),
    )


def _rank_bounds(
    summary: QuantileSummary, count: int, candidates: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Return bounds on the rows below (upper) and at-or-below (lower) candidates.

    Entries hold exact ranks: ``rmin`` rows below the value, ``rmax`` at or below.
    Between entries ``a < v < b`` both ranks of ``v`` lie in ``[rmax_a, rmin_b]``.
    """
    if summary.size == 0:
        return np.full(candidates.shape, float(count)), np.zeros(candidates.shape)
    values = summary.values
    right = np.searchsorted(values, candidates, side="right")  # entries <= v
    left = np.searchsorted(values, candidates, side="left")  # entries < v
    hit = right > left
    at = np.minimum(left, summary.size - 1)
    before = right - 1
    below_lo = np.where(before >= 0, summary.rmax[np.maximum(before, 0)], 0.0)
    above_hi = np.where(left < summary.size, summary.rmin[at], float(count))
    lt_upper = np.where(hit, summary.rmin[at], above_hi)
    le_lower = np.where(hit, summary.rmax[at], below_lo)
    return lt_upper, le_lower


def quantile(
    parts: Sequence[tuple[QuantileSummary, int]], q: float
) -> tuple[float, float]:
    """Return a pooled ``q``-quantile and a bound on its rank error (a share).

    ``parts`` are each silo's summary with its count of present values. The value
    returned is a float32 value of some silo; the share of pooled values below
    it, and the share at or below it, span an interval no farther than the
    returned error from ``q``.
    """
    parts = [(s, c) for s, c in parts if c > 0]
    total = sum(c for _, c in parts)
    if total == 0:
        return math.nan, math.nan
    candidates = np.unique(np.concatenate([s.values for s, _ in parts]))
    if candidates.size == 0:
        return math.nan, 1.0
    lt_upper = np.zeros(candidates.shape)
    le_lower = np.zeros(candidates.shape)
    for summary, count in parts:
        upper, lower = _rank_bounds(summary, count, candidates)
        lt_upper += upper
        le_lower += lower
    target = q * total
    error = np.maximum(0.0, np.maximum(lt_upper - target, target - le_lower))
    best = int(np.argmin(error))
    return float(candidates[best]), float(error[best] / total)


def shared_edges(summaries: Sequence[QuantileSummary], bins: int) -> np.ndarray:
    """Return ``bins - 1`` interior edges, equally spaced over the sent values.

    The span runs from the smallest to the largest value any silo's (trimmed)
    summary holds; the first and last bins are open-ended, so values beyond the
    span still count. A constant column gets one edge at its value.
    """
    values = [s.values for s in summaries if s.size]
    if not values:
        return np.empty(0)
    low = float(min(v[0] for v in values))
    high = float(max(v[-1] for v in values))
    if not high > low:
        return np.array([low])
    return low + (high - low) * np.arange(1, bins) / bins


def merge_counts(
    parts: Sequence[Sequence[int | None]],
) -> tuple[np.ndarray, np.ndarray]:
    """Sum cells position by position; return sums and whether each is complete."""
    array = np.array([[-1 if c is None else c for c in p] for p in parts], np.int64)
    sums = np.where(array >= 0, array, 0).sum(axis=0)
    return sums, np.asarray((array >= 0).all(axis=0))


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    """Return the total variation distance between two count vectors' shares."""
    p, q = _shares(p), _shares(q)
    return float(0.5 * np.abs(p - q).sum())


def jensen_shannon(p: np.ndarray, q: np.ndarray) -> float:
    """Return the Jensen-Shannon distance (base 2, in [0, 1]) of two count vectors."""
    p, q = _shares(p), _shares(q)
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        inside = a > 0
        return float(np.sum(a[inside] * np.log2(a[inside] / m[inside])))

    return math.sqrt(max(0.0, (kl(p) + kl(q)) / 2))


def _shares(counts: np.ndarray) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    return counts / total if total > 0 else counts


# --- tables ---------------------------------------------------------------------


def _cell(value: int | None) -> Any:
    return pd.NA if value is None else int(value)


def build_tables(
    profiles: Sequence[SiloProfile],
    histograms: Sequence[SiloHistograms],
    edges: Mapping[str, np.ndarray],
    *,
    target: str,
    task: str,
    min_count: int,
    bins: int,
) -> FederatedStats:
    """Merge every silo's replies into the federation's tables."""
    numeric = _ordered(p.numeric for p in profiles)
    pooled = {c: merge_numeric([p.numeric.get(c) for p in profiles]) for c in numeric}
    column_rows, silo_rows = _numeric_rows(profiles, pooled, target)
    tallies = {
        c: [p.categorical.get(c) for p in profiles]
        for c in _ordered(p.categorical for p in profiles)
    }
    if task == "classification":
        tallies[target] = [p.labels for p in profiles]
    value_rows: list[dict[str, Any]] = []
    labels: tuple[dict[str, np.ndarray], np.ndarray | None] = ({}, None)
    for column, parts in tallies.items():
        rows, summary, vectors = _tally_rows(column, profiles, parts, target)
        value_rows += rows
        if summary is not None:
            column_rows.append(summary)
        if column == target:
            labels = vectors
    hist_rows: list[dict[str, Any]] = []
    for column, cuts in edges.items():
        rows, vectors = _histogram_rows(column, cuts, histograms)
        hist_rows += rows
        if task == "regression" and column == target:
            labels = vectors
    smd_rows, heterogeneity = _heterogeneity(profiles, pooled, *labels, target)
    return FederatedStats(
        columns=_frame(column_rows, _COLUMN_TYPES),
        silo_columns=_frame(silo_rows, _SILO_COLUMN_TYPES),
        histograms=_frame(hist_rows, _HIST_TYPES),
        values=_frame(value_rows, _VALUE_TYPES),
        heterogeneity=_frame(heterogeneity, _HETERO_TYPES),
        smd=_frame(smd_rows, _SMD_TYPES),
        min_count=min_count,
        bins=bins,
    )


def _numeric_rows(
    profiles: Sequence[SiloProfile], pooled: Mapping[str, PooledMoments], target: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Return the pooled rows of numeric columns and their per-silo rows."""
    column_rows: list[dict[str, Any]] = []
    silo_rows: list[dict[str, Any]] = []
    for column, merged in pooled.items():
        row: dict[str, Any] = {
            "column": column,
            "kind": "target" if column == target else "numeric",
            "count": merged.count,
            "missing": merged.missing,
            "mean": merged.mean,
            "std": merged.std,
            "distinct": pd.NA,
        }
        parts = [
            (prof.sketch, prof.count)
            for p in profiles
            if (prof := p.numeric.get(column)) is not None
            and prof.sketch is not None
            and prof.count is not None
        ]
        worst = 0.0
        for q in QUANTILES:
            value, error = quantile(parts, q)
            row[f"q{round(q * 100):02d}"] = value
            worst = max(worst, error) if not math.isnan(error) else worst
        row["quantile_error"] = worst if parts else math.nan
        row["silos"] = merged.silos
        row["exact"] = merged.exact
        column_rows.append(row)
        for p in profiles:
            prof = p.numeric.get(column)
            count = None if prof is None else prof.count
            silo_rows.append(
                {
                    "silo": p.silo,
                    "column": column,
                    "count": _cell(count),
                    "missing": _cell(None if prof is None else prof.missing),
                    "mean": _float(None if prof is None else prof.mean),
                    "std": _silo_std(prof),
                    "suppressed": count is None,
                }
            )
    return column_rows, silo_rows


def _tally_rows(
    column: str,
    profiles: Sequence[SiloProfile],
    parts: Sequence[Tally | None],
    target: str,
) -> tuple[
    list[dict[str, Any]],
    dict[str, Any] | None,
    tuple[dict[str, np.ndarray], np.ndarray | None],
]:
    """Return a tallied column's value rows, its pooled summary, label vectors.

    A silo that named no value but has no rare rows holds none of it (a zero);
    with rare rows withheld or present, an unnamed value is unknown.
    """
    known = _ordered_values(parts)
    rows: list[dict[str, Any]] = []
    silo_cells: list[list[int | None]] = []
    vectors: dict[str, np.ndarray] = {}
    for p, t in zip(profiles, parts, strict=True):
        cells: list[int | None]
        if t is None or t.count is None:
            cells = [None] * (len(known) + 1)
        else:
            absent = 0 if t.rare == 0 else None
            cells = [t.values.get(v, absent) for v in known] + [t.rare]
        silo_cells.append(cells)
        rows += _value_rows(column, p.silo, known, cells)
        if all(c is not None for c in cells) and cells[-1] == 0:
            vectors[p.silo] = np.array(cells[:-1], dtype=np.float64)
    if not silo_cells:
        return rows, None, (vectors, None)
    sums, complete = merge_counts(silo_cells)
    rows += _value_rows(column, POOLED, known, sums.tolist(), complete.tolist())
    counted = [t for t in parts if t is not None and t.count is not None]
    summary = {
        "column": column,
        "kind": "label" if column == target else "categorical",
        "count": sum(t.count or 0 for t in counted),
        "missing": sum(t.missing or 0 for t in counted),
        "mean": math.nan,
        "std": math.nan,
        "distinct": len(known),
        **{f"q{round(q * 100):02d}": math.nan for q in QUANTILES},
        "quantile_error": math.nan,
        "silos": len(counted),
        "exact": len(counted) == len(profiles),
    }
    return rows, summary, (vectors, sums[:-1].astype(np.float64))


def _value_rows(
    column: str,
    silo: str,
    known: Sequence[Any],
    cells: Sequence[int | None],
    exact: Sequence[bool] | None = None,
) -> list[dict[str, Any]]:
    """Return one row per value (and the unnamed ``<rare>`` cell last)."""
    return [
        {
            "column": column,
            "silo": silo,
            "value": "<rare>" if i == len(known) else str(known[i]),
            "count": _cell(c),
            "exact": c is not None if exact is None else bool(exact[i]),
        }
        for i, c in enumerate(cells)
    ]


def _histogram_rows(
    column: str, cuts: np.ndarray, histograms: Sequence[SiloHistograms]
) -> tuple[list[dict[str, Any]], tuple[dict[str, np.ndarray], np.ndarray | None]]:
    """Return a column's bin rows per silo and pooled, and complete bin vectors."""
    lower = [-math.inf, *cuts.tolist()]
    upper = [*cuts.tolist(), math.inf]
    rows: list[dict[str, Any]] = []
    vectors: dict[str, np.ndarray] = {}
    for h in histograms:
        sent = h.counts.get(column)
        for k in range(len(lower)):
            c = None if sent is None else sent[k]
            rows.append(_bin(column, h.silo, k, lower, upper, _cell(c), c is not None))
        if sent is not None and all(c is not None for c in sent):
            vectors[h.silo] = np.array(sent, dtype=np.float64)
    present = [got for h in histograms if (got := h.counts.get(column)) is not None]
    if not present:
        return rows, (vectors, None)
    sums, complete = merge_counts(present)
    full = len(present) == len(histograms)
    for k in range(len(lower)):
        ok = bool(complete[k]) and full
        rows.append(_bin(column, POOLED, k, lower, upper, int(sums[k]), ok))
    return rows, (vectors, sums.astype(np.float64))


def _heterogeneity(
    profiles: Sequence[SiloProfile],
    pooled: Mapping[str, PooledMoments],
    label_vectors: Mapping[str, np.ndarray],
    pooled_labels: np.ndarray | None,
    target: str,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Return per-feature standardized mean differences and the per-silo summary."""
    known_rows = sum(p.n_rows or 0 for p in profiles)
    smd_rows: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    for p in profiles:
        diffs: dict[str, float] = {}
        for column, merged in pooled.items():
            prof = p.numeric.get(column)
            if column == target or prof is None or prof.mean is None:
                continue
            if not merged.std > 0:
                continue
            diffs[column] = (prof.mean - merged.mean) / merged.std
            smd_rows.append({"silo": p.silo, "column": column, "smd": diffs[column]})
        vector = label_vectors.get(p.silo)
        tv = js = math.nan
        if vector is not None and pooled_labels is not None:
            tv = total_variation(vector, pooled_labels)
            js = jensen_shannon(vector, pooled_labels)
        worst = max(diffs, key=lambda c: abs(diffs[c])) if diffs else None
        rows.append(
            {
                "silo": p.silo,
                "rows": _cell(p.n_rows),
                "share": (p.n_rows / known_rows)
                if p.n_rows and known_rows
                else math.nan,
                "label_tv": tv,
                "label_js": js,
                "mean_abs_smd": float(np.mean(np.abs(list(diffs.values()))))
                if diffs
                else math.nan,
                "max_abs_smd": abs(diffs[worst]) if worst else math.nan,
                "max_smd_column": worst,
            }
        )
    return smd_rows, rows


def _bin(
    column: str,
    silo: str,
    k: int,
    lower: list[float],
    upper: list[float],
    count: Any,
    exact: bool,
) -> dict[str, Any]:
    return {
        "column": column,
        "silo": silo,
        "bin": k,
        "lower": lower[k],
        "upper": upper[k],
        "count": count,
        "exact": exact,
    }


def _float(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _silo_std(prof: NumericProfile | None) -> float:
    if prof is None or prof.m2 is None or prof.count is None or prof.count < 2:
        return math.nan
    return math.sqrt(prof.m2 / (prof.count - 1))


def _ordered(maps: Any) -> list[str]:
    order: list[str] = []
    for mapping in maps:
        order += [name for name in mapping if name not in order]
    return order


def _ordered_values(parts: Sequence[Tally | None]) -> list[Any]:
    found = {v for t in parts if t is not None for v in t.values}
    return sorted(found, key=value_order)


_COLUMN_TYPES = {
    "column": "string",
    "kind": "string",
    "count": "Int64",
    "missing": "Int64",
    "mean": "float64",
    "std": "float64",
    "distinct": "Int64",
    **{f"q{round(q * 100):02d}": "float64" for q in QUANTILES},
    "quantile_error": "float64",
    "silos": "Int64",
    "exact": "bool",
}
_SILO_COLUMN_TYPES = {
    "silo": "string",
    "column": "string",
    "count": "Int64",
    "missing": "Int64",
    "mean": "float64",
    "std": "float64",
    "suppressed": "bool",
}
_HIST_TYPES = {
    "column": "string",
    "silo": "string",
    "bin": "Int64",
    "lower": "float64",
    "upper": "float64",
    "count": "Int64",
    "exact": "bool",
}
_VALUE_TYPES = {
    "column": "string",
    "silo": "string",
    "value": "string",
    "count": "Int64",
    "exact": "bool",
}
_HETERO_TYPES = {
    "silo": "string",
    "rows": "Int64",
    "share": "float64",
    "label_tv": "float64",
    "label_js": "float64",
    "mean_abs_smd": "float64",
    "max_abs_smd": "float64",
    "max_smd_column": "string",
}
_SMD_TYPES = {"silo": "string", "column": "string", "smd": "float64"}


def _frame(rows: list[dict[str, Any]], types: Mapping[str, str]) -> pd.DataFrame:
    """Return rows as a frame with fixed columns and nullable dtypes."""
    frame = pd.DataFrame(rows, columns=list(types))
    return frame.astype(dict(types))


# A silo's profile and histograms cross the silo channel as these messages.
codec.register(NumericProfile, Tally, SiloProfile, SiloHistograms, QuantileSummary)
