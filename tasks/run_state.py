"""What a running federation holds in the coordinator between its Prefect tasks.

Round flows and their tasks take small parameters (a run key, a silo name, a
round number) so that Prefect records them cheaply and shows them in the UI;
the Dask client, the futures of silo-resident data and the global model live
here, keyed by the run, for the lifetime of the parent flow.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from distributed import Future

from fedsilo.cluster import SiloCluster
from fedsilo.spec import FederationSpec
from fedsilo.tasks.checkpoint_store import CheckpointStore
from fedsilo.tasks.messages import Evaluation, LocalUpdate
from fedsilo.tasks.silo import FitConfig


@dataclass(frozen=True, slots=True)
class RoundResult:
    """What one round produced, for progress lines and the final table."""

    round: int
    selected: tuple[str, ...]
    silos: tuple[str, ...]
    metrics: dict[str, float]
    seconds: float
    fit_workers: dict[str, str]
    eval_workers: dict[str, str]
    bytes_down: int
    bytes_up: int
    checkpoint: str
    absent: dict[str, str] = field(default_factory=dict)  # silo -> late/failed
    rejected: dict[str, str] = field(default_factory=dict)  # silo -> reason


@dataclass(slots=True)
class RunState:
    """A federation run's coordinator-side state."""

    spec: FederationSpec
    run_id: str
    cluster: SiloCluster
    store: CheckpointStore
    config: FitConfig
    prepared: dict[str, Future]
    params: dict[str, np.ndarray]
    history: list[RoundResult] = field(default_factory=list)
    last_updates: list[LocalUpdate] = field(default_factory=list)
    last_evaluations: list[Evaluation] = field(default_factory=list)
    keypairs: dict[str, Future] = field(default_factory=dict)  # stay on workers
    # Each silo's compression.SiloCompressor (with its residual): stays on workers.
    compressors: dict[str, Future] = field(default_factory=dict)
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

    def submit(self, silo: str, fn: Callable[..., Any], *args: Any, key: str) -> Future:
        """Run ``fn`` on the silo's own worker and nowhere else."""
        return self.cluster.submit(silo, fn, *args, key=f"{key}-{self.run_id}")


_RUNS: dict[str, RunState] = {}
_LOCK = threading.Lock()


class RunView(Protocol):
    """What every run (averaged or boosted) shows a progress listener."""

    spec: FederationSpec
    run_id: str
    last_evaluations: list[Evaluation]  # the silos' scores of the latest round


#: Called after every round with its result and the run (a RunState for
#: averaged models, flows.boosting.BoostingRun for trees).
ProgressListener = Callable[[RoundResult, RunView], None]
listeners: list[ProgressListener] = []


def register(state: RunState) -> str:
    """Make a run's state reachable by its run id."""
    with _LOCK:
        _RUNS[state.run_id] = state
    return state.run_id


def get(run_id: str) -> RunState:
    """Return the state of a running federation."""
    with _LOCK:
        return _RUNS[run_id]


def forget(run_id: str) -> None:
    """Drop a finished run's state (and with it the futures of silo data)."""
    with _LOCK:
        _RUNS.pop(run_id, None)
