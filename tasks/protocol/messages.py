"""Messages between silos and the coordinator: small frozen dataclasses.

Nothing here may carry rows: only parameters, counts, statistics and metrics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tasks.privacy.secagg import MaskContext


def nbytes_of(params: dict[str, np.ndarray]) -> int:
    """Return the bytes of the arrays' buffers (what a transfer costs, roughly)."""
    return int(sum(np.asarray(a).nbytes for a in params.values()))


@dataclass(frozen=True, slots=True)
class ColumnInfo:
    """One column of a silo's table: its name and its dtype kind."""

    name: str
    dtype: str
    kind: str  # "numeric", "bool", "string", "other"


@dataclass(frozen=True, slots=True)
class SiloSchema:
    """What a silo says of its table before round 1: names, dtypes, counts."""

    silo: str
    worker: str
    columns: tuple[ColumnInfo, ...]
    n_train: int
    n_test: int
    labels: tuple[str | int | float, ...] = ()
    test_source: str = "file"  # "file" or "holdout"


@dataclass(frozen=True, slots=True)
class FeatureMoments:
    """Per-feature count, mean and sum of squared deviations (Chan's merge)."""

    silo: str
    count: np.ndarray
    mean: np.ndarray
    m2: np.ndarray


@dataclass(frozen=True, slots=True)
class LocalUpdate:
    """A silo's reply to a fit request: new parameters and how many rows made them."""

    silo: str
    round: int
    worker: str
    params: dict[str, np.ndarray]
    n_samples: int
    seconds: float
    bytes_down: int
    bytes_up: int
    metrics: dict[str, float] = field(default_factory=dict)
    masked: Any = None  # a privacy.secagg.MaskedUpdate when params are hidden
    # A compression.EncodedUpdate (the change from the global model) when the
    # update is compressed; params is then empty until the coordinator decodes.
    compressed: Any = None


@dataclass(frozen=True, slots=True)
class Evaluation:
    """A silo's scores of a global model, with sums that make global metrics exact."""

    silo: str
    round: int
    worker: str
    split: str
    n_samples: int
    metrics: dict[str, float]
    sums: dict[str, float]


@dataclass(frozen=True, slots=True)
class Resident:
    """Stands for a value a silo's runtime holds for a run (``slot``: what it is).

    Requests name held rows, keys and states this way; the silo looks them up
    in its own runtime, so they never travel and are never Dask data.
    """

    run: str
    silo: str
    slot: str


@dataclass(frozen=True, slots=True)
class FitConfig:
    """What a silo needs to know to train and score the global model."""

    kind: str
    model_params: dict[str, Any]
    task: str
    classes: tuple[Any, ...]
    n_features: int
    epochs: int
    batch_size: int | None
    seed: int
    proximal_mu: float = 0.0


@dataclass(frozen=True, slots=True)
class SiloFault:
    """A silo's work raised: which silo, and the error in one line."""

    silo: str
    reason: str


@dataclass(frozen=True, slots=True)
class PrivacyRequest:
    """How one silo must protect one round's update."""

    clip: float | None = None  # DP: send the update's change clipped to this norm
    vote: bool = False  # adaptive clipping: append the clip vote
    silo_index: int | None = None  # secure aggregation: my place in the roster
    peers_public: dict[int, bytes] | None = None
    context: MaskContext | None = None
    # Distributed DP: add a share of N(0, (noise_multiplier * clip)**2) split
    # over noise_shares silos (the roster) before masking; vote_stddev is the
    # clip vote's noise share.
    noise_multiplier: float | None = None
    noise_shares: int = 1
    vote_stddev: float = 0.0

    @property
    def secure(self) -> bool:
        """Return whether the update is masked."""
        return self.silo_index is not None
