"""Federated feature statistics: exact merges of per-silo moments (Chan et al.)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tasks.protocol.messages import FeatureMoments


def moments(silo: str, X: np.ndarray) -> FeatureMoments:
    """Return per-column count, mean and sum of squared deviations, NaNs skipped."""
    X = np.asarray(X, dtype=np.float64)
    count = np.sum(~np.isnan(X), axis=0).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, np.nansum(X, axis=0) / np.maximum(count, 1), 0.0)
    m2 = np.nansum((X - mean) ** 2, axis=0)
    return FeatureMoments(silo=silo, count=count, mean=mean, m2=m2)


def merge_moments(
    parts: Sequence[FeatureMoments],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge silos' moments into pooled (count, mean, m2), as if rows were pooled."""
    if not parts:
        raise ValueError("no moments to merge")
    count = np.zeros_like(parts[0].count)
    mean = np.zeros_like(parts[0].mean)
    m2 = np.zeros_like(parts[0].m2)
    for part in parts:
        total = count + part.count
        safe = np.where(total > 0, total, 1.0)
        delta = part.mean - mean
        mean = mean + delta * part.count / safe
        m2 = m2 + part.m2 + delta**2 * count * part.count / safe
        count = total
    return count, mean, m2


def standard_scaler(parts: Sequence[FeatureMoments]) -> tuple[np.ndarray, np.ndarray]:
    """Return (mean, scale) of a global StandardScaler; constant columns scale 1."""
    count, mean, m2 = merge_moments(parts)
    var = np.where(count > 0, m2 / np.maximum(count, 1), 0.0)
    # A variance within rounding of the mean's magnitude is a constant column
    # (the same test scikit-learn's StandardScaler makes).
    eps = np.finfo(np.float64).eps
    constant = var <= count * eps * var + (count * mean * eps) ** 2
    scale = np.sqrt(var)
    scale[constant | (scale == 0.0)] = 1.0
    return mean, scale
