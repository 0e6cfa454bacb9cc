"""Statistics and category lists computed at a silo, on its own Dask worker.

Like ``tasks.silo``, this module never imports Prefect: it runs in the silo's
worker process on the :class:`~tasks.silo.data.SiloData` held there, and
returns only what ``tasks.federated_stats`` allows to leave (small cells
withheld before the reply is built).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tasks.silo.data import SiloData
from tasks.statistics.categories import frequent_values
from tasks.statistics.federated import (
    SKETCH_SIZE,
    SiloHistograms,
    SiloProfile,
    profile_frame,
    profile_histograms,
)


def silo_profile(
    data: SiloData,
    numeric: Sequence[str],
    categorical: Sequence[str],
    target: str,
    task: str,
    min_count: int,
    sketch_size: int = SKETCH_SIZE,
) -> SiloProfile:
    """Describe the silo's training rows (pass 1), small cells withheld."""
    return profile_frame(
        data.silo,
        data.train,
        numeric=numeric,
        categorical=categorical,
        target=target,
        task=task,
        min_count=min_count,
        sketch_size=sketch_size,
    )


def silo_histograms(
    data: SiloData, edges: Mapping[str, np.ndarray], min_count: int
) -> SiloHistograms:
    """Count the silo's training rows on the shared bin edges (pass 2)."""
    return profile_histograms(data.silo, data.train, edges, min_count)


def silo_categories(
    data: SiloData, columns: Sequence[str], min_count: int
) -> dict[str, tuple[Any, ...]]:
    """Name each column's values held by at least ``min_count`` training rows."""
    return {c: frequent_values(data.train[c], min_count) for c in columns}
