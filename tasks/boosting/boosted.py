"""Federated gradient boosting (``model.kind: xgboost``) as a model family.

Opening reads, checks and bins every silo's rows at the silo, once. A round
(the engine's ``federated-round`` flow) grows ``model.trees_per_round`` trees,
level by level, through exchanges with the silo-resident state
(``tasks.gbdt_federation``), scores the model at every silo and checkpoints
model.json (XGBoost JSON), trees.parquet (the trees as a table) and
metrics.parquet. A resumed run reads model.json of the last complete round and
replays its trees at each silo, so it ends with the same model.
"""

from __future__ import annotations

import dataclasses
import json
import time
from importlib.metadata import version
from typing import Any, cast

import numpy as np
import pyarrow as pa
from prefect import get_run_logger

from fedsilo.cluster import SiloCluster
from fedsilo.errors import CheckpointError, SiloDataError, SiloFailedError
from fedsilo.gbdt_params import GBDTParams
from fedsilo.spec import FederationSpec
from tasks.boosting import silo_side as gbdt_silo
from tasks.boosting.federation import (
    DaskFederation,
    SecureExchanges,
    SiloCalls,
    Traffic,
)
from tasks.gbdt.learner import Federation, train
from tasks.gbdt.model import GBDTModel
from tasks.gbdt.objective import Intercept
from tasks.gbdt.private_histograms import (
    HistogramDP,
    NoisyFederation,
    gradient_bounds,
    noisy_label_stats,
)
from tasks.gbdt.sketch import cut_points, merge_sketches, sketch_size
from tasks.gbdt.xgb_export import (
    ExportCache,
    dumps,
    model_from_json,
    trees_dataframe,
)
from tasks.prefect_decorators import uncached_task
from tasks.privacy.accountant import gbdt_epsilon
from tasks.privacy.errors import PrivacyBudgetExceededError
from tasks.privacy.secure_random import SecureRandom
from tasks.protocol.messages import Evaluation, LocalUpdate, SiloSchema
from tasks.run_state import (
    MAX_SECURE_ATTEMPTS,
    Opening,
    Personalized,
    RoundOutcome,
    opaque,
)
from tasks.silo.data import load_arguments
from tasks.silo.link import SiloLink
from tasks.silo.schema import check_schemas
from tasks.store.checkpoints import CheckpointStore, MetricRow
from tasks.store.rows import metric_rows


@dataclasses.dataclass(slots=True)
class BoostingRun:
    """A boosting run's coordinator-side state, for the length of the parent flow."""

    spec: FederationSpec
    run_id: str
    params: GBDTParams  # num_boost_round = trees per Prefect round
    setup: gbdt_silo.BoostingSetup
    store: CheckpointStore
    calls: SiloCalls
    federation: DaskFederation
    cuts: list[np.ndarray]
    intercept: Intercept
    n_rows: int
    label_bound: float
    workers: dict[str, str]  # silo -> name of the worker that holds it
    model: GBDTModel | None = None
    start_round: int = 1
    grow_seconds: float = 0.0
    privacy: BoostingPrivacy = dataclasses.field(
        default_factory=lambda: BoostingPrivacy()
    )
    dropped: dict[str, str] = dataclasses.field(default_factory=dict)
    #: Trees already written out: each checkpoint only exports the new ones.
    export: ExportCache = dataclasses.field(default_factory=ExportCache)

    @property
    def learner_federation(self) -> Federation:
        """Return what the learner talks to: the silos, noised under DP."""
        return self.privacy.noisy or self.federation

    # -- the family protocol (tasks.run_state.FamilyRun) ------------------------
    def budget_stop(self, round_number: int) -> str | None:
        """Return why the run must stop before ``round_number`` (DP budget)."""
        return budget_stop(self, round_number)

    def play_round(self, round_number: int) -> RoundOutcome:
        """Grow the round's trees, score them at every silo, checkpoint."""
        return play_round(self, round_number)

    def personalize(self, epochs: int, round_number: int) -> Personalized:
        """Grow ``epochs`` extra trees at each silo alone; return the scores."""
        return personalize_trees(self, epochs, round_number)

    def summary(self) -> dict[str, Any]:
        """Return the boosting run's part of the summary."""
        return boosting_summary(self)

    def close(self) -> None:
        """Free every silo's resident state; never raises."""
        self.calls.free()


