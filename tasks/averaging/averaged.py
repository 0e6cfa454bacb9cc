"""Averaged models as a model family: open the silos, play a round, personalize.

Opening reads every silo's rows on its own worker, checks the schemas, agrees
on one-hot categories and a global scaler from the silos' statistics, and
keeps the prepared arrays there. A round fits the global model at the sampled
silos (one request per worker), combines the updates by the strategy,
scores the new model at every reachable silo and checkpoints it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Any, cast

import numpy as np
from distributed import Future
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from fedsilo.cluster import SiloCluster
from fedsilo.errors import (
    CheckpointError,
    SiloDataError,
    SiloFailedError,
    SiloLateError,
)
from fedsilo.spec import FederationSpec
from tasks.averaging import sklearn_models
from tasks.averaging.compression import SiloCompressor
from tasks.averaging.personalize import personalize_silo
from tasks.averaging.round_tasks import (
    aggregate,
    checkpoint,
    evaluate_local,
    fit_local,
)
from tasks.averaging.sampling import sample_silos
from tasks.averaging.server_optimizers import make_server_optimizer
from tasks.privacy.accountant import would_exceed
from tasks.privacy.silo_protect import STATE_TENSORS, make_keypair, public_key
from tasks.protocol.messages import Evaluation, LocalUpdate
from tasks.run_state import (
    MAX_SECURE_ATTEMPTS,
    Opening,
    Personalized,
    RoundOutcome,
    opaque,
)
from tasks.silo import rpc as silo_rpc
from tasks.silo.data import (
    FitConfig,
    load_arguments,
    load_silo,
    prepare_silo,
    row_count,
    silo_moments,
    silo_schema,
)
from tasks.silo.failures import wait_silo
from tasks.silo.schema import categorical_features, check_schemas
from tasks.statistics.categories import Encoding, global_categories
from tasks.statistics.moments import standard_scaler
from tasks.statistics.silo_side import silo_categories
from tasks.store.checkpoints import CheckpointStore


def _gather(spec: FederationSpec, futures: dict[str, Any]) -> dict[str, Any]:
    """Wait for one future per silo; the first failure names its silo."""
    return {
        silo: wait_silo(silo, future, spec.cluster.silo_timeout)
        for silo, future in futures.items()
    }


def read_silos(
    spec: FederationSpec, cluster: SiloCluster, suffix: str, prefix: str = ""
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read every silo's rows on its worker; return their futures and schemas.

    The rows stay on the workers (the futures refer to them); the schemas are
    what the coordinator learns. Dask keys end in ``suffix`` (a run id).
    """
    data = {
        s.name: cluster.submit(
            s.name,
            load_silo,
            *load_arguments(spec, s),
            key=f"{prefix}silo-data-{s.name}-{suffix}",
        )
        for s in spec.silos
    }
    schemas = _gather(
        spec,
        {
            name: cluster.submit(
                name,
                silo_schema,
                future,
                spec.target,
                spec.task,
                key=f"{prefix}schema-{name}-{suffix}",
            )
            for name, future in data.items()
        },
    )
    return data, schemas


@dataclass(frozen=True, slots=True)
class OpenedSilos:
    """What opening the silos left on the workers and taught the coordinator."""

    prepared: dict[str, Future]  # silo -> its prepared arrays, on its worker
    features: list[str]
    classes: tuple[Any, ...]
    scaler: dict[str, np.ndarray] | None
    encoding: Encoding | None


@task(name="open-silos", cache_policy=NO_CACHE, persist_result=False)
def open_silos(
    spec: FederationSpec,
    cluster: SiloCluster,
    run_id: str,
    known_classes: tuple[Any, ...] = (),
) -> OpenedSilos:
    """Read every silo's rows on its worker, check schemas, prepare arrays.

    ``known_classes`` are labels the model must know even if no silo holds
    them (``fedsilo compare`` trains a one-class silo alone with them).
    """
    data, schemas = read_silos(spec, cluster, run_id)
    features = check_schemas(
        list(schemas.values()),
        target=spec.target,
        task=spec.task,
        categorical=spec.preprocessing.categorical,
    )
    encoding = _encoding(spec, cluster, data, schemas, features, run_id)
    numeric = features if encoding is None else encoding.numeric
    classes: tuple[Any, ...] = ()
    if spec.task == "classification":
        seen = {label for s in schemas.values() for label in s.labels}
        classes = tuple(sorted(seen | set(known_classes)))
        if len(classes) < 2:
            raise_one_class(spec, classes)
    mean = scale = None
    if spec.preprocessing.scale == "standard":
        moments = _gather(
            spec,
            {
                name: cluster.submit(
                    name, silo_moments, future, numeric, key=f"moments-{name}-{run_id}"
                )
                for name, future in data.items()
            },
        )
        mean, scale = standard_scaler(list(moments.values()))
    prepared = {
        name: cluster.submit(
            name,
            prepare_silo,
            future,
            numeric,
            spec.target,
            mean,
            scale,
            None if encoding is None else dict(encoding.categories),
            key=f"prepared-{name}-{run_id}",
        )
        for name, future in data.items()
    }
    # Surface preparation errors (missing values, ...) before round 1.
    _gather(
        spec,
        {
            name: cluster.submit(name, row_count, f, key=f"count-{name}-{run_id}")
            for name, f in prepared.items()
        },
    )
    # Every worker serves the round's fit and scoring requests (tasks/silo/rpc.py).
    hosts = cluster.by_worker(list(prepared))
    _gather(
        spec,
        {
            silos[0]: cluster.submit(
                silos[0], silo_rpc.installed, key=f"silo-rpc-{silos[0]}-{run_id}"
            )
            for silos in hosts.values()
        },
    )
    return OpenedSilos(
        prepared=prepared,
        features=features if encoding is None else encoding.feature_names(),
        classes=classes,
        scaler=None
        if mean is None or scale is None
        else {"mean": mean, "scale": scale},
        encoding=encoding,
    )


