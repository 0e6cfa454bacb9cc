"""One federated round as a Prefect flow run named after it (round-0003)."""

from __future__ import annotations

import time
from typing import Any, TypeVar, cast

from prefect import flow, get_run_logger
from prefect.utilities.annotations import quote

from fedsilo.errors import SiloFailedError, SiloLateError
from fedsilo.flows.reporting import format_metrics, publish_round, round_table
from fedsilo.tasks import run_state
from fedsilo.tasks.messages import Evaluation, LocalUpdate
from fedsilo.tasks.metrics import global_metrics
from fedsilo.tasks.round_tasks import aggregate, checkpoint, evaluate_local, fit_local
from fedsilo.tasks.sampling import sample_silos

T = TypeVar("T")

#: A secure round is masked again at most this many times when silos drop out.
MAX_SECURE_ATTEMPTS = 3


def _fit(
    run_id: str,
    round_number: int,
    attempt: int,
    roster: tuple[str, ...],
    logger: Any,
) -> tuple[list[LocalUpdate], list[SiloFailedError]]:
    """Run the roster's local fits, one task per worker; return updates and failures.

    Updates come back in roster order, whichever worker answered first.
    """
    state = run_state.get(run_id)
    futures = [
        fit_local.submit(
            run_id, worker, round_number, quote(tuple(silos)), attempt, quote(roster)
        )
        for worker, silos in state.cluster.by_worker(roster).items()
    ]
    updates: list[LocalUpdate] = []
    failures: list[SiloFailedError] = []
    for future in futures:
        answered, failed = future.result()
        updates.extend(answered)
        failures.extend(failed)
    for error in failures:
        logger.warning("round %d: %s", round_number, error.reason)
    order = {silo: i for i, silo in enumerate(roster)}
    updates.sort(key=lambda u: order[u.silo])
    failures.sort(key=lambda e: order[e.silo])
    return updates, failures


def _evaluate(
    run_id: str, round_number: int, scorers: list[str], logger: Any
) -> tuple[list[Evaluation], list[SiloFailedError]]:
    """Score the new model at ``scorers``, one task per worker, in their order."""
    state = run_state.get(run_id)
    futures = [
        evaluate_local.submit(run_id, worker, round_number, quote(tuple(silos)))
        for worker, silos in state.cluster.by_worker(scorers).items()
    ]
    evaluations: list[Evaluation] = []
    failures: list[SiloFailedError] = []
    for future in futures:
        scored, failed = future.result()
        evaluations.extend(scored)
        failures.extend(failed)
    for error in failures:
        logger.warning("round %d: %s", round_number, error.reason)
    order = {silo: i for i, silo in enumerate(scorers)}
    evaluations.sort(key=lambda e: order[e.silo])
    return evaluations, failures


def _opaque(value: T) -> T:
    """Pass ``value`` to a task without Prefect walking it for futures.

    A round's updates and evaluations hold one entry per silo (with arrays);
    visiting them all on every task call costs more than the task itself.
    """
    return cast(T, quote(value))


@flow(
    name="federated-round",
    flow_run_name="round-{round_number:04d}",
    persist_result=False,
    validate_parameters=False,
)
def federated_round(run_id: str, round_number: int) -> run_state.RoundResult:
    """Fit at every silo, aggregate, evaluate at every silo, checkpoint."""
    started = time.perf_counter()
    state = run_state.get(run_id)
    silos = list(state.cluster.workers)
    strategy = state.spec.strategy
    selected = sample_silos(
        silos, strategy.fraction, strategy.min_silos, state.spec.seed, round_number
    )
    logger = get_run_logger()
    secure = state.spec.privacy.secure_aggregation
    roster = tuple(selected)
    absent: dict[str, str] = {}
    for attempt in range(MAX_SECURE_ATTEMPTS if secure else 1):
        updates, failures = _fit(run_id, round_number, attempt, roster, logger)
        for error in failures:
            absent[error.silo] = (
                "late" if isinstance(error, SiloLateError) else "failed"
            )
        if not (secure and failures) or len(updates) < max(strategy.min_silos, 2):
            break
        # Masks shared with a silo that dropped out no longer cancel: mask again
        # among the silos still present (Bonawitz et al.'s round abort + retry).
        roster = tuple(u.silo for u in updates)
        logger.warning(
            "round %d: secure aggregation retried without %s",
            round_number,
            sorted(e.silo for e in failures),
        )
    if len(updates) < strategy.min_silos or (secure and failures):
        first = failures[0] if failures else None
        raise SiloFailedError(
            first.silo if first else selected[0],
            f"{first.detail if first else 'no update arrived'}; "
            f"round {round_number} got {len(updates)} update(s), "
            f"strategy.min_silos is {strategy.min_silos}",
        )
    state.last_updates = updates
    combined = aggregate(run_id, round_number, _opaque(updates), len(selected))
    state.params = combined.params
    rejected = {r.silo: r.reason for r in combined.rejected}
    for silo, reason in rejected.items():
        logger.warning(
            "round %d: update of silo %r rejected: %s", round_number, silo, reason
        )
    answered = [u.silo for u in updates]
    # Every silo still reachable scores the new model, trained this round or not;
    # a late silo is still busy with its discarded fit, so it sits this one out.
    scorers = [silo for silo in silos if silo not in absent]
    evaluations, lost = _evaluate(run_id, round_number, scorers, logger)
    for error in lost:
        absent[error.silo] = "failed"
    state.last_evaluations = evaluations
    path = checkpoint(
        run_id,
        round_number,
        _opaque(evaluations),
        _opaque(updates),
        absent,
        rejected,
        _opaque(tuple(selected)),
    )
    test_metrics = global_metrics(
        [e for e in evaluations if e.split == "test"], state.spec.task
    )
    result = run_state.RoundResult(
        round=round_number,
        selected=tuple(selected),
        silos=tuple(answered),
        absent=dict(absent),
        rejected=rejected,
        metrics=test_metrics,
        seconds=time.perf_counter() - started,
        fit_workers={u.silo: u.worker for u in updates},
        eval_workers={e.silo: e.worker for e in evaluations},
        bytes_down=sum(u.bytes_down for u in updates),
        bytes_up=sum(u.bytes_up for u in updates),
        checkpoint=path,
    )
    publish_round(
        state.spec.name,
        round_number,
        round_table(evaluations, updates, test_metrics),
    )
    get_run_logger().info(
        "round %d: %d/%d silos trained, test %s, %.2fs",
        round_number,
        len(answered),
        len(selected),
        format_metrics(test_metrics),
        result.seconds,
    )
    return result
