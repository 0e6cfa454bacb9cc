"""Strategies by kind: how a round's validated updates become the next model.

Each strategy is a :class:`Strategy` subclass registered under its kind with
:func:`register_strategy`; its spec is the ``StrategySpec`` subclass of the
same kind (``fedsilo/strategy_spec.py``). The maths is in
``tasks/averaging/weighted.py`` and ``tasks/robust/aggregation.py``; a
strategy only picks it and its options. No I/O, no Prefect, no Dask.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np

from fedsilo.registry import Registry
from fedsilo.strategy_spec import (
    FedAvgSpec,
    KrumSpec,
    MedianSpec,
    MultiKrumSpec,
    StrategySpec,
    TrimmedMeanSpec,
)
from tasks.averaging.weighted import weighted_average
from tasks.robust.aggregation import coordinate_median, krum, multi_krum, trimmed_mean

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


_STRATEGIES: Registry[type[Strategy[Any]]] = Registry("strategy kind")
T = TypeVar("T", bound=type[Strategy[Any]])


def register_strategy(kind: str) -> Callable[[T], T]:
    """Register a :class:`Strategy` subclass under ``kind`` (a class decorator)."""

    def register(cls: T) -> T:
        _STRATEGIES.register(kind, cls)
        return cls

    return register


def strategy_for(spec: StrategySpec, *, rejected: int = 0) -> Strategy[Any]:
    """Return the strategy registered under ``spec.kind``, for one round."""
    return _STRATEGIES.get(spec.kind)(spec, rejected=rejected)


def _split(updates: Sequence[Update]) -> tuple[list[Params], list[float]]:
    return [u.params for u in updates], [u.weight for u in updates]


@register_strategy("fedavg")
class FedAvg(Strategy[FedAvgSpec]):
    """The average of the updates weighted by training rows (McMahan et al.)."""

    def aggregate(
        self, updates: Sequence[Update], global_params: Params
    ) -> dict[str, np.ndarray]:
        """Return the weighted average."""
        return weighted_average([(u.params, u.weight) for u in updates])


@register_strategy("median")
class Median(Strategy[MedianSpec]):
    """The coordinate-wise weighted median."""

    def aggregate(
        self, updates: Sequence[Update], global_params: Params
    ) -> dict[str, np.ndarray]:
        """Return the weighted median of every coordinate."""
        return coordinate_median(*_split(updates))


@register_strategy("trimmed-mean")
class TrimmedMean(Strategy[TrimmedMeanSpec]):
    """The coordinate-wise mean without the extremes (Yin et al. 2018)."""

    def aggregate(
        self, updates: Sequence[Update], global_params: Params
    ) -> dict[str, np.ndarray]:
        """Return the weighted mean of what trimming ``beta`` each side keeps."""
        params, weights = _split(updates)
        return trimmed_mean(params, self.spec.beta, weights)


def _remaining_faults(byzantine: int, rejected: int) -> int:
    """Return the faulty silos left among the kept: a rejected one was one of them."""
    return max(byzantine - rejected, 0)


@register_strategy("krum")
class Krum(Strategy[KrumSpec]):
    """The update of lowest Krum score (Blanchard et al. 2017)."""

    def aggregate(
        self, updates: Sequence[Update], global_params: Params
    ) -> dict[str, np.ndarray]:
        """Return a copy of the update Krum selects (weights do not count)."""
        f = _remaining_faults(self.spec.byzantine, self.rejected)
        return krum([u.params for u in updates], f)


@register_strategy("multi-krum")
class MultiKrum(Strategy[MultiKrumSpec]):
    """The weighted mean of the ``m`` best Krum scores (El Mhamdi et al. 2018)."""

    def aggregate(
        self, updates: Sequence[Update], global_params: Params
    ) -> dict[str, np.ndarray]:
        """Return the mean of ``multi_krum_m`` selected updates (``n - f`` if unset)."""
        f = _remaining_faults(self.spec.byzantine, self.rejected)
        m = self.spec.multi_krum_m
        if m is None:
            m = len(updates) - f
        params, weights = _split(updates)
        return multi_krum(params, f, m, weights)
