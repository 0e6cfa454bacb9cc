"""The robust strategies: median, trimmed mean, Krum and Multi-Krum, by kind.

Each picks its function of ``tasks/robust/aggregation.py`` and its options
from its spec (``fedsilo/strategy_spec.py``). Every update counts once unless
the spec says ``weighting: rows``: a row count is the silo's own report, and
weighing by it would let one silo that overstates it outvote the rest. Krum
never weighs. No I/O, no Prefect, no Dask.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np

from fedsilo.strategy_spec import KrumSpec, MedianSpec, MultiKrumSpec, TrimmedMeanSpec
from tasks.averaging.strategy_base import (
    Params,
    Strategy,
    Update,
    register_strategy,
    weights_apart,
)
from tasks.robust.aggregation import coordinate_median, krum, multi_krum, trimmed_mean

B = TypeVar("B", bound=KrumSpec | MultiKrumSpec)
Weighing = MedianSpec | TrimmedMeanSpec | MultiKrumSpec


def _apart(
    updates: Sequence[Update], spec: Weighing
) -> tuple[list[Params], list[float] | None]:
    """Return the parameters and the weights the spec's ``weighting`` gives them.

    Uniform (the default) ignores the row counts the silos report, so a silo
    that claims more rows than it has gains nothing.
    """
    return weights_apart(updates, spec.weighting, spec.max_rows)


@register_strategy("median")
class Median(Strategy[MedianSpec]):
    """The coordinate-wise median (weighted only with ``weighting: rows``)."""

    def aggregate(
        self, updates: Sequence[Update], global_params: Params
    ) -> dict[str, np.ndarray]:
        """Return the median of every coordinate."""
        return coordinate_median(*_apart(updates, self.spec))


@register_strategy("trimmed-mean")
class TrimmedMean(Strategy[TrimmedMeanSpec]):
    """The coordinate-wise mean without the extremes (Yin et al. 2018)."""

    def aggregate(
        self, updates: Sequence[Update], global_params: Params
    ) -> dict[str, np.ndarray]:
        """Return the mean of what trimming ``beta`` each side keeps."""
        params, weights = _apart(updates, self.spec)
        return trimmed_mean(params, self.spec.beta, weights)


class _ByzantineStrategy(Strategy[B]):
    """Krum's family: tolerates the spec's ``byzantine`` faulty silos."""

    @property
    def faults(self) -> int:
        """The faulty silos left among the kept: a rejected update was one of them."""
        return max(self.spec.byzantine - self.rejected, 0)


@register_strategy("krum")
class Krum(_ByzantineStrategy[KrumSpec]):
    """The update of lowest Krum score (Blanchard et al. 2017)."""

    def aggregate(
        self, updates: Sequence[Update], global_params: Params
    ) -> dict[str, np.ndarray]:
        """Return a copy of the update Krum selects (weights do not count)."""
        return krum([u.params for u in updates], self.faults)


@register_strategy("multi-krum")
class MultiKrum(_ByzantineStrategy[MultiKrumSpec]):
    """The mean of the ``m`` best Krum scores (El Mhamdi et al. 2018)."""

    def aggregate(
        self, updates: Sequence[Update], global_params: Params
    ) -> dict[str, np.ndarray]:
        """Return the mean of ``multi_krum_m`` selected updates (``n - f`` if unset)."""
        f = self.faults
        m = self.spec.multi_krum_m
        if m is None:
            m = len(updates) - f
        params, weights = _apart(updates, self.spec)
        return multi_krum(params, f, m, weights)