def _encoding(
    spec: FederationSpec,
    cluster: SiloCluster,
    data: dict[str, Any],
    schemas: dict[str, Any],
    features: list[str],
    run_id: str,
) -> Encoding | None:
    """Agree on one-hot categories from the silos' lists (statistics.categories)."""
    columns = categorical_features(
        list(schemas.values()), features, spec.preprocessing.categorical
    )
    if not columns:
        return None
    lists = _gather(
        spec,
        {
            name: cluster.submit(
                name,
                silo_categories,
                future,
                columns,
                spec.statistics.min_count,
                key=f"categories-{name}-{run_id}",
            )
            for name, future in data.items()
        },
    )
    merged = global_categories(list(lists.values()), columns)
    return Encoding(tuple(features), tuple(merged.items()))


def raise_one_class(spec: FederationSpec, classes: tuple[Any, ...]) -> None:
    """Refuse a classification federation whose silos hold a single label."""
    raise SiloDataError(
        spec.silos[0].name,
        f"all silos together hold only the label(s) {list(classes)}; "
        "classification needs at least two",
        column=spec.target,
    )


def _metadata(spec: FederationSpec, opened: OpenedSilos) -> dict[str, str]:
    model = {
        "kind": spec.model.kind,
        "params": spec.model.params,
        "features": opened.features,
        "classes": [c if isinstance(c, str) else float(c) for c in opened.classes],
        "scaler": None
        if opened.scaler is None
        else {k: v.tolist() for k, v in opened.scaler.items()},
    }
    if opened.encoding is not None:
        model["encoding"] = opened.encoding.to_json()
    return {
        "fedsilo.spec": spec.public_json(),
        "fedsilo.spec_hash": spec.spec_hash(),
        "fedsilo.model": json.dumps(model),
        "fedsilo.sklearn_version": version("scikit-learn"),
    }


