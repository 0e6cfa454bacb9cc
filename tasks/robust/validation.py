"""Validation of silo updates before aggregation: names, shapes, finiteness, norm.

A bad update is not an error of the round: it is set aside with the silo's name
and the reason, the others are aggregated, and the flow records the rejections
(metrics, an artifact). Whether too many rejections fail the round is the
strategy's failure policy (e.g. fewer than ``min_silos`` valid updates).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

Params = Mapping[str, np.ndarray]


@dataclass(frozen=True, slots=True)
class Rejection:
    """An update left out of aggregation: which silo sent it and why."""

    silo: str
    reason: str


def shapes_of(params: Params) -> dict[str, tuple[int, ...]]:
    """Return the shape of every tensor."""
    return {name: tuple(np.shape(array)) for name, array in params.items()}


def update_problem(
    params: Params,
    shapes: Mapping[str, tuple[int, ...]],
    *,
    norm_bound: float | None = None,
    center: Params | None = None,
) -> str | None:
    """Return why an update is unfit for aggregation, or None if it is fit.

    The norm is the L2 norm of all tensors together, of ``params - center``
    when ``center`` (the global model the silo started from) is given.
    """
    missing = sorted(set(shapes) - set(params))
    unexpected = sorted(set(params) - set(shapes))
    if missing or unexpected:
        return f"tensors missing {missing}, unexpected {unexpected}"
    squares = 0.0
    for name in sorted(shapes):
        array = np.asarray(params[name])
        if array.dtype.kind not in "biuf":
            return f"tensor {name!r} is not numeric (dtype {array.dtype})"
        if array.shape != tuple(shapes[name]):
            expected = tuple(shapes[name])
            return f"tensor {name!r} has shape {array.shape}, expected {expected}"
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            return f"tensor {name!r} has {bad} non-finite values"
        if norm_bound is not None:
            change = array.astype(np.float64)
            if center is not None:
                change = change - np.asarray(center[name], dtype=np.float64)
            squares += float(np.sum(np.square(change)))
    if norm_bound is not None:
        norm = math.sqrt(squares)
        if not norm <= norm_bound:
            return f"L2 norm {norm:.4g} exceeds the bound {norm_bound:.4g}"
    return None


def validate_updates(
    updates: Sequence[tuple[str, Params]] | Mapping[str, Params],
    shapes: Mapping[str, tuple[int, ...]],
    *,
    norm_bound: float | None = None,
    center: Params | None = None,
) -> tuple[dict[str, Params], list[Rejection]]:
    """Split updates into the fit ones, by silo, and the rejected ones with reasons."""
    items = list(updates.items()) if isinstance(updates, Mapping) else list(updates)
    valid: dict[str, Params] = {}
    rejected: list[Rejection] = []
    seen: set[str] = set()
    for silo, params in items:
        if silo in seen:
            rejected.append(Rejection(silo, "a second update from the same silo"))
            continue
        seen.add(silo)
        problem = update_problem(params, shapes, norm_bound=norm_bound, center=center)
        if problem is None:
            valid[silo] = params
        else:
            rejected.append(Rejection(silo, problem))
    return valid, rejected
