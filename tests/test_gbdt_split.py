"""Split finding against an exhaustive search over raw rows."""

from __future__ import annotations

import numpy as np
import pytest

from fedsilo.gbdt_params import TreeParams
from tasks.gbdt.binning import bin_matrix
from tasks.gbdt.histogram import build_histograms
from tasks.gbdt.learner import federated_cuts
from tasks.gbdt.split import find_splits, leaf_weight, node_gain


def score(g: float, h: float, p: TreeParams) -> float:
    if h < p.min_child_weight or h <= 0:
        return 0.0
    t = np.sign(g) * max(abs(g) - p.reg_alpha, 0.0)
    return t * t / (h + p.reg_lambda)


def exhaustive(X, g, h, cuts, p: TreeParams):
    """Best (gain, feature, bin, default_left) by routing raw rows per threshold."""
    best = (-np.inf, 0, 0, False)
    parent = score(g.sum(), h.sum(), p)
    X32 = X.astype(np.float32)
    for f, c in enumerate(cuts):
        miss = np.isnan(X32[:, f])
        for k, thr in enumerate(c):
            for default_left in (False, True):
                left = np.where(miss, default_left, X32[:, f] < thr)
                hl, hr = h[left].sum(), h[~left].sum()
                if (
                    hl < p.min_child_weight
                    or hr < p.min_child_weight
                    or hl <= 0
                    or hr <= 0
                ):
                    continue
                gain = (
                    score(g[left].sum(), hl, p) + score(g[~left].sum(), hr, p) - parent
                )
                if gain > best[0] + 1e-9:
                    best = (gain, f, k, default_left)
    return best


@pytest.mark.parametrize(
    "params",
    [
        TreeParams(),
        TreeParams(reg_lambda=0.0, min_child_weight=0.0),
        TreeParams(reg_alpha=2.0, reg_lambda=3.0, min_child_weight=5.0),
    ],
)
@pytest.mark.parametrize("missing_as", [2.0, -2.0])
def test_best_split_matches_exhaustive_search(
    params: TreeParams, missing_as: float
) -> None:
    rng = np.random.default_rng(0)
    n = 400
    X = rng.normal(size=(n, 3))
    X[rng.random((n, 3)) < 0.15] = np.nan
    signal = np.where(np.isnan(X[:, 1]), missing_as, X[:, 1])
    g = -(signal > 0.3).astype(float) + rng.normal(scale=0.3, size=n)
    h = rng.uniform(0.1, 1.0, n)
    cuts = federated_cuts([X.astype(np.float32)], 16)
    binned = bin_matrix(X, cuts)
    sums, totals = build_histograms(binned, g, h, np.zeros(n, np.int32), np.array([0]))
    (split,) = find_splits(sums, totals, cuts, params)
    gain, f, k, default_left = exhaustive(X, g, h, cuts, params)
    assert split is not None
    assert (split.feature, split.bin, split.default_left) == (f, k, default_left)
    assert split.gain == pytest.approx(gain, rel=1e-9)
    assert split.threshold == cuts[f][k] and split.threshold.dtype == np.float32
    assert split.left_hess + split.right_hess == pytest.approx(h.sum())
    assert split.default_left == (missing_as < 0)  # missing rows follow their group


def test_ties_go_to_lowest_feature_then_bin_then_missing_right() -> None:
    x = np.array([0.0, 0.0, 1.0, 1.0, 2.0, 2.0])
    X = np.column_stack([x, x])  # duplicated column: identical gains
    g = np.array([-1.0, -1.0, 1.0, 1.0, 1.0, 1.0])
    h = np.ones(6)
    cuts = federated_cuts([X.astype(np.float32)], 8)
    sums, totals = build_histograms(
        bin_matrix(X, cuts), g, h, np.zeros(6, np.int32), np.array([0])
    )
    (split,) = find_splits(sums, totals, cuts, TreeParams(min_child_weight=0.0))
    assert split is not None
    assert (split.feature, split.bin, split.default_left) == (0, 0, False)


def test_gamma_and_depth_free_node_without_gain_gives_no_split() -> None:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(200, 2))
    g = np.where(X[:, 0] > 0, 1.0, -1.0)
    h = np.ones(200)
    cuts = federated_cuts([X.astype(np.float32)], 8)
    hist = build_histograms(
        bin_matrix(X, cuts), g, h, np.zeros(200, np.int32), np.array([0])
    )
    (split,) = find_splits(*hist, cuts, TreeParams())
    assert split is not None
    (blocked,) = find_splits(*hist, cuts, TreeParams(gamma=split.gain * 1.01))
    assert blocked is None
    (heavy,) = find_splits(*hist, cuts, TreeParams(min_child_weight=150.0))
    assert heavy is None


def test_leaf_weight_and_gain_formulas() -> None:
    p = TreeParams(eta=0.5, reg_lambda=2.0, reg_alpha=1.0, min_child_weight=1.0)
    assert leaf_weight(-5.0, 8.0, p) == pytest.approx(-0.5 * (-4.0) / 10.0)
    assert leaf_weight(0.5, 8.0, p) == 0.0  # inside the L1 dead zone
    assert leaf_weight(5.0, 0.5, p) == 0.0  # below min_child_weight
    np.testing.assert_allclose(
        node_gain(np.array([-5.0]), np.array([8.0]), p), [16 / 10]
    )