@dataclass(slots=True)
class AveragedRun:
    """An averaged run's coordinator-side state; its rounds' tasks receive it."""

    spec: FederationSpec
    run_id: str
    cluster: SiloCluster
    store: CheckpointStore
    config: FitConfig
    prepared: dict[str, Future]
    params: dict[str, np.ndarray]
    features: list[str] = field(default_factory=list)
    classes: tuple[Any, ...] = ()
    start_round: int = 1
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

    def submit(self, silo: str, fn: Any, *args: Any, key: str) -> Future:
        """Run ``fn`` on the silo's own worker and nowhere else."""
        return self.cluster.submit(silo, fn, *args, key=f"{key}-{self.run_id}")

    # -- the family protocol (tasks.run_state.FamilyRun) ------------------------
    def budget_stop(self, round_number: int) -> str | None:
        """Return why the run must stop before ``round_number`` (DP budget)."""
        dp = self.spec.privacy.dp
        if dp is None or dp.epsilon_budget is None:
            return None
        n = len(self.spec.silos)
        strategy = self.spec.strategy
        sampled = len(
            sample_silos(
                [str(i) for i in range(n)], strategy.fraction, strategy.min_silos, 0, 1
            )
        )
        if would_exceed(
            dp.noise_multiplier,
            sampled / n,
            round_number - 1,
            dp.delta,
            dp.epsilon_budget,
            sampling="fixed",
            population=n,
        ):
            return (
                f"stopped before round {round_number}: it would spend more than the "
                f"privacy budget epsilon={dp.epsilon_budget:g} (delta={dp.delta:g})"
            )
        return None

    def play_round(self, round_number: int) -> RoundOutcome:
        """Fit at the sampled silos, aggregate, evaluate everywhere, checkpoint."""
        silos = list(self.cluster.workers)
        strategy = self.spec.strategy
        selected = sample_silos(
            silos, strategy.fraction, strategy.min_silos, self.spec.seed, round_number
        )
        logger = get_run_logger()
        secure = self.spec.privacy.secure_aggregation
        roster = tuple(selected)
        absent: dict[str, str] = {}
        for attempt in range(MAX_SECURE_ATTEMPTS if secure else 1):
            updates, failures = self._fit(round_number, attempt, roster, logger)
            for error in failures:
                absent[error.silo] = (
                    "late" if isinstance(error, SiloLateError) else "failed"
                )
            if not (secure and failures) or len(updates) < max(strategy.min_silos, 2):
                break
            # Masks shared with a silo that dropped out no longer cancel: mask
            # again among the silos still present (Bonawitz et al.'s abort + retry).
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
        combined = aggregate(opaque(self), round_number, opaque(updates), len(selected))
        self.params = combined.params
        rejected = {r.silo: r.reason for r in combined.rejected}
        for silo, reason in rejected.items():
            logger.warning(
                "round %d: update of silo %r rejected: %s", round_number, silo, reason
            )
        # Every silo still reachable scores the new model, trained this round or
        # not; a late silo is still busy with its discarded fit: it sits this out.
        scorers = [silo for silo in silos if silo not in absent]
        evaluations, lost = self._evaluate(round_number, scorers, logger)
        for error in lost:
            absent[error.silo] = "failed"
        path = checkpoint(
            opaque(self),
            round_number,
            opaque(evaluations),
            opaque(updates),
            absent,
            rejected,
            opaque(tuple(selected)),
        )
        answered = tuple(u.silo for u in updates)
        return RoundOutcome(
            selected=tuple(selected),
            silos=answered,
            evaluations=evaluations,
            updates=updates,
            checkpoint=path,
            fit_workers={u.silo: u.worker for u in updates},
            note=f"{len(answered)}/{len(selected)} silos trained",
            absent=dict(absent),
            rejected=rejected,
        )

    def _fit(
        self, round_number: int, attempt: int, roster: tuple[str, ...], logger: Any
    ) -> tuple[list[LocalUpdate], list[SiloFailedError]]:
        """Run the roster's local fits, one task per worker, in roster order."""
        futures = [
            fit_local.submit(
                opaque(self),
                worker,
                round_number,
                opaque(tuple(silos)),
                attempt,
                opaque(roster),
            )
            for worker, silos in self.cluster.by_worker(roster).items()
        ]
        return _collect(futures, roster, round_number, logger)

    def _evaluate(
        self, round_number: int, scorers: list[str], logger: Any
    ) -> tuple[list[Evaluation], list[SiloFailedError]]:
        """Score the new model at ``scorers``, one task per worker, in their order."""
        futures = [
            evaluate_local.submit(
                opaque(self), worker, round_number, opaque(tuple(silos))
            )
            for worker, silos in self.cluster.by_worker(scorers).items()
        ]
        return _collect(futures, tuple(scorers), round_number, logger)

    def personalize(self, epochs: int, round_number: int) -> Personalized:
        """Train the model ``epochs`` more local epochs at each silo; score it."""
        futures = {
            silo: self.submit(
                silo,
                personalize_silo,
                self.prepared[silo],
                self.params,
                self.config,
                epochs,
                round_number,
                key=f"personalize-{silo}",
            )
            for silo in self.prepared
        }
        evaluations: list[Evaluation] = []
        for silo, future in futures.items():
            scored = wait_silo(silo, future, self.spec.cluster.silo_timeout)
            assert isinstance(scored, list)
            evaluations.extend(scored)
        return Personalized(evaluations, {})

    def summary(self) -> dict[str, Any]:
        """Return the averaged run's part of the summary."""
        return {
            "epsilon": self.epsilon,
            "features": self.features,
            "classes": list(self.classes),
        }

    def close(self) -> None:
        """Release the futures of everything the silos hold for this run."""
        self.prepared.clear()
        self.keypairs.clear()
        self.compressors.clear()


def _collect(
    futures: list[Any], order: tuple[str, ...], round_number: int, logger: Any
) -> tuple[list[Any], list[SiloFailedError]]:
    """Gather per-worker replies and failures, sorted in ``order`` of their silos."""
    replies: list[Any] = []
    failures: list[SiloFailedError] = []
    for future in futures:
        answered, failed = future.result()
        replies.extend(answered)
        failures.extend(failed)
    for error in failures:
        logger.warning("round %d: %s", round_number, error.reason)
    place = {silo: i for i, silo in enumerate(order)}
    replies.sort(key=lambda r: place[r.silo])
    failures.sort(key=lambda e: place[e.silo])
    return replies, failures


