"""Quantile summaries, their merge, cut points and binning."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.gbdt.binning import bin_matrix
from tasks.gbdt.sketch import (
    QuantileSummary,
    combine,
    cut_points,
    merge_sketches,
    prune,
    summarize,
    summarize_column,
)


def reference_prune(s: QuantileSummary, maxsize: int) -> list[int]:
    """XGBoost's WQSummary::SetPrune as a plain loop; returns kept indices."""
    if s.size <= maxsize:
        return list(range(s.size))
    begin, span, n = s.rmax[0], s.rmin[-1] - s.rmax[0], maxsize - 1
    out, i, last = [0], 1, 0
    for k in range(1, n):
        dx2 = 2 * ((k * span) / n + begin)
        while i < s.size - 1 and dx2 >= s.rmax[i + 1] + s.rmin[i + 1]:
            i += 1
        if i == s.size - 1:
            break
        if dx2 < s.rmin[i] + s.wmin[i] + s.rmax[i + 1] - s.wmin[i + 1]:
            if i != last:
                out.append(i)
                last = i
        elif i + 1 != last:
            out.append(i + 1)
            last = i + 1
    if last != s.size - 1:
        out.append(s.size - 1)
    return out


def reference_combine(a: QuantileSummary, b: QuantileSummary) -> list[tuple]:
    """XGBoost's WQSummary::SetCombine as a plain loop."""
    out, i, j, a_prev, b_prev = [], 0, 0, 0.0, 0.0
    while i < a.size and j < b.size:
        if a.values[i] == b.values[j]:
            out.append(
                (
                    a.values[i],
                    a.rmin[i] + b.rmin[j],
                    a.rmax[i] + b.rmax[j],
                    a.wmin[i] + b.wmin[j],
                )
            )
            a_prev, b_prev = a.rmin[i] + a.wmin[i], b.rmin[j] + b.wmin[j]
            i, j = i + 1, j + 1
        elif a.values[i] < b.values[j]:
            out.append(
                (
                    a.values[i],
                    a.rmin[i] + b_prev,
                    a.rmax[i] + b.rmax[j] - b.wmin[j],
                    a.wmin[i],
                )
            )
            a_prev = a.rmin[i] + a.wmin[i]
            i += 1
        else:
            out.append(
                (
                    b.values[j],
                    b.rmin[j] + a_prev,
                    b.rmax[j] + a.rmax[i] - a.wmin[i],
                    b.wmin[j],
                )
            )
            b_prev = b.rmin[j] + b.wmin[j]
            j += 1
    for k in range(i, a.size):
        out.append((a.values[k], a.rmin[k] + b_prev, a.rmax[k] + b.rmax[-1], a.wmin[k]))
    for k in range(j, b.size):
        out.append((b.values[k], b.rmin[k] + a_prev, b.rmax[k] + a.rmax[-1], b.wmin[k]))
    return out


def as_tuples(s: QuantileSummary) -> list[tuple]:
    return list(zip(s.values, s.rmin, s.rmax, s.wmin, strict=True))


def test_prune_matches_reference_loop() -> None:
    rng = np.random.default_rng(1)
    x = np.round(rng.normal(size=5000), 2)  # many ties
    exact = summarize_column(x, 10**6)
    for size in (3, 17, 64, 200):
        kept = prune(exact, size)
        ref = reference_prune(exact, size)
        assert kept.size <= size
        np.testing.assert_array_equal(kept.values, exact.values[ref])


def test_combine_matches_reference_loop() -> None:
    rng = np.random.default_rng(2)
    a = prune(summarize_column(np.round(rng.normal(size=3000), 1), 10**6), 40)
    b = prune(summarize_column(np.round(rng.normal(1, 2, size=2000), 1), 10**6), 30)
    got = as_tuples(combine([a, b]))
    want = reference_combine(a, b)
    assert len(got) == len(want)
    np.testing.assert_allclose(np.array(got, float), np.array(want, float))


def test_merged_bounds_hold_on_pooled_rows() -> None:
    rng = np.random.default_rng(3)
    parts = [rng.normal(i, 1 + i, size=4000).astype(np.float32) for i in range(4)]
    pooled = np.concatenate(parts)
    merged = merge_sketches([summarize(p[:, None], 128) for p in parts], 128)[0]
    below = np.searchsorted(np.sort(pooled), merged.values, side="left")
    at_or_below = np.searchsorted(np.sort(pooled), merged.values, side="right")
    assert np.all(merged.rmin <= below + 1e-9)
    assert np.all(at_or_below <= merged.rmax + 1e-9)
    assert np.all(at_or_below - below >= merged.wmin - 1e-9)
    assert merged.total_weight == pooled.size


