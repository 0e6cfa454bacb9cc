"""Prefect tasks of a federated round.

Each runs in the coordinator's thread pool. The ones that touch silos run one
per worker and phase (``fit-<worker>-rNNNN``; with one worker per silo the
worker is named after its silo): each sends ONE request over the run's channel
to that worker's silo runtime (tasks/silo/link.py), which fits or scores the
worker's silos in turn, and waits for the small per-silo replies. Silo workers
need no Prefect API access.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fedsilo.errors import SiloFailedError
from tasks.averaging.averaged_state import AveragedState
from tasks.averaging.combine import Combined, combine
from tasks.averaging.sampling import sample_size
from tasks.prefect_decorators import uncached_task
from tasks.privacy.accountant import fedavg_epsilon, sampled_fedavg_epsilon
from tasks.privacy.secagg import MaskContext
from tasks.privacy.silo_protect import PrivacyRequest, with_noise_share
from tasks.protocol.messages import Evaluation, LocalUpdate
from tasks.silo.batch import SiloFault
from tasks.silo.failures import silo_failure
from tasks.store.checkpoints import MetricRow
from tasks.store.rows import metric_rows


def privacy_request(
    state: AveragedState,
    silo: str,
    round_number: int,
    attempt: int,
    roster: tuple[str, ...],
) -> PrivacyRequest | None:
    """Return how the silo must protect this round's update (None: send as is)."""
    privacy = state.spec.privacy
    if not privacy.secure_aggregation and privacy.dp is None:
        return None
    clip = state.dp_clip if privacy.dp is not None else None
    vote = privacy.dp is not None and privacy.dp.adaptive is not None
    if not privacy.secure_aggregation:
        return PrivacyRequest(clip=clip, vote=vote)
    me = state.silo_index(silo)
    peers = {
        state.silo_index(other): state.public_keys[other]
        for other in roster
        if other != silo
    }
    context = MaskContext(state.run_id, round_number, attempt)
    request = PrivacyRequest(
        clip=clip, vote=vote, silo_index=me, peers_public=peers, context=context
    )
    return with_noise_share(request, privacy.dp, len(roster))


def _silo_errors(
    worker: str, silos: Sequence[str], error: SiloFailedError
) -> list[SiloFailedError]:
    """Spread a worker-level failure (late, lost, timed out) over its silos."""
    reason = error.reason.removeprefix(f"silo {worker!r}: ")
    if any(silo != worker for silo in silos):
        reason = f"{reason} (worker {worker!r})"
    return [type(error)(silo, reason) for silo in silos]


def call_worker(
    state: AveragedState,
    worker: str,
    silos: Sequence[str],
    phase: str,
    args: Sequence[Any],
    deadline: float | None = None,
) -> list[Any]:
    """Run a phase's batch at the worker holding ``silos``; return the replies.

    Failures come back as SiloFailedError per silo; the whole batch failing
    (lost worker, no reply within the silo timeout, :class:`SiloLateError` past
    the deadline) is every one of its silos' failure. A late batch's reply is
    never read.
    """
    timeout = state.spec.cluster.silo_timeout
    wait = timeout if deadline is None else min(timeout, deadline)
    try:
        replies = state.link.ask(silos[0], phase, args, wait)
    except Exception as error:
        failure = silo_failure(worker, error, timeout, deadline)
        return list(_silo_errors(worker, silos, failure))
    assert isinstance(replies, list) and len(replies) == len(silos)
    return [
        SiloFailedError(r.silo, r.reason) if isinstance(r, SiloFault) else r
        for r in replies
    ]


@uncached_task("fit-local", "fit-{worker}-r{round_number:04d}")
def fit_local(
    state: AveragedState,
    worker: str,
    round_number: int,
    silos: tuple[str, ...],
    attempt: int = 0,
    roster: tuple[str, ...] = (),
) -> tuple[list[LocalUpdate], list[SiloFailedError]]:
    """Train the global model at the worker's ``silos``, one Dask task for all.

    Returns their (protected) updates and the failures, each naming its silo.
    """
    args = (
        list(silos),
        state.held("prepared", silos),
        [privacy_request(state, s, round_number, attempt, roster) for s in silos],
        state.held("keypair", silos),
        state.params,
        state.config,
        round_number,
        state.held("compressor", silos),
    )
    replies = call_worker(
        state, worker, silos, "fit", args, state.spec.strategy.deadline
    )
    updates = [r for r in replies if isinstance(r, LocalUpdate)]
    return updates, [r for r in replies if isinstance(r, SiloFailedError)]