@dataclasses.dataclass(slots=True)
class BoostingPrivacy:
    """Secure aggregation roster and DP accounting of a boosting run."""

    roster: dict[str, int] = dataclasses.field(default_factory=dict)  # silo -> index
    public_keys: dict[str, bytes] = dataclasses.field(default_factory=dict)
    noisy: NoisyFederation | None = None
    base_release: int = 0  # 1 if the intercept was a noised release
    epsilon: float | None = None

    @property
    def releases(self) -> int:
        """Return the Gaussian mechanisms run so far (histograms and intercept)."""
        done = self.noisy.releases if self.noisy is not None else 0
        return done + self.base_release


def boosting_params(spec: FederationSpec) -> GBDTParams:
    """Return the spec's GBDT parameters, one Prefect round's trees per call.

    The spec has checked them, and that ``num_boost_round`` (if given) equals
    ``rounds * trees_per_round`` (``FederationSpec._check_boosting_rounds``).
    """
    params = GBDTParams.from_dict(spec.model.params)
    return dataclasses.replace(params, num_boost_round=spec.model.trees_per_round)


def _classes(params: GBDTParams) -> tuple[int, ...]:
    return tuple(range(params.num_class if params.num_class >= 2 else 2))


def _check_labels(
    spec: FederationSpec, params: GBDTParams, schemas: dict[str, SiloSchema]
) -> None:
    """Refuse class labels outside 0..num_class-1 before any silo bins its rows."""
    if spec.task != "classification":
        return
    k = len(_classes(params))
    for silo, schema in schemas.items():
        for label in schema.labels:
            if isinstance(label, bool):
                continue
            numeric = isinstance(label, int | float)
            if numeric and float(label).is_integer() and 0 <= float(label) < k:
                continue
            raise SiloDataError(
                silo,
                f"label {label!r} is not one of the classes 0..{k - 1} of "
                f"{params.objective}"
                + (" (or raise model.params.num_class)" if k > 2 else ""),
                column=spec.target,
            )


def _metadata(spec: FederationSpec, features: list[str]) -> dict[str, str]:
    params = GBDTParams.from_dict(spec.model.params)
    model = {
        "kind": spec.model.kind,
        "params": spec.model.params,
        "trees_per_round": spec.model.trees_per_round,
        "features": features,
        "classes": [float(c) for c in _classes(params)]
        if spec.task == "classification"
        else [],
        "scaler": None,
    }
    return {
        "fedsilo.spec": spec.public_json(),
        "fedsilo.spec_hash": spec.spec_hash(),
        "fedsilo.model": json.dumps(model),
        "fedsilo.xgboost_version": version("xgboost"),
    }


@uncached_task("open-silos")
def open_boosting_silos(
    spec: FederationSpec, calls: SiloCalls, params: GBDTParams
) -> dict[str, Any]:
    """Read and check every silo's rows on its worker; keep them there, validated.

    Each silo's runtime holds its validated rows (slot ``gbdt-rows``); returns
    the shared feature names, the setup and the schemas.
    """
    link = calls.link
    link.each(
        "load",
        {s.name: load_arguments(spec, s) for s in spec.silos},
        name="silo-data",
        keep="rows",
    )
    schemas = calls.each(
        "schema",
        "schema",
        {
            s.name: (link.ref(s.name, "rows"), spec.target, spec.task)
            for s in spec.silos
        },
    )
    features = check_schemas(list(schemas.values()), target=spec.target, task=spec.task)
    _check_labels(spec, params, schemas)
    dp = spec.privacy.dp
    setup = gbdt_silo.BoostingSetup(
        features=tuple(features),
        target=spec.target,
        task=spec.task,
        objective=params.objective,
        num_class=params.num_class,
        gradient_clip=None
        if dp is None
        else gradient_bounds(params.objective, dp.clip),
    )
    link.each(
        "gbdt-rows",
        {s: (link.ref(s, "rows"), setup) for s in schemas},
        name="rows",
        keep="gbdt-rows",
    )
    link.release([link.ref(s, "rows") for s in schemas])  # the raw tables
    calls.each(
        "rows-check",
        "gbdt-row-count",
        {s: (link.ref(s, "gbdt-rows"),) for s in schemas},
    )
    return {"features": features, "setup": setup, "schemas": schemas}


