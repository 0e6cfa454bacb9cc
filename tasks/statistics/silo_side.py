"""Statistics and category lists computed at a silo, on its own Dask worker.

Like ``tasks.silo``, this module never imports Prefect: it runs in the silo's
worker process on the :class:`~tasks.silo.data.SiloData` held there, and
returns only what ``tasks.federated_stats`` allows to leave (small cells
withheld before the reply is built). The profile and histogram operations take
the parameters of their ``tasks.statistics.federated`` function after the rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tasks.silo.data import SiloData
from tasks.statistics.categories import frequent_values
from tasks.statistics.federated import (
    SiloHistograms,
    SiloProfile,
    profile_frame,
    profile_histograms,
)


def silo_profile(data: SiloData, *args: Any, **kwargs: Any) -> SiloProfile:
    """Describe the silo's training rows (``profile_frame``), small cells withheld."""
    return profile_frame(data.silo, data.train, *args, **kwargs)


def silo_histograms(data: SiloData, *args: Any, **kwargs: Any) -> SiloHistograms:
    """Count the silo's training rows on the shared edges (``profile_histograms``)."""
    return profile_histograms(data.silo, data.train, *args, **kwargs)


def silo_categories(
    data: SiloData, columns: Sequence[str], min_count: int
) -> dict[str, tuple[Any, ...]]:
    """Name each column's values held by at least ``min_count`` training rows."""
    return {c: frequent_values(data.train[c], min_count) for c in columns}
