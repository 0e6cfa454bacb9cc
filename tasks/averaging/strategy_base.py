"""What a strategy is: a class combining one round's updates, registered by kind.

Each strategy is a :class:`Strategy` subclass registered under its kind with
:func:`register_strategy`; its spec is the ``StrategySpec`` subclass of the
same kind (``fedsilo/strategy_spec.py``). ``tasks/averaging/strategies.py``
imports the built-in ones and looks them up. No I/O, no Prefect, no Dask.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np

from fedsilo.registry import Registry
from fedsilo.strategy_spec import StrategySpec

Params = Mapping[str, np.ndarray]
S = TypeVar("S", bound=StrategySpec)


@dataclass(frozen=True, slots=True)
class Update:
    """One silo's validated parameters and its weight (its training rows)."""

    silo: str
    params: Params
    weight: float


class Strategy(ABC, Generic[S]):
    """Combines one round's updates as its spec says.

    One object serves one round: ``rejected`` counts the updates validation
    refused before the strategy saw the rest (Krum counts them among its
    faulty silos).
    """

    def __init__(self, spec: S, *, rejected: int = 0) -> None:
        self.spec = spec
        self.rejected = rejected

    @abstractmethod
    def aggregate(
        self, updates: Sequence[Update], global_params: Params
    ) -> dict[str, np.ndarray]:
        """Return the next global model from at least one validated update."""


STRATEGIES: Registry[type[Strategy[Any]]] = Registry("strategy kind")
T = TypeVar("T", bound=type[Strategy[Any]])


def register_strategy(kind: str) -> Callable[[T], T]:
    """Register a :class:`Strategy` subclass under ``kind`` (a class decorator)."""

    def register(cls: T) -> T:
        STRATEGIES.register(kind, cls)
        return cls

    return register


def weights_apart(
    updates: Sequence[Update],
    weighting: str = "rows",
    max_rows: float | None = None,
) -> tuple[list[Params], list[float] | None]:
    """Return the updates' parameters and the weights to combine them with.

    ``weighting="rows"``: each update's weight (its silo's reported training
    rows), at most ``max_rows`` when given. ``"uniform"``: None, every update
    counts once whatever its silo reports.
    """
    params = [u.params for u in updates]
    if weighting == "uniform":
        return params, None
    if weighting != "rows":
        raise ValueError(f"weighting must be 'uniform' or 'rows', got {weighting!r}")
    weights = [u.weight for u in updates]
    if max_rows is not None:
        weights = [min(w, float(max_rows)) for w in weights]
    return params, weights