@uncached_task("bin-silos")
def bin_silos(
    calls: SiloCalls,
    setup: gbdt_silo.BoostingSetup,
    params: GBDTParams,
    resumed: GBDTModel | None,
    secure: bool = False,
    noise_multiplier: float | None = None,
) -> dict[str, Any]:
    """Agree on cut points and intercept, then bin every silo's rows once.

    A fresh run merges the silos' quantile summaries into cut points; a resumed
    run takes them from its checkpoint and replays its trees at every silo.
    With ``secure`` each silo's state takes the key pair its runtime holds;
    with ``noise_multiplier`` (DP) a ``base_score`` computed from the labels
    comes from noised label sums.
    """
    size = sketch_size(params.max_bin)
    link = calls.link
    silos = list(calls.workers)
    sketches = calls.each(
        "gbdt-sketch",
        "gbdt-sketch",
        {
            s: (link.ref(s, "gbdt-rows"), setup, None if resumed else size)
            for s in silos
        },
    )
    objective = setup.make_objective()
    stats = np.sum([s.label_stats for s in sketches.values()], axis=0)
    n_rows = objective.n_rows(stats)
    base_release = int(noise_multiplier is not None and params.base_score is None)
    if base_release and resumed is None:
        # The OS's CSPRNG: nothing of the draw is kept (tasks/privacy/secure_random.py).
        stats = noisy_label_stats(stats, cast(float, noise_multiplier), SecureRandom())
    intercept = objective.intercept(stats, params.base_score)
    if resumed is None:
        merged = merge_sketches([s.summaries for s in sketches.values()], size)
        cuts = cut_points(merged, params.max_bin)
        trees: tuple[Any, ...] = ()
        info: tuple[int, ...] = ()
    else:
        if base_release:  # the noised intercept is in the checkpoint
            intercept = objective.intercept(stats, float(resumed.base_score))
        if resumed.base_score != intercept.base_score:
            raise CheckpointError(
                "the silos' labels changed since the run began (base_score "
                f"{intercept.base_score} != {resumed.base_score} in the checkpoint)"
            )
        cuts = list(resumed.cuts)
        trees, info = resumed.trees, resumed.tree_info
    calls.open(
        {
            s: (
                link.ref(s, "gbdt-rows"),
                setup,
                cuts,
                intercept,
                trees,
                info,
                link.ref(s, "keypair") if secure else None,
            )
            for s in silos
        },
    )
    # Binned: the validated float rows (and the key pairs, now in the states) go.
    link.release(
        [link.ref(s, slot) for s in silos for slot in ("gbdt-rows", "keypair")]
    )
    workers = {s: link.cluster.worker_name(s) for s in silos}
    return {
        "cuts": cuts,
        "intercept": intercept,
        "n_rows": n_rows,
        "label_bound": max(s.label_bound for s in sketches.values()),
        "workers": workers,
        "base_release": base_release,
    }


@uncached_task("secure-setup")
def make_silo_keys(calls: SiloCalls) -> dict[str, bytes]:
    """Make every silo's X25519 key pair in its runtime; gather the public halves."""
    link = calls.link
    link.each("keypair", {s: () for s in calls.workers}, name="keypair", keep="keypair")
    return link.each(
        "public-key",
        {s: (link.ref(s, "keypair"),) for s in calls.workers},
        name="public-key",
    )


def join_roster(state: BoostingRun) -> None:
    """Tell every silo still taking part its index and its peers' public keys."""
    privacy = state.privacy
    silos = list(state.calls.silos)
    privacy.roster = {silo: i for i, silo in enumerate(silos)}
    everyone = {privacy.roster[s]: privacy.public_keys[s] for s in silos}
    state.calls.call(
        "join_secure",
        {
            s: (i, {j: k for j, k in everyone.items() if j != i})
            for s, i in privacy.roster.items()
        },
    )


