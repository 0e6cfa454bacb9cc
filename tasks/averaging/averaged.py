"""Averaged models as a model family: open the silos, play a round, personalize.

Opening reads every silo's rows on its own worker, checks the schemas, agrees
on one-hot categories and a global scaler from the silos' statistics, and
keeps the prepared arrays there. A round fits the global model at the sampled
silos (one request per worker), combines the updates by the strategy,
scores the new model at every reachable silo and checkpoints it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any, cast

import numpy as np
from prefect import get_run_logger

from fedsilo.cluster import SiloCluster, silo_workers
from fedsilo.errors import (
    CheckpointError,
    SiloDataError,
    SiloFailedError,
    SiloLateError,
)
from fedsilo.spec import FederationSpec
from tasks.averaging import sklearn_models
from tasks.averaging.averaged_state import AveragedState, Preparation
from tasks.averaging.round_tasks import (
    aggregate,
    checkpoint,
    evaluate_local,
    fit_local,
)
from tasks.averaging.sampling import sample_silos
from tasks.averaging.server_optimizers import make_server_optimizer
from tasks.prefect_decorators import uncached_task
from tasks.privacy.accountant import would_exceed
from tasks.privacy.silo_protect import STATE_TENSORS
from tasks.protocol.messages import Evaluation, LocalUpdate, SiloSchema
from tasks.run_state import (
    MAX_SECURE_ATTEMPTS,
    Opening,
    Personalized,
    RoundOutcome,
    opaque,
)
from tasks.silo.data import FitConfig, load_arguments
from tasks.silo.failures import failure_of
from tasks.silo.link import SiloLink
from tasks.silo.schema import (
    categorical_features,
    check_schemas,
    federation_classes,
)
from tasks.statistics.categories import Encoding, global_categories
from tasks.statistics.moments import standard_scaler
from tasks.store.checkpoints import CheckpointStore


def read_silos(spec: FederationSpec, link: SiloLink) -> dict[str, SiloSchema]:
    """Read every silo's rows on its worker, where they stay; return their schemas.

    The rows are held in each silo's runtime (slot ``rows``); the schemas are
    what the coordinator learns.
    """
    link.each(
        "load",
        {s.name: load_arguments(spec, s) for s in spec.silos},
        name="silo-data",
        keep="rows",
    )
    return link.each(
        "schema",
        {
            s.name: (link.ref(s.name, "rows"), spec.target, spec.task)
            for s in spec.silos
        },
        name="schema",
    )


@dataclass(frozen=True, slots=True)
class OpenedSilos:
    """What opening the silos left in their runtimes and taught the coordinator."""

    link: SiloLink
    preparation: Preparation
    features: list[str]
    classes: tuple[Any, ...]
    scaler: dict[str, np.ndarray] | None
    encoding: Encoding | None


def prepare_silos(
    link: SiloLink, silos: Sequence[str], preparation: Preparation
) -> None:
    """Prepare the silos' arrays (held as ``prepared``); check them before round 1."""
    link.each(
        "prepare",
        {s: preparation.arguments(link, s) for s in silos},
        name="prepared",
        keep="prepared",
    )
    link.each("row-count", {s: (link.ref(s, "prepared"),) for s in silos}, name="count")


@uncached_task("open-silos")
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
    link = SiloLink(cluster, run_id, spec.cluster.silo_timeout)
    names = [s.name for s in spec.silos]
    try:
        # The channels first: a silo frees what it holds when its channel closes.
        link.connect(names)
        schemas = read_silos(spec, link)
        features = check_schemas(
            list(schemas.values()),
            target=spec.target,
            task=spec.task,
            categorical=spec.preprocessing.categorical,
        )
        encoding = _encoding(spec, link, schemas, features)
        numeric = features if encoding is None else encoding.numeric
        classes: tuple[Any, ...] = ()
        if spec.task == "classification":
            classes = federation_classes(
                list(schemas.values()), spec.target, spec.classes, known_classes
            )
            if len(classes) < 2:
                raise_one_class(spec, classes)
        mean = scale = None
        if spec.preprocessing.scale == "standard":
            moments = link.each(
                "moments",
                {n: (link.ref(n, "rows"), numeric) for n in names},
                name="moments",
            )
            mean, scale = standard_scaler(list(moments.values()))
        preparation = Preparation(
            numeric,
            spec.target,
            mean,
            scale,
            None if encoding is None else dict(encoding.categories),
        )
        prepare_silos(link, names, preparation)
    except BaseException:
        link.close()
        raise
    return OpenedSilos(
        link=link,
        preparation=preparation,
        features=features if encoding is None else encoding.feature_names(),
        classes=classes,
        scaler=None
        if mean is None or scale is None
        else {"mean": mean, "scale": scale},
        encoding=encoding,
    )


