"""The parent flow: attach to the silos, open the model family, run the rounds.

One engine for every model family (tasks/families.py): it attaches to the
cluster, lets the family open the silos' state (and resume from the latest
checkpoint), runs one ``federated-round`` flow per round, tells the run's
listeners after each, and closes the family whatever happens. A tracked run
(``tracking.mlflow`` or ``MLFLOW_TRACKING_URI``) is opened in MLflow before the
cluster starts and gets every round and the final model (tasks/tracking/).
"""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

from fedsilo.cluster import spec_cluster
from fedsilo.spec import FederationSpec
from flows.reporting import finish_run
from flows.round import federated_round
from tasks import run_state
from tasks.families import family_of
from tasks.prefect_decorators import unstored_flow
from tasks.run_state import Opening
from tasks.store.checkpoints import new_run_id
from tasks.tracking import track_run


def run_rounds(run: run_state.Run, rounds: range, logger: Any) -> str | None:
    """Run one round flow per round, tell the listeners; return why it stopped.

    The round flows skip Prefect's heartbeats, whose thread join costs up to a
    second a round (the parent keeps its own unless nothing could watch it,
    see ``prefect_env.unwatched_heartbeats_off``). The settings are entered
    once for all rounds: each entry copies the whole settings model.
    """
    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        for round_number in rounds:
            stopped = run.family.budget_stop(round_number)
            if stopped:
                logger.warning(stopped)
                return stopped
            result = federated_round(run.run_id, round_number)
            run.history.append(result)
            for listener in run.listeners:
                listener(result, run)
    return None


@unstored_flow("federated-training", "{spec.name}")
def federated_training(
    spec: FederationSpec,
    run_id: str | None = None,
    resume: bool = False,
    known_classes: tuple[Any, ...] = (),
) -> dict[str, Any]:
    """Train a federation's model over its rounds and checkpoint every round.

    ``known_classes``: labels of a classification task that the model must
    know even if no silo holds them (linear and MLP models).
    """
    logger = get_run_logger()
    run_id = run_id or new_run_id()
    family = family_of(spec.model.kind)
    family.check(spec)
    with (
        track_run(spec, run_id, logger.warning) as tracking,
        spec_cluster(spec) as cluster,
    ):
        opened = family.open(
            Opening(spec, cluster, run_id, resume, tuple(known_classes))
        )
        run = run_state.Run(
            spec=spec,
            run_id=run_id,
            cluster=cluster,
            family=opened,
            listeners=(*run_state.current_listeners(), *tracking.listeners),
        )
        run_state.register(run)
        try:
            stopped = run_rounds(
                run, range(opened.start_round, spec.rounds + 1), logger
            )
            summary = opened.summary()
        finally:
            run_state.forget(run_id)
            opened.close()
    return {
        **finish_run(spec.name, run_id, opened.store.run_path, run.history, logger),
        "stopped": stopped,
        **summary,
        **tracking.summary(),
    }