@uncached_task("grow-trees", "grow-trees-r{round_number:04d}")
def grow_trees(state: BoostingRun, round_number: int) -> GBDTModel:
    """Grow the round's trees, one Dask exchange per tree level.

    Under secure aggregation a silo lost mid-round aborts the attempt: the
    other silos undo the round's trees, mask again among themselves (a new
    attempt number, so fresh masks) and the round is grown again without it,
    at most ``MAX_SECURE_ATTEMPTS`` times and while ``strategy.min_silos``
    (and at least 2) silos remain.
    """
    secure = state.federation.secure
    attempts = MAX_SECURE_ATTEMPTS if secure is not None else 1
    started = time.perf_counter()
    for attempt in range(attempts):
        check_privacy_budget(state, round_number)
        state.federation.trees_left = state.params.num_boost_round
        try:
            if secure is not None:
                secure.begin(round_number, attempt)
                state.calls.call_all("save_margins")
            model = train(
                state.learner_federation,
                state.cuts,
                state.params,
                state.intercept,
                n_rows=state.n_rows,
                label_bound=state.label_bound,
                feature_names=state.setup.features,
                init_model=state.model,
            )
        except SiloFailedError as error:
            if secure is None or attempt + 1 == attempts:
                raise
            drop_silo(state, error, round_number)
            continue
        break
    state.grow_seconds += time.perf_counter() - started
    dp = state.spec.privacy.dp
    if dp is not None:
        state.privacy.epsilon = gbdt_epsilon(
            dp.noise_multiplier, state.privacy.releases, dp.delta
        )
    return model


def drop_silo(state: BoostingRun, error: SiloFailedError, round_number: int) -> None:
    """Leave out a silo that failed mid-round; undo the round at the others."""
    state.federation.abandon()
    state.dropped[error.silo] = "failed"
    state.calls.drop(error.silo)
    remaining = list(state.calls.silos)
    needed = max(state.spec.strategy.min_silos, 2)
    if len(remaining) < needed:
        raise SiloFailedError(
            error.silo,
            f"{error.detail}; round {round_number} has "
            f"{len(remaining)} silo(s) left, secure aggregation needs {needed} "
            f"(strategy.min_silos={state.spec.strategy.min_silos})",
        ) from error
    state.calls.call_all("restore_margins")
    join_roster(state)
    get_run_logger().warning(
        "round %d: %s; trees grown again without it, masked among %s",
        round_number,
        error,
        remaining,
    )


def check_privacy_budget(state: BoostingRun, round_number: int) -> None:
    """Raise if growing the round's trees could exceed ``privacy.dp.epsilon_budget``."""
    reason = budget_stop(state, round_number)
    if reason is not None:
        dp = state.spec.privacy.dp
        assert dp is not None and dp.epsilon_budget is not None
        raise PrivacyBudgetExceededError(
            worst_epsilon(state), dp.epsilon_budget, round_number
        )


def worst_epsilon(state: BoostingRun) -> float:
    """Return the epsilon after one more round of trees growing to full depth."""
    dp = state.spec.privacy.dp
    if dp is None:
        return 0.0
    per_round = state.params.num_boost_round * state.params.tree.max_depth
    return gbdt_epsilon(
        dp.noise_multiplier, state.privacy.releases + per_round, dp.delta
    )


def budget_stop(state: BoostingRun, round_number: int) -> str | None:
    """Return why the run must stop before ``round_number`` (DP budget), if so.

    Every round of ``trees_per_round`` trees is counted as ``max_depth``
    histogram releases per tree (one per level, fewer if a tree stops early).
    """
    dp = state.spec.privacy.dp
    if dp is None or dp.epsilon_budget is None:
        return None
    if worst_epsilon(state) <= dp.epsilon_budget:
        return None
    return (
        f"stopped before round {round_number}: it would spend more than the "
        f"privacy budget epsilon={dp.epsilon_budget:g} (delta={dp.delta:g})"
    )


@uncached_task("evaluate-local", "evaluate-{silo}-r{round_number:04d}")
def evaluate_silo(state: BoostingRun, silo: str, round_number: int) -> list[Evaluation]:
    """Score the model at one silo on its train and test rows (metrics, sums)."""
    result = state.calls.call("evaluate", {silo: (state.setup, round_number)})[silo]
    assert isinstance(result, list)
    return result


@uncached_task("checkpoint", "checkpoint-r{round_number:04d}")
def checkpoint_model(
    state: BoostingRun,
    round_number: int,
    model: GBDTModel,
    evaluations: list[Evaluation],
    updates: list[LocalUpdate],
) -> str:
    """Write model.json, trees.parquet (trees table) and metrics.parquet."""
    rows = metric_rows(evaluations, updates, state.spec.task, absent=state.dropped)
    dp = state.spec.privacy.dp
    if dp is not None and state.privacy.epsilon is not None:
        rows += [
            MetricRow("global", "train", "epsilon", state.privacy.epsilon, 0),
            MetricRow("global", "train", "delta", dp.delta, 0),
            MetricRow(
                "global", "train", "dp_releases", float(state.privacy.releases), 0
            ),
        ]
    frame = trees_dataframe(model, state.export)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    return state.store.write_round(
        round_number, rows, model_json=dumps(model, state.export), model_table=table
    )


