"""Strategies by kind: how a round's validated updates become the next model.

Importing this module registers the built-in strategies (FedAvg in
``fedavg.py``, the robust ones in ``tasks/robust/strategies.py``);
:func:`strategy_for` looks one up by its spec's kind. A new strategy is a
module with a :class:`Strategy` subclass registered with
:func:`register_strategy`, imported here. No I/O, no Prefect, no Dask.
"""

from __future__ import annotations

from typing import Any

from fedsilo.strategy_spec import StrategySpec
from tasks.averaging import fedavg
from tasks.averaging.strategy_base import (
    STRATEGIES,
    Params,
    Strategy,
    Update,
    register_strategy,
)
from tasks.robust import strategies as robust

__all__ = [
    "Params",
    "Strategy",
    "Update",
    "fedavg",
    "register_strategy",
    "robust",
    "strategy_for",
]


def strategy_for(spec: StrategySpec, *, rejected: int = 0) -> Strategy[Any]:
    """Return the strategy registered under ``spec.kind``, for one round."""
    return STRATEGIES.get(spec.kind)(spec, rejected=rejected)
