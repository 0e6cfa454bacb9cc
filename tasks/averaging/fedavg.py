"""FedAvg (McMahan et al. 2017): the average of the updates weighted by rows."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedsilo.strategy_spec import FedAvgSpec
from tasks.averaging.strategy_base import Params, Strategy, Update, register_strategy
from tasks.averaging.weighted import weighted_average


@register_strategy("fedavg")
class FedAvg(Strategy[FedAvgSpec]):
    """The average of the updates weighted by their training rows."""

    def aggregate(
        self, updates: Sequence[Update], global_params: Params
    ) -> dict[str, np.ndarray]:
        """Return the weighted average."""
        return weighted_average([(u.params, u.weight) for u in updates])
