"""The numba kernels give the numpy code's results bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from fedsilo.gbdt_params import TreeParams
from tasks.gbdt.binning import bin_matrix
from tasks.gbdt.histogram import numba_available
from tasks.gbdt.learner import train_in_memory
from tasks.gbdt.split import find_splits

pytestmark = pytest.mark.skipif(not numba_available(), reason="numba not installed")


@pytest.mark.parametrize(
    "p",
    [
        TreeParams(),
        TreeParams(reg_alpha=0.7, reg_lambda=0.0, min_child_weight=0.0),
        TreeParams(min_child_weight=5.0, gamma=0.5),
    ],
)
def test_find_splits_numba_equals_numpy(p: TreeParams) -> None:
    rng = np.random.default_rng(0)
    m, f, stride = 9, 6, 12
    cuts = [
        np.sort(rng.normal(size=k)).astype(np.float32) for k in (12, 3, 7, 12, 1, 5)
    ]
    grad = np.round(rng.normal(size=(m, f, stride + 1)), 2)
    hess = np.round(rng.random((m, f, stride + 1)) * 3, 2)
    for j, c in enumerate(cuts):  # bins beyond a feature's cuts are empty
        grad[:, j, c.size : stride] = 0.0
        hess[:, j, c.size : stride] = 0.0
    grad[2] = 0.0  # a node without any gain
    hess[3, :, :stride] = 0.0  # a node with only missing values
    grad[4, 1] = grad[4, 0]  # ties between features
    hess[4, 1] = hess[4, 0]
    grad[5, :, stride] = hess[5, :, stride] = 0.0  # nothing missing in a node
    grad[6, 2, stride] = hess[6, 2, stride] = 0.0  # ... or in one feature
    totals = np.stack(
        [grad[:, 0].sum(axis=1), hess[:, 0].sum(axis=1), np.full(m, 10.0)], axis=1
    )
    sums = np.stack([grad, hess], axis=-1)
    a = find_splits(sums, totals, cuts, p, backend="numpy")
    b = find_splits(sums, totals, cuts, p, backend="numba")
    assert a == b
    assert any(s is None for s in a) and any(s is not None for s in a)


@pytest.mark.parametrize("nan", [0.0, 0.1])
def test_routing_and_descent_numba_equal_numpy(nan: float) -> None:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(3000, 6))
    X[rng.random(X.shape) < nan] = np.nan
    y = (np.nan_to_num(X[:, 0]) + rng.normal(size=3000) > 0).astype(float)
    params = {"objective": "binary:logistic", "max_depth": 5, "num_boost_round": 4}
    a = train_in_memory(
        [(X[:1000], y[:1000]), (X[1000:], y[1000:])], params, backend="numpy"
    )
    b = train_in_memory(
        [(X[:1000], y[:1000]), (X[1000:], y[1000:])], params, backend="numba"
    )
    for ta, tb in zip(a.trees, b.trees, strict=True):
        for name in ("left", "feature", "split_bin", "default_left", "value", "cover"):
            np.testing.assert_array_equal(getattr(ta, name), getattr(tb, name))
    tree = a.trees[-1]
    binned = bin_matrix(X.astype(np.float32), list(a.cuts))
    start = np.zeros(binned.n_rows, np.int64)
    np.testing.assert_array_equal(
        tree.descend_binned(binned, start, "numpy"),
        tree.descend_binned(binned, start, "numba"),
    )