def test_merged_cuts_close_to_pooled_quantiles() -> None:
    rng = np.random.default_rng(4)
    max_bin = 32
    parts = [
        rng.gamma(1 + i, size=(3000 + 1000 * i, 1)).astype(np.float32) for i in range(4)
    ]
    pooled = np.sort(np.concatenate(parts)[:, 0])
    size = 8 * max_bin
    merged = merge_sketches([summarize(p, size) for p in parts], size)
    cuts = cut_points(merged, max_bin)[0]
    assert cuts.dtype == np.float32 and cuts.size == max_bin
    ranks = np.searchsorted(pooled, cuts[:-1], side="left") / pooled.size
    ideal = np.arange(1, max_bin) / max_bin
    # bound: merged summary's rank uncertainty plus one pruned-summary spacing
    tolerance = merged[0].max_rank_error() / pooled.size + 1.0 / size + 1e-3
    assert np.max(np.abs(ranks - ideal)) <= tolerance
    assert tolerance < 0.5 / max_bin  # the bound is meaningful: under half a bin


def test_cuts_are_float32_increasing_and_cover_the_max() -> None:
    rng = np.random.default_rng(5)
    X = rng.normal(size=(1000, 3)) * [1, 1e6, 1e-6]
    X[::3, 0] = np.nan
    cuts = cut_points(merge_sketches([summarize(X, 64)], 64), 8)
    for j, c in enumerate(cuts):
        assert c.dtype == np.float32
        assert np.all(np.diff(c) > 0)
        assert c[-1] > np.nanmax(X[:, j].astype(np.float32))


def test_few_distinct_values_give_exact_cuts_and_constant_column_one_cut() -> None:
    x = np.array([3.0, 1.0, 2.0, 2.0, np.nan, 1.0])
    X = np.column_stack([x, np.full(6, 7.5)])
    cuts = cut_points(merge_sketches([summarize(X, 64)], 64), 16)
    np.testing.assert_array_equal(cuts[0][:-1], np.float32([2.0, 3.0]))
    assert cuts[0][-1] > 3.0
    assert cuts[1].size == 1 and cuts[1][0] > np.float32(7.5)
    binned = bin_matrix(X, cuts)
    np.testing.assert_array_equal(binned.bins[:, 0], [2, 0, 1, 1, 0, 0])
    assert binned.missing is not None
    np.testing.assert_array_equal(binned.missing[:, 0], np.isnan(x))
    np.testing.assert_array_equal(binned.bins[:, 1], 0)


def test_merging_exact_summaries_does_not_depend_on_the_split() -> None:
    rng = np.random.default_rng(6)
    X = rng.integers(0, 50, size=(2000, 2)).astype(float)
    one = cut_points(merge_sketches([summarize(X, 512)], 512), 16)
    four = cut_points(
        merge_sketches([summarize(p, 512) for p in np.array_split(X, 4)], 512), 16
    )
    for a, b in zip(one, four, strict=True):
        np.testing.assert_array_equal(a, b)


def test_binning_matches_float32_threshold_rule() -> None:
    rng = np.random.default_rng(7)
    x = rng.normal(size=3000)
    cuts = cut_points(merge_sketches([summarize(x[:, None], 256)], 256), 32)
    bins = bin_matrix(x[:, None], cuts).bins[:, 0].astype(int)
    x32 = x.astype(np.float32)
    for k in range(cuts[0].size):
        np.testing.assert_array_equal(bins <= k, x32 < cuts[0][k])


def test_binning_equals_searchsorted_on_awkward_columns() -> None:
    rng = np.random.default_rng(8)
    n = 5000
    X = np.column_stack(
        [
            rng.normal(size=n),
            np.exp(np.abs(rng.normal(size=n)) * 8),  # heavy tail: crowded buckets
            rng.integers(0, 3, n).astype(float),  # three values
            np.full(n, 2.5),  # constant: one cut
            rng.normal(size=n) * 1e-30,  # tiny range
        ]
    )
    X[rng.random(X.shape) < 0.05] = np.nan
    cuts = cut_points(merge_sketches([summarize(X, 512)], 512), 64)
    # values at, just below and just above every cut, and beyond both ends
    edges = np.concatenate(
        [
            np.concatenate([c, np.nextafter(c, -np.inf), np.nextafter(c, np.inf)])
            for c in cuts
        ]
    )
    probe = np.resize(np.concatenate([edges, [-np.inf, np.inf, 1e38]]), n)
    for X_try in (X, np.column_stack([probe] * X.shape[1])):
        binned = bin_matrix(X_try, cuts)
        for j, c in enumerate(cuts):
            want = np.minimum(
                np.searchsorted(c, X_try[:, j].astype(np.float32), side="right"),
                c.size - 1,
            )
            nan = np.isnan(X_try[:, j])
            np.testing.assert_array_equal(binned.bins[~nan, j], want[~nan])
            assert np.all(binned.bins[nan, j] == 0)


def test_max_bin_below_two_is_refused() -> None:
    with pytest.raises(ValueError, match="max_bin"):
        cut_points(merge_sketches([summarize(np.ones((3, 1)), 8)], 8), 1)
