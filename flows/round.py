"""One federated round as a Prefect flow run named after it (round-0003).

Every model family plays its rounds through this flow: the family trains,
evaluates and checkpoints (``FamilyRun.play_round``); the flow times the
round, reports it in the UI and the log, and returns its result.
"""

from __future__ import annotations

import time

from prefect import get_run_logger

from flows.reporting import format_metrics, publish_round, round_table
from tasks import run_state
from tasks.metrics import global_metrics
from tasks.prefect_decorators import unstored_flow


@unstored_flow("federated-round", "round-{round_number:04d}", validate_parameters=False)
def federated_round(run_id: str, round_number: int) -> run_state.RoundResult:
    """Train one round of the run's model family, evaluate it, checkpoint it."""
    started = time.perf_counter()
    run = run_state.get(run_id)
    outcome = run.family.play_round(round_number)
    run.last_updates = outcome.updates
    run.last_evaluations = outcome.evaluations
    test_metrics = global_metrics(
        [e for e in outcome.evaluations if e.split == "test"], run.spec.task
    )
    result = run_state.RoundResult(
        round=round_number,
        selected=outcome.selected,
        silos=outcome.silos,
        absent=dict(outcome.absent),
        rejected=dict(outcome.rejected),
        metrics=test_metrics,
        seconds=time.perf_counter() - started,
        fit_workers=dict(outcome.fit_workers),
        eval_workers={e.silo: e.worker for e in outcome.evaluations},
        bytes_down=sum(u.bytes_down for u in outcome.updates),
        bytes_up=sum(u.bytes_up for u in outcome.updates),
        checkpoint=outcome.checkpoint,
    )
    publish_round(
        run.spec.name,
        round_number,
        round_table(outcome.evaluations, outcome.updates, test_metrics),
    )
    get_run_logger().info(
        "round %d: %s, test %s, %.2fs",
        round_number,
        outcome.note,
        format_metrics(test_metrics),
        result.seconds,
    )
    return result