def _encoding(
    spec: FederationSpec,
    link: SiloLink,
    schemas: dict[str, Any],
    features: list[str],
) -> Encoding | None:
    """Agree on one-hot categories from the silos' lists (statistics.categories)."""
    columns = categorical_features(
        list(schemas.values()), features, spec.preprocessing.categorical
    )
    if not columns:
        return None
    lists = link.each(
        "categories",
        {
            name: (link.ref(name, "rows"), columns, spec.statistics.min_count)
            for name in schemas
        },
        name="categories",
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
class AveragedRun(AveragedState):
    """An averaged run: its state and the family protocol's rounds."""

    def rejoin(self, logger: Any) -> None:
        """Reopen the silos whose worker came back (restarted) since the last round.

        A silo worker that restarts holds nothing: it reads and prepares its
        rows again, makes new keys and a new compressor, and trains from the
        next round on.
        """
        present = silo_workers(self.cluster.client)
        back = [
            s.name
            for s in self.spec.silos
            if present.get(self.cluster.worker_name(s.name), self.link.address(s.name))
            != self.link.address(s.name)
        ]
        if not back:
            return
        for silo in back:
            self.link.drop(self.link.address(silo))
            self.cluster.workers[silo] = present[self.cluster.worker_name(silo)]
        self.link.connect(back)
        self.link.each(
            "load",
            {
                s.name: load_arguments(self.spec, s)
                for s in self.spec.silos
                if s.name in back
            },
            name="silo-data",
            keep="rows",
        )
        prepare_silos(self.link, back, self.preparation)
        _setup_silo_state(self, back)
        logger.info("silo(s) %s rejoined the run", back)

    # -- the family protocol (tasks.run_state.FamilyRun) ------------------------
    def budget_stop(self, round_number: int) -> str | None:
        """Return why the run must stop before ``round_number`` (DP budget)."""
        dp = self.spec.privacy.dp
        if dp is None or dp.epsilon_budget is None:
            return None
        # Against whoever knows the samples: no amplification (accountant.py).
        if would_exceed(
            dp.noise_multiplier, 1.0, round_number - 1, dp.delta, dp.epsilon_budget
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
            silos,
            strategy.fraction,
            strategy.min_silos,
            self.spec.seed,
            round_number,
            secret=self.spec.privacy.dp is not None,  # DP: unpredictable from the spec
        )
        logger = get_run_logger()
        try:
            self.rejoin(logger)
        except Exception as problem:  # a silo still down sits this round out
            logger.warning(
                "round %d: a silo could not rejoin: %s", round_number, problem
            )
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
        evaluations: list[Evaluation] = []
        for silo in self.cluster.workers:
            args = (
                self.link.ref(silo, "prepared"),
                self.params,
                self.config,
                epochs,
                round_number,
            )
            try:
                scored = self.link.ask(
                    silo, "personalize", args, self.spec.cluster.silo_timeout
                )
            except Exception as error:
                raise failure_of(silo, error) from error
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
        """Close the run's channels: each silo frees what it held for the run."""
        self.link.close()


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


def _setup_silo_state(state: AveragedRun, silos: Sequence[str]) -> None:
    """Make the silos' key pairs and update compressors, held in their runtimes.

    A key pair's private half never leaves its silo; the coordinator learns
    the public halves. A compressor keeps its silo's residual; a resumed run
    starts with zero residuals (docs/compression.md).
    """
    spec, link = state.spec, state.link
    if spec.privacy.secure_aggregation:
        link.each("keypair", {s: () for s in silos}, name="keypair", keep="keypair")
        publics = link.each(
            "public-key", {s: (link.ref(s, "keypair"),) for s in silos}, name="public"
        )
        state.public_keys.update(publics)
    chosen = spec.compression
    if chosen.kind != "none":
        link.each(
            "compressor",
            {s: (chosen.kind, chosen.error_feedback) for s in silos},
            name="compressor",
            keep="compressor",
        )


def _setup_privacy(state: AveragedRun, server: dict[str, Any]) -> None:
    """Make the silos' keys and compressors, the DP clip and the server optimiser."""
    spec = state.spec
    _setup_silo_state(state, [s.name for s in spec.silos])
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
            link=opened.link,
            preparation=opened.preparation,
            params=params,
            features=opened.features,
            classes=opened.classes,
            start_round=start_round,
        )
        try:
            _setup_privacy(state, server)
        except BaseException:
            state.close()
            raise
        return state
