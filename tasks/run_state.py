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
from typing import Any

import numpy as np
from distributed import Future

from fedsilo.cluster import SiloCluster
from fedsilo.spec import FederationSpec
from fedsilo.tasks.checkpoint_store import CheckpointStore
from fedsilo.tasks.messages import LocalUpdate
from fedsilo.tasks.silo import FitConfig


@dataclass(frozen=True, slots=True)
class RoundResult:
    """What one round produced, for progress lines and the final table."""

    round: int
    selected: tuple[str, ...]
    silos: tuple[str, ...]
    absent: dict[str, str]
    metrics: dict[str, float]
    seconds: float
    fit_workers: dict[str, str]
    eval_workers: dict[str, str]
    bytes_down: int
    bytes_up: int
    checkpoint: str


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

    def submit(self, silo: str, fn: Callable[..., Any], *args: Any, key: str) -> Future:
        """Run ``fn`` on the silo's own worker and nowhere else."""
        return self.cluster.client.submit(
            fn,
            *args,
            key=f"{key}-{self.run_id}",
            workers=[self.cluster.workers[silo]],
            allow_other_workers=False,
            pure=False,
        )


_RUNS: dict[str, RunState] = {}
_LOCK = threading.Lock()
ProgressListener = Callable[[RoundResult, RunState], None]
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
