"""Byzantine-robust aggregation over named arrays: plain functions, no state.

Inputs are updates that passed ``validation.validate_updates`` (same names and
shapes, finite); the functions check that again and raise
``InconsistentUpdatesError`` otherwise. Weights, where they apply, are
non-negative (e.g. sample counts) and only their ratios matter.

- ``coordinate_median``: per coordinate, the (weighted) median. Unweighted it
  is ``np.median``; weighted, the value where the cumulative weight crosses
  half the total (the mean of the two straddling values on an exact tie, so
  equal weights give ``np.median``). Breaks down only when half the weight is
  malicious.
- ``trimmed_mean``: per coordinate, drop the ``floor(beta * n)`` largest and
  smallest values, (weighted-)average the rest (Yin et al. 2018). Trimming is
  by count, not by weight.
- ``krum`` / ``multi_krum`` (Blanchard et al. 2017; El Mhamdi et al. 2018): each
  update's score is the sum of squared L2 distances to its ``n - f - 2``
  nearest others; Krum returns the update of lowest score, Multi-Krum the
  (weighted) mean of the ``m`` lowest. Needs ``n >= 2f + 3``. Ties go to the
  earlier update.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from fedsilo.errors import EmptyAggregationError, InconsistentUpdatesError
from tasks.averaging.weighted import Params, check_compatible

_TIE = 1e-12  # relative slack when comparing cumulative weights with half the total


def _weights(weights: Sequence[float] | None, n: int) -> np.ndarray:
    if weights is None:
        return np.ones(n)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n,):
        raise InconsistentUpdatesError(f"{w.size} weights for {n} updates")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise InconsistentUpdatesError(f"weights must be finite and >= 0: {w}")
    if float(w.sum()) <= 0.0:
        raise EmptyAggregationError("the total weight of the updates is zero")
    return w / w.sum()


def _per_tensor(
    updates: Sequence[Params], reduce: Callable[[np.ndarray], np.ndarray]
) -> dict[str, np.ndarray]:
    """Apply ``reduce`` to each tensor stacked over updates (axis 0)."""
    out: dict[str, np.ndarray] = {}
    for name in sorted(updates[0]):
        stacked = np.stack([np.asarray(u[name], dtype=np.float64) for u in updates])
        flat = stacked.reshape(len(updates), -1)
        reduced = reduce(flat).reshape(stacked.shape[1:])
        # Rounding can push a mean a hair outside its inputs; keep it inside.
        reduced = np.clip(reduced, stacked.min(axis=0), stacked.max(axis=0))
        out[name] = reduced.astype(np.asarray(updates[0][name]).dtype, copy=False)
    return out


def _weighted_median(flat: np.ndarray, w: np.ndarray) -> np.ndarray:
    order = np.argsort(flat, axis=0, kind="stable")
    values = np.take_along_axis(flat, order, axis=0)
    cumulative = np.cumsum(w[order], axis=0)
    low = np.argmax(cumulative >= 0.5 * (1 - _TIE), axis=0)
    high = np.argmax(cumulative > 0.5 * (1 + _TIE), axis=0)
    columns = np.arange(flat.shape[1])
    a, b = values[low, columns], values[high, columns]
    result: np.ndarray = a + (b - a) / 2
    return result


def coordinate_median(
    updates: Sequence[Params], weights: Sequence[float] | None = None
) -> dict[str, np.ndarray]:
    """Return the coordinate-wise (weighted) median of the updates."""
    check_compatible(updates)
    if weights is None:
        return _per_tensor(updates, lambda flat: np.median(flat, axis=0))
    w = _weights(weights, len(updates))
    return _per_tensor(updates, lambda flat: _weighted_median(flat, w))


def trimmed_mean(
    updates: Sequence[Params], beta: float, weights: Sequence[float] | None = None
) -> dict[str, np.ndarray]:
    """Return the coordinate-wise mean without ``floor(beta*n)`` extremes each side."""
    check_compatible(updates)
    n = len(updates)
    if not 0.0 <= beta < 0.5:
        raise ValueError(f"beta must be in [0, 0.5), got {beta}")
    k = int(np.floor(beta * n))
    w = _weights(weights, n)

    def reduce(flat: np.ndarray) -> np.ndarray:
        # Ties in value are ordered by weight, so which of two equal values is
        # trimmed never depends on the order the updates arrived in.
        tie_break = np.broadcast_to(w[:, None], flat.shape)
        order = np.lexsort((tie_break, flat), axis=0)[k : n - k]
        kept = np.take_along_axis(flat, order, axis=0)
        kept_w = w[order]
        total = kept_w.sum(axis=0)
        if np.any(total <= 0):
            raise EmptyAggregationError("the updates kept after trimming weigh zero")
        mean: np.ndarray = (kept * kept_w).sum(axis=0) / total
        return mean

    return _per_tensor(updates, reduce)


def _vectors(updates: Sequence[Params]) -> np.ndarray:
    names = sorted(updates[0])
    return np.stack(
        [
            np.concatenate([np.asarray(u[name], np.float64).ravel() for name in names])
            if names
            else np.zeros(0)
            for u in updates
        ]
    )


def krum_scores(updates: Sequence[Params], f: int) -> np.ndarray:
    """Return each update's Krum score: sum of squared distances to n-f-2 nearest."""
    check_compatible(updates)
    n = len(updates)
    if f < 0 or n < 2 * f + 3:
        raise InconsistentUpdatesError(
            f"Krum tolerating f={f} faulty updates needs at least {2 * f + 3} "
            f"updates, got {n}"
        )
    vectors = _vectors(updates)
    distances = np.stack([np.sum((vectors - v) ** 2, axis=1) for v in vectors])
    np.fill_diagonal(distances, np.inf)
    nearest = np.sort(distances, axis=1)[:, : n - f - 2]
    scores: np.ndarray = nearest.sum(axis=1)
    return scores


def krum_select(updates: Sequence[Params], f: int, m: int = 1) -> list[int]:
    """Return the positions of the ``m`` updates of lowest Krum score, best first."""
    scores = krum_scores(updates, f)
    if not 1 <= m <= len(updates) - f:
        raise InconsistentUpdatesError(
            f"Multi-Krum selects 1 to n - f = {len(updates) - f} updates, asked {m}"
        )
    return [int(i) for i in np.argsort(scores, kind="stable")[:m]]


def krum(updates: Sequence[Params], f: int) -> dict[str, np.ndarray]:
    """Return (a copy of) the update Krum selects."""
    chosen = updates[krum_select(updates, f, 1)[0]]
    return {name: np.array(array) for name, array in chosen.items()}


def multi_krum(
    updates: Sequence[Params],
    f: int,
    m: int,
    weights: Sequence[float] | None = None,
) -> dict[str, np.ndarray]:
    """Return the (weighted) mean of the ``m`` updates of lowest Krum score."""
    chosen = krum_select(updates, f, m)
    w = _weights(weights, len(updates))[chosen]
    if float(w.sum()) <= 0.0:
        raise EmptyAggregationError("the updates Multi-Krum selected weigh zero")
    selected = [updates[i] for i in chosen]
    fractions = w / w.sum()
    return _per_tensor(selected, lambda flat: np.tensordot(fractions, flat, axes=1))