def _updates(
    state: BoostingRun,
    round_number: int,
    before: dict[str, Traffic],
    seconds: float,
    evaluations: list[Evaluation],
) -> list[LocalUpdate]:
    """Per silo traffic of the round, as the updates the reports understand."""
    n_train = {e.silo: e.n_samples for e in evaluations if e.split == "train"}
    out = []
    for silo, now in state.calls.traffic.items():
        then = before.get(silo, Traffic())
        out.append(
            LocalUpdate(
                silo=silo,
                round=round_number,
                worker=state.workers[silo],
                params={},
                n_samples=n_train.get(silo, 0),
                seconds=seconds,
                bytes_down=now.down - then.down,
                bytes_up=now.up - then.up,
            )
        )
    return out


def play_round(state: BoostingRun, round_number: int) -> RoundOutcome:
    """Grow trees_per_round trees, score them at every silo, checkpoint."""
    started = time.perf_counter()
    before = {s: dataclasses.replace(t) for s, t in state.calls.traffic.items()}
    dropped_before = set(state.dropped)
    model = grow_trees(opaque(state), round_number)
    silos = list(state.calls.silos)  # a silo lost mid-round is left out
    absent = {s: k for s, k in state.dropped.items() if s not in dropped_before}
    grown = time.perf_counter() - started
    state.model = model
    futures = [
        evaluate_silo.submit(opaque(state), silo, round_number) for silo in silos
    ]
    evaluations = [e for future in futures for e in future.result()]
    updates = _updates(state, round_number, before, grown, evaluations)
    path = checkpoint_model(
        opaque(state), round_number, model, opaque(evaluations), opaque(updates)
    )
    return RoundOutcome(
        selected=tuple(silos),
        silos=tuple(silos),
        evaluations=evaluations,
        updates=updates,
        checkpoint=path,
        fit_workers=dict(state.workers),
        note=f"{len(model.trees)} trees",
        # Boosting needs every silo: a missing one fails the round, except
        # under secure aggregation, where it is grown again without it.
        absent=absent,
    )


def open_boosting(
    spec: FederationSpec, cluster: SiloCluster, run_id: str, resume: bool
) -> BoostingRun:
    """Open a boosting run's silos: rows checked and binned at every silo, once."""
    logger = get_run_logger()
    params = boosting_params(spec)
    link = SiloLink(cluster, run_id, spec.cluster.silo_timeout, ("boosting",))
    calls = SiloCalls(link)
    try:
        # The channels first: a silo frees what it holds when its channel closes.
        link.connect([s.name for s in spec.silos])
        opened = open_boosting_silos(spec, calls, params)
        features = opened["features"]
        store = CheckpointStore.of_run(spec, run_id, _metadata(spec, features))
        resumed, start_round = _resume_point(store, run_id, resume, features)
        if resumed is not None:
            logger.info("resuming run %s after round %d", run_id, start_round - 1)
        privacy = spec.privacy
        publics: dict[str, bytes] = {}
        if privacy.secure_aggregation:
            publics = make_silo_keys(calls)
        binned = bin_silos(
            calls,
            opened["setup"],
            params,
            resumed,
            privacy.secure_aggregation,
            privacy.dp.noise_multiplier if privacy.dp else None,
        )
        state = BoostingRun(
            spec=spec,
            run_id=run_id,
            params=params,
            setup=opened["setup"],
            store=store,
            calls=calls,
            federation=DaskFederation(
                calls,
                secure=SecureExchanges(run_id) if privacy.secure_aggregation else None,
            ),
            cuts=binned["cuts"],
            intercept=binned["intercept"],
            n_rows=binned["n_rows"],
            label_bound=binned["label_bound"],
            workers=binned["workers"],
            model=resumed,
            start_round=start_round,
        )
        setup_boosting_privacy(state, publics, binned["base_release"], start_round)
    except BaseException:
        calls.free()  # the silos drop their rows
        raise
    return state


