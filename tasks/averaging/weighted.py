"""Aggregation maths over named arrays: plain functions, no I/O, no state."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from fedsilo.errors import EmptyAggregationError, InconsistentUpdatesError

Params = Mapping[str, np.ndarray]


def check_compatible(updates: Sequence[Params]) -> None:
    """Raise if the updates do not share tensor names, shapes and finiteness."""
    if not updates:
        raise EmptyAggregationError("no updates to aggregate")
    first = updates[0]
    names = sorted(first)
    for position, update in enumerate(updates):
        if sorted(update) != names:
            raise InconsistentUpdatesError(
                f"update {position} has tensors {sorted(update)}, expected {names}"
            )
        for name in names:
            if np.shape(update[name]) != np.shape(first[name]):
                raise InconsistentUpdatesError(
                    f"update {position}: tensor {name!r} has shape "
                    f"{np.shape(update[name])}, expected {np.shape(first[name])}"
                )
            if not np.all(np.isfinite(update[name])):
                raise InconsistentUpdatesError(
                    f"update {position}: tensor {name!r} has non-finite values"
                )


def weighted_average(results: Sequence[tuple[Params, float]]) -> dict[str, np.ndarray]:
    """Average each tensor over updates, weighted (FedAvg: by sample count)."""
    check_compatible([params for params, _ in results])
    weights = np.asarray([weight for _, weight in results], dtype=np.float64)
    if not np.all(np.isfinite(weights)) or np.any(weights < 0):
        raise InconsistentUpdatesError(f"weights must be finite and >= 0: {weights}")
    total = float(weights.sum())
    if total <= 0.0:
        raise EmptyAggregationError("the total weight of the updates is zero")
    fractions = weights / total
    averaged: dict[str, np.ndarray] = {}
    for name in results[0][0]:
        stacked = np.stack(
            [np.asarray(params[name], dtype=np.float64) for params, _ in results]
        )
        mean = np.tensordot(fractions, stacked, axes=1)
        # Rounding can push a mean a hair outside its inputs; keep it inside.
        mean = np.clip(mean, stacked.min(axis=0), stacked.max(axis=0))
        averaged[name] = mean.astype(np.asarray(results[0][0][name]).dtype, copy=False)
    return averaged
