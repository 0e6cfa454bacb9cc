"""fedsilo's Python API: the names a notebook or a script imports.

The same import works in a checkout (where ``flows`` and ``tasks`` are
top-level packages) and in an installed wheel (where they live under
``fedsilo``): ``from fedsilo.api import federated_training, load_estimator``.
The ``register_*`` functions add a strategy, a model kind or a connector
(docs/architecture.md, "Adding things").
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from connectors.readers import read_source, register_reader
from fedsilo.catalog import store_runs
from fedsilo.errors import CheckpointError
from fedsilo.model_kinds import ModelKind, register_model_kind
from fedsilo.preflight import preflight
from fedsilo.progress import RoundProgress
from fedsilo.resume import latest_run, locate_run
from fedsilo.source_kinds import SourceKind, register_source_kind
from fedsilo.spec import FederationSpec, load_spec, parse_spec, with_changes
from fedsilo.strategy_spec import StrategySpec, register_strategy_spec
from flows.compare import federated_comparison
from flows.stats import federated_stats
from flows.training import federated_training
from tasks.averaging.model_adapters import (
    LocalTraining,
    ModelAdapter,
    StartingPoint,
    register_model,
)
from tasks.averaging.strategies import Strategy, Update, register_strategy
from tasks.run_state import RoundResult, Run, listening
from tasks.store.checkpoints import CheckpointStore, check_run_id, list_runs
from tasks.store.model_io import load_estimator

__all__ = [
    "CheckpointStore",
    "LocalTraining",
    "ModelAdapter",
    "ModelKind",
    "RoundResult",
    "Run",
    "SourceKind",
    "StartingPoint",
    "Strategy",
    "StrategySpec",
    "TrainedRun",
    "Update",
    "federated_comparison",
    "federated_stats",
    "federated_training",
    "list_runs",
    "listening",
    "load_estimator",
    "load_run",
    "read_source",
    "register_model",
    "register_model_kind",
    "register_reader",
    "register_source_kind",
    "register_strategy",
    "register_strategy_spec",
    "runs",
    "train",
]


@dataclass(frozen=True, eq=False)
class TrainedRun:
    """A run read back from its checkpoints: what :func:`train` returns.

    Attributes
    ----------
    federation, run_id : str
        The run's federation (the spec's ``name``) and id.
    store : str
        The checkpoint store holding it (the spec's ``checkpoints``).
    path : str
        The run's directory in the store.
    checkpoint : str
        The directory of its latest complete round.
    rounds : list of int
        Its complete rounds.
    metrics : pandas.DataFrame
        Every complete round's ``metrics.parquet`` (docs/checkpoints.md) with a
        ``round`` column first: ``round, silo, split, metric, value, n_samples``.
    model : Any
        The latest round's model, from :func:`load_estimator`: a fitted
        scikit-learn pipeline, or xgboost's estimator for a boosted run.
    summary : dict
        ``run_id``, ``run_path``, ``rounds`` and ``final_metrics`` (global test
        metrics of the last round); after :func:`train`, also what the run's
        flow returned (``stopped``, a DP run's ``epsilon``, ...).
    """

    federation: str
    run_id: str
    store: str
    path: str
    checkpoint: str
    rounds: list[int]
    metrics: pd.DataFrame
    model: Any
    summary: dict[str, Any]
    storage_options: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def curve(self) -> pd.DataFrame:
        """Return the global test metrics: one row per round, one column per metric."""
        rows = self.metrics[
            (self.metrics["silo"] == "global") & (self.metrics["split"] == "test")
        ]
        curve = rows.pivot(index="round", columns="metric", values="value")
        curve.columns.name = None
        return curve

    def checkpoints(self) -> CheckpointStore:
        """Return the run's checkpoint store, to read any round's files."""
        return CheckpointStore(
            self.store,
            self.federation,
            self.run_id,
            storage_options=self.storage_options,
        )

    def __repr__(self) -> str:
        final = " ".join(
            f"{k}={v:.4f}" for k, v in sorted(self.summary["final_metrics"].items())
        )
        return (
            f"TrainedRun({self.federation}/{self.run_id}: {len(self.rounds)} rounds, "
            f"{final}; {self.checkpoint})"
        )


def load_run(
    run_id: str,
    checkpoints: str = "./checkpoints",
    *,
    federation: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> TrainedRun:
    """Read a run back from a checkpoint store: metrics, model, checkpoint path.

    Parameters
    ----------
    run_id : str
        The run's id.
    checkpoints : str
        The store: a local path or an fsspec URL.
    federation : str, optional
        The run's federation, when the id is in more than one.
    storage_options : mapping, optional
        Options of the store's filesystem.
    """
    options = dict(storage_options or {})
    store = locate_run(checkpoints, run_id, federation, options)
    rounds = store.complete_rounds()
    frames = [
        store.read_metrics(number)
        .assign(round=number)
        .reindex(columns=["round", "silo", "split", "metric", "value", "n_samples"])
        for number in rounds
    ]
    metrics = pd.concat(frames, ignore_index=True)
    last = metrics[
        (metrics["round"] == rounds[-1])
        & (metrics["silo"] == "global")
        & (metrics["split"] == "test")
    ]
    summary = {
        "run_id": run_id,
        "run_path": store.run_path,
        "rounds": rounds,
        "final_metrics": dict(zip(last["metric"], last["value"], strict=True)),
    }
    return TrainedRun(
        federation=store.federation,
        run_id=run_id,
        store=checkpoints,
        path=store.run_path,
        checkpoint=store.round_path(rounds[-1]),
        rounds=rounds,
        metrics=metrics,
        model=load_estimator(store),
        summary=summary,
        storage_options=options,
    )


def train(
    spec: FederationSpec | str | Path | Mapping[str, Any],
    /,
    *,
    run_id: str | None = None,
    resume: bool = False,
    progress: bool = True,
    **overrides: Any,
) -> TrainedRun:
    """Train a federation as ``fedsilo run`` does; return the run read back.

    The same steps as the command: the silos' sources checked from here
    (``fedsilo.preflight``), the federation's lock, the ``federated-training``
    flow on the spec's cluster (an embedded one by default) and Prefect
    (its ephemeral API unless ``PREFECT_API_URL`` is set).

    Parameters
    ----------
    spec : FederationSpec, path or mapping
        The federation: a parsed spec, a YAML file (relative silo paths
        resolve against its folder) or a mapping (they resolve against the
        current directory).
    run_id : str, optional
        Name the run (default: the UTC time and random digits).
    resume : bool
        Continue ``run_id`` (default: the federation's newest run) from its
        last complete round; a ``run_id`` with no complete round yet starts.
    progress : bool
        Show each round on standard output (a bar on a terminal).
    **overrides
        Top-level spec fields to replace, validated as in the YAML:
        ``rounds=5``, ``checkpoints="s3://bucket/fl"``, ``seed=1``, ...

    Returns
    -------
    TrainedRun
        Its metrics as a DataFrame, the model, the checkpoint's path.

    Raises
    ------
    fedsilo.errors.FedsiloError
        A spec, data, cluster or checkpoint problem, as one message.
    """
    from fedsilo.locking import federation_lock
    from fedsilo.prefect_env import (
        apply_defaults,
        quiet_dask_logs,
        unwatched_heartbeats_off,
        warm_up,
    )
    from tasks import run_state
    from tasks.store.checkpoints import new_run_id

    source = "fedsilo.train"
    if isinstance(spec, str | Path):
        source, spec = str(spec), load_spec(spec)
    elif not isinstance(spec, FederationSpec):
        spec = parse_spec(dict(spec), source=source, base=Path.cwd())
    spec = with_changes(spec, source, **overrides)
    if run_id is not None:
        check_run_id(run_id)
    elif resume:
        run_id = latest_run(spec.checkpoints, spec.name, spec.storage_options)
        if run_id is None:
            raise CheckpointError(
                f"{spec.checkpoints}: federation {spec.name!r} has no run with a "
                "complete round to resume"
            )
    preflight(spec, source if source != "fedsilo.train" else None)
    apply_defaults(quiet=False)
    warmed = warm_up(embedded_cluster=spec.cluster.address is None)
    quiet_dask_logs()
    run_id = run_id or new_run_id()
    shown = RoundProgress(sys.stdout) if progress else None
    listeners = () if shown is None else (shown,)
    with federation_lock(spec.name, spec.checkpoints, run_id):
        warmed()
        try:
            with unwatched_heartbeats_off(), run_state.listening(*listeners):
                summary = federated_training(spec, run_id=run_id, resume=resume)
        finally:
            if shown is not None:
                shown.close()
    try:
        done = load_run(
            run_id,
            spec.checkpoints,
            federation=spec.name,
            storage_options=spec.storage_options,
        )
    except CheckpointError:
        if summary.get("rounds"):
            raise
        raise CheckpointError(
            f"run {run_id} of {spec.name} has no complete round: "
            f"{summary.get('stopped') or 'nothing was trained'}"
        ) from None
    return replace(done, summary={**done.summary, **summary})


def runs(
    checkpoints: str = "./checkpoints",
    federation: str | None = None,
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Return the runs of a checkpoint store, one row each (``fedsilo runs``).

    Columns: ``federation``, ``run``, ``rounds_done``, ``last_round``,
    ``rounds_planned``, ``status`` (``complete``; ``partial``: in progress,
    stopped or killed; ``unknown`` for an old run without a manifest or spec),
    ``model_kind``, ``updated_at`` and one column per global test metric of
    the last complete round.
    """
    entries = store_runs(checkpoints, federation, storage_options=storage_options)
    return pd.DataFrame(
        [
            {
                "federation": e.federation,
                "run": e.run_id,
                "rounds_done": e.rounds_done,
                "last_round": e.last_round,
                "rounds_planned": e.rounds_planned,
                "status": e.status,
                "model_kind": e.model_kind,
                "updated_at": e.updated_at,
                **e.metrics,
            }
            for e in entries
        ],
        columns=None if entries else ["federation", "run", "rounds_done", "status"],
    )
