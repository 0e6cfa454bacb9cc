"""The robust strategies: median, trimmed mean, Krum and Multi-Krum, by kind.

Each picks its function of ``tasks/robust/aggregation.py`` and its options
from its spec (``fedsilo/strategy_spec.py``). No I/O, no Prefect, no Dask.
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


@register_strategy("median")
class Median(Strategy[MedianSpec]):
    """The coordinate-wise weighted median."""

    def aggregate(
        self, updates: Sequence[Update], global_params: Params
    ) -> dict[str, np.ndarray]:
        """Return the weighted median of every coordinate."""
        return coordinate_median(*weights_apart(updates))


@register_strategy("trimmed-mean")
class TrimmedMean(Strategy[TrimmedMeanSpec]):
    """The coordinate-wise mean without the extremes (Yin et al. 2018)."""

    def aggregate(
        self, updates: Sequence[Update], global_params: Params
    ) -> dict[str, np.ndarray]:
        """Return the weighted mean of what trimming ``beta`` each side keeps."""
        params, weights = weights_apart(updates)
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
    """The weighted mean of the ``m`` best Krum scores (El Mhamdi et al. 2018)."""

    def aggregate(
        self, updates: Sequence[Update], global_params: Params
    ) -> dict[str, np.ndarray]:
        """Return the mean of ``multi_krum_m`` selected updates (``n - f`` if unset)."""
        f = self.faults
        m = self.spec.multi_krum_m
        if m is None:
            m = len(updates) - f
        params, weights = weights_apart(updates)
        return multi_krum(params, f, m, weights)