def personalize_trees(
    state: BoostingRun, epochs: int, round_number: int
) -> Personalized:
    """Grow ``epochs`` extra trees from each silo's histograms alone; score them."""
    from tasks.gbdt.learner import train as grow

    calls = state.calls
    params = dataclasses.replace(state.params, num_boost_round=epochs)
    evaluations: list[Evaluation] = []
    traffic: dict[str, tuple[int, int]] = {}
    for silo in list(calls.silos):
        # The run's channel to that worker serves any of its silos.
        alone = SiloCalls(calls.link, [silo])
        grow(
            DaskFederation(alone, trees_left=epochs),
            state.cuts,
            params,
            state.intercept,
            n_rows=state.n_rows,
            label_bound=state.label_bound,
            feature_names=state.setup.features,
            init_model=state.model,
        )
        scored = alone.call("evaluate", {silo: (state.setup, round_number)})
        evaluations.extend(scored[silo])
        used = alone.traffic.get(silo)
        traffic[silo] = (used.up, used.down) if used else (0, 0)
    return Personalized(evaluations, traffic)


def boosting_summary(state: BoostingRun) -> dict[str, Any]:
    """Return the boosting run's part of the summary (asks the silos' timings)."""
    spec = state.spec
    calls = state.calls
    return {
        "features": list(state.setup.features),
        "classes": list(_classes(state.params))
        if spec.task == "classification"
        else [],
        "trees": len(state.model.trees) if state.model is not None else 0,
        "traffic": {s: dataclasses.asdict(t) for s, t in calls.traffic.items()},
        "exchange_seconds": dict(state.federation.seconds),
        "exchanges": state.federation.exchanges,
        "grow_seconds": state.grow_seconds,
        "silo_seconds": calls.call_all("timings"),
        "epsilon": state.privacy.epsilon,
        "dp_releases": state.privacy.releases if spec.privacy.dp else None,
        "dropped": dict(state.dropped),
    }


class BoostedFamily:
    """``model.kind: xgboost``: trees grown from the silos' histograms."""

    @staticmethod
    def check(spec: FederationSpec) -> None:
        """Nothing beyond the spec's own checks of the GBDT parameters."""

    @staticmethod
    def open(opening: Opening) -> BoostingRun:
        """Open the silos (classes come from ``num_class``, not known classes)."""
        return open_boosting(
            opening.spec, opening.cluster, opening.run_id, opening.resume
        )


def setup_boosting_privacy(
    state: BoostingRun, publics: dict[str, bytes], base_release: int, start_round: int
) -> None:
    """Join the silos into the secure roster and set up DP noise and accounting.

    A resumed DP run counts every earlier round as ``trees_per_round *
    max_depth`` releases (an upper bound: trees that stopped early released
    less).
    """
    spec = state.spec
    if spec.privacy.secure_aggregation:
        state.privacy.public_keys = dict(publics)
        join_roster(state)
    dp = spec.privacy.dp
    if dp is None:
        return
    p = state.params
    bounds = gradient_bounds(p.objective, dp.clip)
    earlier = (start_round - 1) * p.num_boost_round * p.tree.max_depth
    state.privacy.noisy = NoisyFederation(
        state.federation,
        HistogramDP(bounds[0], bounds[1], dp.noise_multiplier),
        n_trees=p.n_outputs,
        rng=SecureRandom(),  # the OS's CSPRNG: no seed or state to record
        releases=earlier,
    )
    state.privacy.base_release = base_release
    state.privacy.epsilon = gbdt_epsilon(
        dp.noise_multiplier, state.privacy.releases, dp.delta
    )


def _resume_point(
    store: CheckpointStore, run_id: str, resume: bool, features: list[str]
) -> tuple[GBDTModel | None, int]:
    """Return the model to continue from (None for a fresh run) and the next round."""
    latest = store.latest_complete_round() if resume else None
    if latest is None:
        if store.complete_rounds():
            raise CheckpointError(
                f"run {run_id} already has checkpoints at {store.run_path}; "
                "use resume to continue it"
            )
        return None, 1
    text = store.read_model_json(latest)
    if text is None:
        raise CheckpointError(
            f"{store.round_path(latest)}: no model.json to resume a boosting run from"
        )
    try:
        model = model_from_json(text)
    except (ValueError, KeyError, TypeError) as error:
        raise CheckpointError(
            f"{store.round_path(latest)}/model.json: {error}"
        ) from None
    if model.feature_names is not None and list(model.feature_names) != features:
        raise CheckpointError(
            f"{store.round_path(latest)}: the silos' features differ from the "
            "checkpoint's; resume needs the same data"
        )
    return model, latest + 1
