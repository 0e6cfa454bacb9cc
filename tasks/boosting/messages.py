"""Messages of a boosting run between the silos and the coordinator.

They and the histogram, tree and split types of ``tasks/gbdt`` are registered
with the silo boundary's codec here, so only processes that run boosting
accept them (and averaged runs never import the GBDT kernels).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tasks.gbdt.histogram import Backend, NodeHistograms
from tasks.gbdt.model import Tree
from tasks.gbdt.objective import Intercept, Objective, make_objective
from tasks.gbdt.private_histograms import MaskedHistograms
from tasks.gbdt.silo_state import LossSum, NodeSplit
from tasks.gbdt.sketch import QuantileSummary
from tasks.protocol import codec


@dataclass(frozen=True, slots=True)
class BoostingSetup:
    """What every silo needs to know to validate and bin its rows."""

    features: tuple[str, ...]
    target: str
    task: str  # "classification" or "regression"
    objective: str
    num_class: int
    backend: Backend = "auto"
    #: DP: per-row (gradient, hessian) bounds the silo clips to; None: no DP.
    gradient_clip: tuple[float, float] | None = None

    def make_objective(self) -> Objective:
        """Return the objective being boosted."""
        return make_objective(self.objective, self.num_class)

    @property
    def classes(self) -> np.ndarray:
        """Return the class labels (0..K-1) of a classification federation."""
        return np.arange(max(self.num_class, 2))


@dataclass(frozen=True, slots=True)
class SiloSketch:
    """A silo's reply at setup: column summaries, row count and label sums."""

    silo: str
    summaries: tuple[QuantileSummary, ...]
    n_rows: int
    label_stats: np.ndarray
    label_bound: float


@dataclass(frozen=True, slots=True)
class SiloCallFailed:
    """A hosted silo's call raised: which silo, and the error."""

    silo: str
    error: BaseException


codec.register(
    BoostingSetup,
    Intercept,
    SiloSketch,
    SiloCallFailed,
    NodeHistograms,
    MaskedHistograms,
    Tree,
    NodeSplit,
    LossSum,
    QuantileSummary,
)