@uncached_task("aggregate", "aggregate-r{round_number:04d}")
def aggregate(
    state: AveragedState,
    round_number: int,
    updates: list[LocalUpdate],
    expected_silos: int,
) -> Combined:
    """Combine the updates by the strategy, then step the server optimiser."""
    spec = state.spec
    dp = spec.privacy.dp
    combined = combine(
        updates,
        state.params,
        spec.strategy,
        dp=dp,
        clip=state.dp_clip,
        expected_silos=expected_silos,  # DP noise: the OS's CSPRNG, never recorded
    )
    if state.server_optimizer is not None:
        combined.params = state.server_optimizer.step(state.params, combined.params)
    if dp is not None:
        state.dp_clip = combined.clip
        state.epsilon = fedavg_epsilon(dp.noise_multiplier, round_number, dp.delta)
    return combined


@uncached_task("evaluate-local", "evaluate-{worker}-r{round_number:04d}")
def evaluate_local(
    state: AveragedState, worker: str, round_number: int, silos: tuple[str, ...]
) -> tuple[list[Evaluation], list[SiloFailedError]]:
    """Score the new global model at the worker's ``silos`` (train and test rows).

    Returns the evaluations and the failures, each naming its silo.
    """
    args = (
        list(silos),
        state.held("prepared", silos),
        state.params,
        state.config,
        round_number,
    )
    replies = call_worker(state, worker, silos, "evaluate", args)
    evaluations = [e for r in replies if isinstance(r, list) for e in r]
    return evaluations, [r for r in replies if isinstance(r, SiloFailedError)]


def privacy_rows(state: AveragedState, round_number: int) -> list[MetricRow]:
    """Return the privacy spent so far and the current DP clip as global rows.

    ``epsilon`` holds against whoever knows the rounds' samples, the amplified
    ``epsilon_sampled`` (fraction < 1) against readers of the models alone
    (tasks/privacy/accountant.py).
    """
    dp = state.spec.privacy.dp
    if dp is None or state.epsilon is None:
        return []
    rows = [
        MetricRow("global", "train", "epsilon", state.epsilon, 0),
        MetricRow("global", "train", "delta", dp.delta, 0),
    ]
    spec = state.spec
    n = len(spec.silos)
    sampled = sampled_fedavg_epsilon(
        dp.noise_multiplier,
        sample_size(n, spec.strategy.fraction, spec.strategy.min_silos),
        n,
        round_number,
        dp.delta,
    )
    if sampled is not None:
        rows.append(MetricRow("global", "train", "epsilon_sampled", sampled, 0))
    if state.dp_clip is not None:
        rows.append(MetricRow("global", "train", "dp_clip", state.dp_clip, 0))
    return rows


@uncached_task("checkpoint", "checkpoint-r{round_number:04d}")
def checkpoint(
    state: AveragedState,
    round_number: int,
    evaluations: list[Evaluation],
    updates: list[LocalUpdate],
    absent: dict[str, str],
    rejected: dict[str, str],
    selected: tuple[str, ...] = (),
) -> str:
    """Write the round's metrics and global model to the store, atomically.

    ``absent`` names the silos that sent no update or score and why ("late" or
    "failed"), ``selected`` the silos the round's sample asked to train; both
    are recorded as metrics rows of value 1 (metric ``late``, ``failed``,
    ``selected``).
    """
    rows = [MetricRow(silo, "train", "selected", 1.0, 0) for silo in selected]
    rows += metric_rows(evaluations, updates, state.spec.task, absent)
    rows += [MetricRow(silo, "train", "rejected", 1.0, 0) for silo in sorted(rejected)]
    rows += privacy_rows(state, round_number)
    return state.store.write_round(
        round_number, rows, {**state.params, **state.server_state()}
    )
