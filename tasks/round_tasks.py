"""Prefect tasks of a federated round.

Each runs in the coordinator's thread pool; the ones that touch a silo submit
its work to the silo's own Dask worker (pinned, never elsewhere) and wait for
the small reply. Silo workers need no Prefect API access.
"""

from __future__ import annotations

import numpy as np
from distributed import Future
from prefect import task
from prefect.cache_policies import NO_CACHE

from fedsilo.errors import FedsiloError, SiloFailedError, SiloLateError
from fedsilo.tasks import run_state
from fedsilo.tasks.aggregation import weighted_average
from fedsilo.tasks.checkpoint_store import MetricRow
from fedsilo.tasks.messages import Evaluation, LocalUpdate
from fedsilo.tasks.metrics import global_metrics
from fedsilo.tasks.silo import silo_evaluate, silo_fit


def wait_silo(
    silo: str, future: Future, timeout: float, deadline: float | None = None
) -> object:
    """Return a silo task's result; failures name the silo.

    Past ``deadline`` seconds the silo is late: its task is cancelled and
    whatever it sends afterwards is never read.
    """
    wait = timeout if deadline is None else min(timeout, deadline)
    try:
        return future.result(timeout=wait)
    except FedsiloError:
        raise
    except TimeoutError:
        future.cancel()
        if deadline is not None and deadline <= timeout:
            raise SiloLateError(silo, f"missed the {deadline:g}s deadline") from None
        raise SiloFailedError(silo, f"no reply within {timeout:g}s") from None
    except Exception as error:
        text = str(error).splitlines()[0] if str(error) else ""
        raise SiloFailedError(silo, f"{type(error).__name__}: {text}") from error


@task(
    name="fit-local",
    task_run_name="fit-{silo}-r{round_number:04d}",
    cache_policy=NO_CACHE,
    persist_result=False,
)
def fit_local(run_id: str, silo: str, round_number: int) -> LocalUpdate:
    """Train the global model at one silo and return its update."""
    state = run_state.get(run_id)
    future = state.submit(
        silo,
        silo_fit,
        state.prepared[silo],
        state.params,
        state.config,
        round_number,
        key=f"fit-{silo}-r{round_number}",
    )
    update = wait_silo(
        silo, future, state.spec.cluster.silo_timeout, state.spec.strategy.deadline
    )
    assert isinstance(update, LocalUpdate)
    return update


@task(
    name="aggregate",
    task_run_name="aggregate-r{round_number:04d}",
    cache_policy=NO_CACHE,
    persist_result=False,
)
def aggregate(
    run_id: str, round_number: int, updates: list[LocalUpdate]
) -> dict[str, np.ndarray]:
    """FedAvg: average the silos' parameters weighted by their training rows."""
    return weighted_average([(u.params, float(u.n_samples)) for u in updates])


@task(
    name="evaluate-local",
    task_run_name="evaluate-{silo}-r{round_number:04d}",
    cache_policy=NO_CACHE,
    persist_result=False,
)
def evaluate_local(run_id: str, silo: str, round_number: int) -> list[Evaluation]:
    """Score the new global model at one silo, on its train and test rows."""
    state = run_state.get(run_id)
    future = state.submit(
        silo,
        silo_evaluate,
        state.prepared[silo],
        state.params,
        state.config,
        round_number,
        key=f"evaluate-{silo}-r{round_number}",
    )
    result = wait_silo(silo, future, state.spec.cluster.silo_timeout)
    assert isinstance(result, list)
    return result


def metric_rows(
    evaluations: list[Evaluation],
    updates: list[LocalUpdate],
    task: str,
    absent: dict[str, str] | None = None,
) -> list[MetricRow]:
    """Long-format rows: every silo's metrics, the global ones, and traffic."""
    rows = []
    for evaluation in evaluations:
        for name, value in evaluation.metrics.items():
            rows.append(
                MetricRow(
                    evaluation.silo, evaluation.split, name, value, evaluation.n_samples
                )
            )
    for split in ("train", "test"):
        chosen = [e for e in evaluations if e.split == split]
        n = sum(e.n_samples for e in chosen)
        for name, value in global_metrics(chosen, task).items():
            rows.append(MetricRow("global", split, name, value, n))
    for update in updates:
        n = update.n_samples
        rows.append(MetricRow(update.silo, "train", "bytes_down", update.bytes_down, n))
        rows.append(MetricRow(update.silo, "train", "bytes_up", update.bytes_up, n))
        rows.append(MetricRow(update.silo, "train", "fit_seconds", update.seconds, n))
    for silo, kind in sorted((absent or {}).items()):
        rows.append(MetricRow(silo, "train", kind, 1.0, 0))
    return rows


@task(
    name="checkpoint",
    task_run_name="checkpoint-r{round_number:04d}",
    cache_policy=NO_CACHE,
    persist_result=False,
)
def checkpoint(
    run_id: str,
    round_number: int,
    evaluations: list[Evaluation],
    updates: list[LocalUpdate],
    absent: dict[str, str],
) -> str:
    """Write the round's metrics and global model to the store, atomically.

    ``absent`` names the selected silos that sent no update and why ("late"
    or "failed"); they are recorded as metrics rows of value 1.
    """
    state = run_state.get(run_id)
    rows = metric_rows(evaluations, updates, state.spec.task, absent)
    return state.store.write_round(round_number, rows, state.params)