def _setup_compression(state: AveragedRun) -> None:
    """Make each silo's update compressor on its worker (it keeps the residual).

    Each stays there, held by a future the rounds pass to the silo's fits and
    the coordinator never resolves; releasing the futures at the end of the run
    frees them. A resumed run starts with zero residuals (docs/compression.md).
    """
    chosen = state.spec.compression
    if chosen.kind == "none":
        return
    for silo in state.spec.silos:
        state.compressors[silo.name] = state.cluster.submit(
            silo.name,
            SiloCompressor,
            chosen.kind,
            chosen.error_feedback,
            key=f"compressor-{silo.name}-{state.run_id}",
        )


def _setup_privacy(state: AveragedRun, server: dict[str, Any]) -> None:
    """Make silo key pairs, the DP clip and the server optimiser (or restore them)."""
    spec = state.spec
    if spec.privacy.secure_aggregation:
        for silo in spec.silos:
            state.keypairs[silo.name] = state.cluster.submit(
                silo.name, make_keypair, key=f"keypair-{silo.name}-{state.run_id}"
            )
        publics = {
            name: state.cluster.submit(
                name, public_key, future, key=f"public-{name}-{state.run_id}"
            )
            for name, future in state.keypairs.items()
        }
        state.public_keys = _gather(spec, publics)
    dp = spec.privacy.dp
    if dp is not None:
        state.dp_clip = float(server.get("dp_clip", dp.clip))
    chosen = spec.strategy.server_optimizer
    if chosen is not None:
        options = chosen.model_dump(exclude={"kind"})
        hyper = {
            "fedavgm": {"learning_rate", "momentum"},
            "fedadagrad": {"learning_rate", "tau"},
            "fedadam": {"learning_rate", "beta1", "beta2", "tau"},
            "fedyogi": {"learning_rate", "beta1", "beta2", "tau"},
        }[chosen.kind]
        state.server_optimizer = make_server_optimizer(
            chosen.kind,
            state.params,
            **{k: v for k, v in options.items() if k in hyper},
            exclude=cast(Any, STATE_TENSORS & set(state.params)),
        )
        saved = {k: v for k, v in server.items() if k != "dp_clip"}
        if saved:
            state.server_optimizer.load_state_dict(saved)


class AveragedFamily:
    """Model kinds whose silos train scikit-learn models that are averaged."""

    @staticmethod
    def check(spec: FederationSpec) -> None:
        """Refuse model parameters the kind cannot take, before any silo work."""
        sklearn_models.check_params(spec.model.kind, spec.model.params)

    @staticmethod
    def open(opening: Opening) -> AveragedRun:
        """Open the silos, then start from the latest checkpoint or a new model."""
        spec, cluster, run_id = opening.spec, opening.cluster, opening.run_id
        resume, known_classes = opening.resume, opening.known_classes
        logger = get_run_logger()
        opened = open_silos(spec, cluster, run_id, known_classes)
        store = CheckpointStore.of_run(spec, run_id, _metadata(spec, opened))
        config = FitConfig(
            kind=spec.model.kind,
            model_params=dict(spec.model.params),
            task=spec.task,
            classes=opened.classes,
            n_features=len(opened.features),
            epochs=spec.local.epochs,
            batch_size=spec.local.batch_size,
            seed=spec.seed,
            proximal_mu=spec.local.proximal_mu,
        )
        start_round = 1
        latest = store.latest_complete_round() if resume else None
        server: dict[str, Any] = {}
        if latest is not None:
            stored = store.read_params(latest)
            params = {k: v for k, v in stored.items() if not k.startswith("server/")}
            server = {
                k.removeprefix("server/"): v
                for k, v in stored.items()
                if k.startswith("server/")
            }
            start_round = latest + 1
            logger.info("resuming run %s after round %d", run_id, latest)
        else:
            if store.complete_rounds():
                raise CheckpointError(
                    f"run {run_id} already has checkpoints at {store.run_path}; "
                    "use resume to continue it"
                )
            params = sklearn_models.init_params(
                spec.model.kind,
                spec.model.params,
                n_features=len(opened.features),
                classes=opened.classes,
                seed=spec.seed,
            )
        state = AveragedRun(
            spec=spec,
            run_id=run_id,
            cluster=cluster,
            store=store,
            config=config,
            prepared=dict(opened.prepared),
            params=params,
            features=opened.features,
            classes=opened.classes,
            start_round=start_round,
        )
        try:
            _setup_privacy(state, server)
            _setup_compression(state)
        except BaseException:
            state.close()
            raise
        return state
