"""Split finding on summed histograms with XGBoost's gain and leaf weight.

``gain(G, H) = T_alpha(G)^2 / (H + lambda)`` (0 when ``H < min_child_weight``),
``T_alpha`` the soft threshold; a split's loss change is ``gain(L) + gain(R) -
gain(parent)``, and it is taken when above 1e-6 and not below ``gamma``. Every
feature is scanned with missing values going right and going left; ties go to
the lowest feature, then the lowest bin, then missing-right.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedsilo.gbdt_params import TreeParams
from tasks.gbdt.jit import kernels

#: XGBoost's ``kRtEps``: a loss change at or below it is no split.
RT_EPS = 1e-6


@dataclass(frozen=True, slots=True)
class SplitInfo:
    """Best split of one node; left holds bins ``0..bin`` (``x < threshold``)."""

    feature: int
    bin: int
    threshold: np.float32
    default_left: bool
    gain: float
    left_grad: float
    left_hess: float
    right_grad: float
    right_hess: float


def threshold_l1(g: np.ndarray, alpha: float) -> np.ndarray:
    """Return the soft threshold of ``g`` by ``alpha`` (L1 regularisation)."""
    out: np.ndarray = np.sign(g) * np.maximum(np.abs(g) - alpha, 0.0)
    return out


def node_gain(g: np.ndarray, h: np.ndarray, p: TreeParams) -> np.ndarray:
    """Return XGBoost's structure score of nodes with sums ``g`` and ``h``."""
    g = np.asarray(g, np.float64)
    h = np.asarray(h, np.float64)
    t = threshold_l1(g, p.reg_alpha) if p.reg_alpha > 0 else g
    ok = (h >= p.min_child_weight) & (h > 0.0)
    out: np.ndarray = np.zeros(np.broadcast(t, h).shape)
    np.divide(t * t, h + p.reg_lambda, out=out, where=ok)
    return out


def leaf_weight(g: float, h: float, p: TreeParams) -> float:
    """Return the learning-rate-scaled weight ``-eta T_alpha(g) / (h + lambda)``."""
    if h < p.min_child_weight or h <= 0.0:
        return 0.0
    t = float(threshold_l1(np.array(g), p.reg_alpha))
    return -p.eta * t / (h + p.reg_lambda)


def find_splits(
    sums: np.ndarray,
    totals: np.ndarray,
    cuts: Sequence[np.ndarray],
    p: TreeParams,
    backend: str = "auto",
) -> list[SplitInfo | None]:
    """Return the best split of every node, or None where no split gains enough.

    ``sums`` are summed histograms shaped (nodes, features, stride + 1, 2):
    gradient and hessian sums, missing values in the last bin slot; ``totals``
    holds (G, H, rows) per node. The numba kernel (``backend`` "auto" or
    "numba") gives the same result as the numpy code, bit for bit.
    """
    jit = None if backend == "numpy" else kernels()
    if jit is None and backend == "numba":
        raise RuntimeError("numba is not installed")
    if jit is not None:
        return _find_splits_jit(jit, sums, totals, cuts, p)
    grad, hess = sums[..., 0], sums[..., 1]
    m, n_features, width = grad.shape
    stride = width - 1
    n_bins = np.array([c.size for c in cuts])
    if n_bins.shape[0] != n_features:
        raise ValueError("histograms and cuts disagree on the number of features")
    g_total = totals[:, 0][:, None, None, None]
    h_total = totals[:, 1][:, None, None, None]
    left_g = np.cumsum(grad[:, :, :stride], axis=2)[..., None]
    left_h = np.cumsum(hess[:, :, :stride], axis=2)[..., None]
    miss_g = grad[:, :, stride][:, :, None, None]
    miss_h = hess[:, :, stride][:, :, None, None]
    # last axis: 0 = missing goes right, 1 = missing goes left
    gl = np.concatenate([left_g, left_g + miss_g], axis=3)
    hl = np.concatenate([left_h, left_h + miss_h], axis=3)
    gr = g_total - gl
    hr = h_total - hl
    mcw = p.min_child_weight
    in_range = (np.arange(stride)[None, :] < n_bins[:, None])[None, :, :, None]
    valid = in_range & (hl >= mcw) & (hr >= mcw) & (hl > 0.0) & (hr > 0.0)
    parent = node_gain(totals[:, 0], totals[:, 1], p)[:, None, None, None]
    gain = node_gain(gl, hl, p) + node_gain(gr, hr, p) - parent
    gain = np.where(valid, gain, -np.inf)
    flat = gain.reshape(m, -1)
    top = np.argmax(flat, axis=1)
    rows = np.arange(m)
    f, k, d = np.unravel_index(top, (n_features, stride, 2))
    at = (rows, f, k, d)
    found = np.stack([flat[rows, top], gl[at], hl[at], gr[at], hr[at]], axis=1)
    return _split_infos(np.stack([f, k, d], axis=1), found, cuts, p)


def _find_splits_jit(
    jit: Any,
    sums: np.ndarray,
    totals: np.ndarray,
    cuts: Sequence[np.ndarray],
    p: TreeParams,
) -> list[SplitInfo | None]:
    m, n_features, _, _ = sums.shape
    n_bins = np.array([c.size for c in cuts], dtype=np.int64)
    if n_bins.shape[0] != n_features:
        raise ValueError("histograms and cuts disagree on the number of features")
    best = np.zeros((m, 3), np.int64)
    found = np.zeros((m, 5))
    jit.best_splits(
        np.ascontiguousarray(sums, dtype=np.float64),
        np.ascontiguousarray(totals, dtype=np.float64),
        n_bins,
        float(p.reg_lambda),
        float(p.reg_alpha),
        float(p.min_child_weight),
        best,
        found,
    )
    return _split_infos(best, found, cuts, p)


def _split_infos(
    best: np.ndarray, found: np.ndarray, cuts: Sequence[np.ndarray], p: TreeParams
) -> list[SplitInfo | None]:
    """Return each node's split, or None where its gain is too small.

    ``best[i]`` is node i's (feature, bin, default_left); ``found[i]`` its
    (gain, left gradient, left hessian, right gradient, right hessian).
    """
    out: list[SplitInfo | None] = []
    for i in range(best.shape[0]):
        loss_chg = float(found[i, 0])
        if not (loss_chg > RT_EPS and loss_chg >= p.gamma):
            out.append(None)
            continue
        f, k, d = (int(v) for v in best[i])
        out.append(
            SplitInfo(
                feature=f,
                bin=k,
                threshold=np.float32(cuts[f][k]),
                default_left=bool(d),
                gain=loss_chg,
                left_grad=float(found[i, 1]),
                left_hess=float(found[i, 2]),
                right_grad=float(found[i, 3]),
                right_hess=float(found[i, 4]),
            )
        )
    return out
