"""Tests of federated feature statistics: merged moments equal pooled ones."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.preprocessing import StandardScaler

from tasks.statistics.moments import merge_moments, moments, standard_scaler


def _split(X: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    cuts = np.cumsum(sizes)[:-1]
    return np.split(X, cuts)


@st.composite
def pooled_and_sizes(draw: st.DrawFn) -> tuple[np.ndarray, list[int]]:
    """Draw a silo split (always with a one-row silo) and rows to fill it."""
    sizes = draw(st.lists(st.integers(1, 25), min_size=0, max_size=4))
    sizes.insert(draw(st.integers(0, len(sizes))), 1)
    n_features = draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    loc = rng.uniform(-100, 100, n_features)
    spread = rng.uniform(0.01, 50, n_features)
    X = loc + spread * rng.normal(size=(sum(sizes), n_features))
    return X, sizes


@settings(max_examples=80, deadline=None)
@given(case=pooled_and_sizes())
def test_merged_moments_equal_pooled(case: tuple[np.ndarray, list[int]]) -> None:
    X, sizes = case
    parts = [moments(f"silo-{i}", rows) for i, rows in enumerate(_split(X, sizes))]

    count, mean, m2 = merge_moments(parts)

    assert np.array_equal(count, np.full(X.shape[1], len(X), dtype=float))
    np.testing.assert_allclose(mean, X.mean(axis=0), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(m2 / count, X.var(axis=0), rtol=1e-8, atol=1e-10)


@settings(max_examples=40, deadline=None)
@given(case=pooled_and_sizes(), data=st.data())
def test_merge_order_does_not_matter(
    case: tuple[np.ndarray, list[int]], data: st.DataObject
) -> None:
    X, sizes = case
    parts = [moments(f"silo-{i}", rows) for i, rows in enumerate(_split(X, sizes))]
    shuffled = data.draw(st.permutations(parts))

    merged, reordered = merge_moments(parts), merge_moments(shuffled)

    for a, b in zip(merged, reordered, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)


@settings(max_examples=60, deadline=None)
@given(case=pooled_and_sizes(), seed=st.integers(0, 2**32 - 1))
def test_nans_skipped(case: tuple[np.ndarray, list[int]], seed: int) -> None:
    X, sizes = case
    X = X.copy()
    rng = np.random.default_rng(seed)
    X[rng.random(X.shape) < 0.3] = np.nan
    X[0] = 1.0  # every column keeps at least one value
    parts = [moments(f"silo-{i}", rows) for i, rows in enumerate(_split(X, sizes))]

    count, mean, m2 = merge_moments(parts)

    np.testing.assert_array_equal(count, np.sum(~np.isnan(X), axis=0))
    np.testing.assert_allclose(mean, np.nanmean(X, axis=0), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(m2 / count, np.nanvar(X, axis=0), rtol=1e-8, atol=1e-10)


def test_moments_of_one_silo() -> None:
    X = np.array([[1.0, 10.0], [3.0, np.nan], [5.0, 30.0]])

    part = moments("a", X)

    assert part.silo == "a"
    np.testing.assert_array_equal(part.count, [3.0, 2.0])
    np.testing.assert_allclose(part.mean, [3.0, 20.0])
    np.testing.assert_allclose(part.m2, [8.0, 200.0])


def test_all_nan_column_in_a_silo_adds_nothing() -> None:
    a = np.array([[1.0, np.nan], [2.0, np.nan]])
    b = np.array([[3.0, 4.0], [5.0, 8.0]])

    count, mean, m2 = merge_moments([moments("a", a), moments("b", b)])

    np.testing.assert_array_equal(count, [4.0, 2.0])
    np.testing.assert_allclose(mean, [2.75, 6.0])
    np.testing.assert_allclose(m2, [8.75, 8.0])


def test_merge_of_nothing_raises() -> None:
    with pytest.raises(ValueError, match="no moments"):
        merge_moments([])


@settings(max_examples=40, deadline=None)
@given(case=pooled_and_sizes())
def test_standard_scaler_equals_sklearn_on_pooled_rows(
    case: tuple[np.ndarray, list[int]],
) -> None:
    X, sizes = case
    parts = [moments(f"silo-{i}", rows) for i, rows in enumerate(_split(X, sizes))]
    pooled = StandardScaler().fit(X)

    mean, scale = standard_scaler(parts)

    np.testing.assert_allclose(mean, pooled.mean_, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(scale, pooled.scale_, rtol=1e-8)


@pytest.mark.parametrize("value", [0.0, 3.5, -2.25, 1e6])
def test_standard_scaler_constant_column_has_scale_one(value: float) -> None:
    rng = np.random.default_rng(0)
    X = np.column_stack([np.full(9, value), rng.normal(size=9)])

    mean, scale = standard_scaler([moments("a", X[:4]), moments("b", X[4:])])

    assert mean[0] == value
    assert scale[0] == 1.0
    assert scale[1] != 1.0


@pytest.mark.parametrize(("value", "n_rows"), [(1e8 / 3, 7), (6151702069.205386, 58)])
def test_standard_scaler_large_constant_column_has_scale_one(
    value: float, n_rows: int
) -> None:
    X = np.full((n_rows, 1), value)

    _, scale = standard_scaler([moments("a", X)])

    assert scale[0] == 1.0
