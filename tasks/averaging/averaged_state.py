"""The state of an averaged run that its round tasks read and update."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedsilo.cluster import SiloCluster
from fedsilo.spec import FederationSpec
from tasks.protocol.messages import Resident
from tasks.silo.data import FitConfig
from tasks.silo.link import SiloLink
from tasks.store.checkpoints import CheckpointStore


@dataclass(frozen=True, slots=True)
class Preparation:
    """How every silo turns its rows into model-ready arrays (the same for all)."""

    numeric: list[str]
    target: str
    mean: np.ndarray | None
    scale: np.ndarray | None
    categories: dict[str, Any] | None

    def arguments(self, link: SiloLink, silo: str) -> tuple[Any, ...]:
        """Return the ``prepare`` operation's arguments for ``silo``."""
        rows = link.ref(silo, "rows")
        return (rows, self.numeric, self.target, self.mean, self.scale, self.categories)


@dataclass(slots=True)
class AveragedState:
    """An averaged run's coordinator-side state; its rounds' tasks receive it."""

    spec: FederationSpec
    run_id: str
    cluster: SiloCluster
    store: CheckpointStore
    config: FitConfig
    link: SiloLink  # the silos hold rows, keys and compressors for the run
    preparation: Preparation
    params: dict[str, np.ndarray]
    features: list[str] = field(default_factory=list)
    classes: tuple[Any, ...] = ()
    start_round: int = 1
    public_keys: dict[str, bytes] = field(default_factory=dict)
    dp_clip: float | None = None
    server_optimizer: Any = None  # a tasks.server_optimizers.ServerOptimizer
    epsilon: float | None = None

    silo_order: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.silo_order = {s.name: i for i, s in enumerate(self.spec.silos)}

    def silo_index(self, silo: str) -> int:
        """Return the silo's fixed place in the spec (its secure-aggregation id)."""
        return self.silo_order[silo]

    def server_state(self) -> dict[str, np.ndarray]:
        """Return what a checkpoint needs beyond the model to resume exactly."""
        out: dict[str, np.ndarray] = {}
        if self.server_optimizer is not None:
            state = self.server_optimizer.state_dict()
            out.update({f"server/{k}": v for k, v in state.items()})
        if self.dp_clip is not None:
            out["server/dp_clip"] = np.array(self.dp_clip)
        return out

    def held(self, slot: str, silos: Sequence[str]) -> list[Resident | None]:
        """Name what each silo holds in ``slot`` (None where the run keeps none)."""
        present = {
            "prepared": True,
            "keypair": self.spec.privacy.secure_aggregation,
            "compressor": self.spec.compression.kind != "none",
        }[slot]
        return [self.link.ref(s, slot) if present else None for s in silos]
