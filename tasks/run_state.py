"""A federated run's context: what the one engine holds between its round flows.

A run opens one model family (averaged scikit-learn parameters or boosted
trees, :class:`FamilyRun`) and plays its rounds through the same round flow.
The family's tasks receive the family's state as an argument; the only lookup
by run id is at the round flow's boundary, whose parameters Prefect records
(a run id and a round number, small and readable in the UI).
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

from prefect.utilities.annotations import quote

if TYPE_CHECKING:
    from fedsilo.cluster import SiloCluster
    from fedsilo.spec import FederationSpec
    from tasks.protocol.messages import Evaluation, LocalUpdate
    from tasks.store.checkpoints import CheckpointStore


T = TypeVar("T")


def opaque(value: T) -> T:
    """Pass ``value`` to a Prefect task as it is, without Prefect walking it.

    Prefect visits a task's arguments for futures; a run's state, or a round's
    updates with one entry per silo, cost more to visit than the task itself.
    """
    return cast(T, quote(value))


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


@dataclass(frozen=True, slots=True)
class RoundOutcome:
    """What a model family's round did, for the engine to record and report."""

    selected: tuple[str, ...]  # the silos asked to train
    silos: tuple[str, ...]  # the silos whose work is in the new model
    evaluations: list[Evaluation]
    updates: list[LocalUpdate]
    checkpoint: str
    fit_workers: dict[str, str]
    note: str  # what the round's log line says of the training
    absent: dict[str, str] = field(default_factory=dict)  # silo -> late/failed
    rejected: dict[str, str] = field(default_factory=dict)  # silo -> reason


@dataclass(frozen=True, slots=True)
class Personalized:
    """The silos' scores of their own fine-tuned copies of the global model."""

    evaluations: list[Evaluation]
    traffic: dict[str, tuple[int, int]]  # silo -> (bytes up, bytes down), if counted


class FamilyRun(Protocol):
    """One model family's state for one run: what its rounds do.

    Made by the family's ``open`` once the silos are reachable; lives as long
    as the parent flow and is closed (silo state freed) whatever happens.
    """

    store: CheckpointStore
    start_round: int  # 1, or the round after the last checkpoint when resuming

    def budget_stop(self, round_number: int) -> str | None:
        """Return why the run must stop before ``round_number``, if it must."""
        ...

    def play_round(self, round_number: int) -> RoundOutcome:
        """Train, evaluate at every silo and checkpoint one round."""
        ...

    def personalize(self, epochs: int, round_number: int) -> Personalized:
        """Fine-tune the current model at each silo alone; return the scores."""
        ...

    def summary(self) -> dict[str, Any]:
        """Return the family's part of the run's summary."""
        ...

    def close(self) -> None:
        """Free what the silos hold for the run; never raises."""
        ...


@dataclass(frozen=True, slots=True)
class Opening:
    """What a family needs to open a run's silos."""

    spec: FederationSpec
    cluster: SiloCluster
    run_id: str
    resume: bool = False
    #: Labels the model must know even if no silo holds them (averaged kinds).
    known_classes: tuple[Any, ...] = ()


#: A secure round is masked again at most this many times when silos drop out.
MAX_SECURE_ATTEMPTS = 3

#: Called after every round with its result and the run.
ProgressListener = Callable[[RoundResult, "Run"], None]

_LISTENING: contextvars.ContextVar[tuple[ProgressListener, ...]] = (
    contextvars.ContextVar("fedsilo_listeners", default=())
)


@contextlib.contextmanager
def listening(*listeners: ProgressListener) -> Iterator[None]:
    """Give the runs started inside this block these round listeners.

    A run takes the listeners in force when it opens and calls them after
    each of its rounds; other runs, threads and tasks do not see them.
    """
    token = _LISTENING.set((*_LISTENING.get(), *listeners))
    try:
        yield
    finally:
        _LISTENING.reset(token)


def current_listeners() -> tuple[ProgressListener, ...]:
    """Return the listeners in force here (see :func:`listening`)."""
    return _LISTENING.get()


@dataclass(slots=True)
class Run:
    """A federated run in the coordinator: its spec, silos, family and history."""

    spec: FederationSpec
    run_id: str
    cluster: SiloCluster
    family: FamilyRun
    listeners: tuple[ProgressListener, ...] = ()
    history: list[RoundResult] = field(default_factory=list)
    last_updates: list[LocalUpdate] = field(default_factory=list)
    last_evaluations: list[Evaluation] = field(default_factory=list)

    @property
    def store(self) -> CheckpointStore:
        """Return the run's checkpoint store."""
        return self.family.store


_RUNS: dict[str, Run] = {}
_LOCK = threading.Lock()


def register(run: Run) -> str:
    """Make a run reachable by its id from its round flows."""
    with _LOCK:
        _RUNS[run.run_id] = run
    return run.run_id


def get(run_id: str) -> Run:
    """Return a running federation."""
    with _LOCK:
        return _RUNS[run_id]


def running() -> list[Run]:
    """Return the runs open in this process."""
    with _LOCK:
        return list(_RUNS.values())


def forget(run_id: str) -> None:
    """Drop a finished run (and with it the futures of silo data)."""
    with _LOCK:
        _RUNS.pop(run_id, None)
