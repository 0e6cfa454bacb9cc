"""Federated gradient boosting (``model.kind: xgboost``) as Prefect flows on Dask.

``train_boosted`` runs inside the parent ``federated-training`` flow once the
cluster is attached. It opens the silos (rows read, checked and binned at each
silo, once), then runs one ``federated-boosting-round`` flow per round. A round
grows ``model.trees_per_round`` trees, level by level, through Dask calls to the
silo-resident state (``tasks.gbdt_federation``), scores the model at every silo
and checkpoints model.json (XGBoost JSON), model.parquet (the trees as a table)
and metrics.parquet. A resumed run reads model.json of the last complete round
and replays its trees at each silo, so it ends with the same model.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from importlib.metadata import version
from typing import Any, cast

import numpy as np
import pyarrow as pa
from distributed import Future
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

from fedsilo.cluster import SiloCluster
from fedsilo.connectors.schema import check_schemas
from fedsilo.errors import CheckpointError, SiloDataError, SpecError
from fedsilo.flows.reporting import publish_round, publish_summary, round_table
from fedsilo.flows.round import format_metrics
from fedsilo.spec import FederationSpec
from fedsilo.tasks import gbdt_silo, run_state
from fedsilo.tasks.checkpoint_store import CheckpointStore, new_run_id
from fedsilo.tasks.gbdt.learner import RoundResult as TreeResult
from fedsilo.tasks.gbdt.learner import train
from fedsilo.tasks.gbdt.model import GBDTModel
from fedsilo.tasks.gbdt.objective import Intercept
from fedsilo.tasks.gbdt.params import GBDTParams
from fedsilo.tasks.gbdt.sketch import cut_points, merge_sketches, sketch_size
from fedsilo.tasks.gbdt.xgb_export import dumps, model_from_json, trees_dataframe
from fedsilo.tasks.gbdt_federation import (
    DaskFederation,
    SiloCalls,
    Traffic,
    default_transport,
)
from fedsilo.tasks.messages import Evaluation, LocalUpdate, SiloSchema
from fedsilo.tasks.metrics import global_metrics
from fedsilo.tasks.round_tasks import metric_rows
from fedsilo.tasks.silo import SiloSource, load_silo, silo_schema


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
    history: list[run_state.RoundResult] = dataclasses.field(default_factory=list)
    tree_losses: list[TreeResult] = dataclasses.field(default_factory=list)
    last_updates: list[LocalUpdate] = dataclasses.field(default_factory=list)
    grow_seconds: float = 0.0


_RUNS: dict[str, BoostingRun] = {}
_LOCK = threading.Lock()


def get_run(run_id: str) -> BoostingRun:
    """Return the state of a running boosting federation."""
    with _LOCK:
        return _RUNS[run_id]


def boosting_params(spec: FederationSpec) -> GBDTParams:
    """Return the spec's GBDT parameters, one Prefect round's trees per call.

    Raises SpecError when ``num_boost_round`` is given and disagrees with
    ``rounds * trees_per_round``, or when the strategy samples silos (every
    tree needs the histograms of every silo).
    """
    params = GBDTParams.from_dict(spec.model.params)
    total = spec.rounds * spec.model.trees_per_round
    if "num_boost_round" in spec.model.params and params.num_boost_round != total:
        raise SpecError(
            f"model.params.num_boost_round={params.num_boost_round} disagrees with "
            f"rounds x model.trees_per_round = {total}; leave it out"
        )
    if spec.strategy.fraction != 1.0:
        raise SpecError(
            "strategy.fraction must be 1.0 for model kind 'xgboost': every tree "
            "is grown from the histograms of every silo"
        )
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


@task(name="open-silos", cache_policy=NO_CACHE, persist_result=False)
def open_boosting_silos(
    spec: FederationSpec, calls: SiloCalls, params: GBDTParams, run_id: str
) -> dict[str, Any]:
    """Read and check every silo's rows on its worker; keep them there, validated.

    Returns the futures of the validated rows and the shared feature names.
    """
    data = {
        s.name: calls.submit(
            s.name,
            load_silo,
            SiloSource(
                s.name, s.train, s.test, s.test_fraction, dict(s.storage_options)
            ),
            spec.target,
            spec.seed,
            name="silo-data",
        )
        for s in spec.silos
    }
    try:
        schemas = calls.gather(
            {
                silo: calls.submit(
                    silo, silo_schema, future, spec.target, spec.task, name="schema"
                )
                for silo, future in data.items()
            }
        )
        features = check_schemas(
            list(schemas.values()), target=spec.target, task=spec.task
        )
        _check_labels(spec, params, schemas)
        setup = gbdt_silo.BoostingSetup(
            features=tuple(features),
            target=spec.target,
            task=spec.task,
            objective=params.objective,
            num_class=params.num_class,
        )
        rows = {
            silo: calls.submit(silo, gbdt_silo.prepare_rows, f, setup, name="rows")
            for silo, f in data.items()
        }
        calls.gather(
            {
                silo: calls.submit(silo, gbdt_silo.n_rows, future, name="rows-check")
                for silo, future in rows.items()
            }
        )
    finally:
        data.clear()  # the raw tables are not needed any more at the silos
    return {"rows": rows, "features": features, "setup": setup, "schemas": schemas}


@task(name="bin-silos", cache_policy=NO_CACHE, persist_result=False)
def bin_silos(
    calls: SiloCalls,
    rows: dict[str, Future],
    setup: gbdt_silo.BoostingSetup,
    params: GBDTParams,
    resumed: GBDTModel | None,
) -> dict[str, Any]:
    """Agree on cut points and intercept, then bin every silo's rows once.

    A fresh run merges the silos' quantile summaries into cut points; a resumed
    run takes them from its checkpoint and replays its trees at every silo.
    """
    size = sketch_size(params.max_bin)
    sketches = calls.each(
        "gbdt-sketch",
        gbdt_silo.sketch_rows,
        {s: (f, setup, None if resumed else size) for s, f in rows.items()},
    )
    objective = setup.make_objective()
    stats = np.sum([s.label_stats for s in sketches.values()], axis=0)
    intercept = objective.intercept(stats, params.base_score)
    if resumed is None:
        merged = merge_sketches([s.summaries for s in sketches.values()], size)
        cuts = cut_points(merged, params.max_bin)
        trees: tuple[Any, ...] = ()
        info: tuple[int, ...] = ()
    else:
        if resumed.base_score != intercept.base_score:
            raise CheckpointError(
                "the silos' labels changed since the run began (base_score "
                f"{intercept.base_score} != {resumed.base_score} in the checkpoint)"
            )
        cuts = list(resumed.cuts)
        trees, info = resumed.trees, resumed.tree_info
    calls.open(
        gbdt_silo.open_silo,
        {s: (f, setup, cuts, intercept, trees, info) for s, f in rows.items()},
    )
    workers = calls.call_all("worker")
    return {
        "cuts": cuts,
        "intercept": intercept,
        "n_rows": objective.n_rows(stats),
        "label_bound": max(s.label_bound for s in sketches.values()),
        "workers": workers,
    }


@task(
    name="grow-trees",
    task_run_name="grow-trees-r{round_number:04d}",
    cache_policy=NO_CACHE,
    persist_result=False,
)
def grow_trees(run_id: str, round_number: int) -> GBDTModel:
    """Grow the round's trees, one Dask exchange per tree level."""
    state = get_run(run_id)
    losses: list[TreeResult] = []
    state.federation.trees_left = state.params.num_boost_round
    started = time.perf_counter()
    model = train(
        state.federation,
        state.cuts,
        state.params,
        state.intercept,
        n_rows=state.n_rows,
        label_bound=state.label_bound,
        feature_names=state.setup.features,
        init_model=state.model,
        callback=lambda _model, result: losses.append(result),
    )
    state.tree_losses.extend(losses)
    state.grow_seconds += time.perf_counter() - started
    return model


@task(
    name="evaluate-local",
    task_run_name="evaluate-{silo}-r{round_number:04d}",
    cache_policy=NO_CACHE,
    persist_result=False,
)
def evaluate_silo(run_id: str, silo: str, round_number: int) -> list[Evaluation]:
    """Score the model at one silo on its train and test rows (metrics, sums)."""
    state = get_run(run_id)
    result = state.calls.call("evaluate", {silo: (state.setup, round_number)})[silo]
    assert isinstance(result, list)
    return result


@task(
    name="checkpoint",
    task_run_name="checkpoint-r{round_number:04d}",
    cache_policy=NO_CACHE,
    persist_result=False,
)
def checkpoint_model(
    run_id: str,
    round_number: int,
    model: GBDTModel,
    evaluations: list[Evaluation],
    updates: list[LocalUpdate],
) -> str:
    """Write model.json, model.parquet (trees table) and metrics.parquet."""
    state = get_run(run_id)
    rows = metric_rows(evaluations, updates, state.spec.task)
    table = pa.Table.from_pandas(trees_dataframe(model), preserve_index=False)
    return state.store.write_round(
        round_number, rows, model_json=dumps(model), model_table=table
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


@flow(
    name="federated-boosting-round",
    flow_run_name="round-{round_number:04d}",
    persist_result=False,
    validate_parameters=False,
)
def federated_boosting_round(run_id: str, round_number: int) -> run_state.RoundResult:
    """Grow trees_per_round trees, score them at every silo, checkpoint."""
    started = time.perf_counter()
    state = get_run(run_id)
    silos = list(state.calls.states)
    before = {s: dataclasses.replace(t) for s, t in state.calls.traffic.items()}
    model = grow_trees(run_id, round_number)
    grown = time.perf_counter() - started
    state.model = model
    futures = [evaluate_silo.submit(run_id, silo, round_number) for silo in silos]
    evaluations = [e for future in futures for e in future.result()]
    updates = _updates(state, round_number, before, grown, evaluations)
    state.last_updates = updates
    path = checkpoint_model(run_id, round_number, model, evaluations, updates)
    test_metrics = global_metrics(
        [e for e in evaluations if e.split == "test"], state.spec.task
    )
    publish_round(
        state.spec.name, round_number, round_table(evaluations, updates, test_metrics)
    )
    result = run_state.RoundResult(
        round=round_number,
        selected=tuple(silos),
        silos=tuple(silos),
        absent={},  # boosting needs every silo: a missing one fails the round
        metrics=test_metrics,
        seconds=time.perf_counter() - started,
        fit_workers=dict(state.workers),
        eval_workers={e.silo: e.worker for e in evaluations},
        bytes_down=sum(u.bytes_down for u in updates),
        bytes_up=sum(u.bytes_up for u in updates),
        checkpoint=path,
    )
    get_run_logger().info(
        "round %d: %d trees, test %s, %.2fs",
        round_number,
        len(model.trees),
        format_metrics(test_metrics),
        result.seconds,
    )
    return result


def train_boosted(
    spec: FederationSpec,
    cluster: SiloCluster,
    run_id: str | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Run a boosting federation on an attached cluster (called by the parent flow)."""
    logger = get_run_logger()
    run_id = run_id or new_run_id()
    params = boosting_params(spec)
    calls = SiloCalls(
        cluster.client,
        dict(cluster.workers),
        run_id,
        spec.cluster.silo_timeout,
        transport=default_transport(),
    )
    rows: dict[str, Future] = {}
    try:
        opened = open_boosting_silos(spec, calls, params, run_id)
        rows, features = opened["rows"], opened["features"]
        store = CheckpointStore(
            spec.checkpoints,
            spec.name,
            run_id,
            storage_options=spec.storage_options,
            metadata=_metadata(spec, features),
        )
        resumed, start_round = _resume_point(store, run_id, resume, features)
        if resumed is not None:
            logger.info("resuming run %s after round %d", run_id, start_round - 1)
        binned = bin_silos(calls, rows, opened["setup"], params, resumed)
        rows.clear()  # binned: the validated float rows are dropped at the silos
        state = BoostingRun(
            spec=spec,
            run_id=run_id,
            params=params,
            setup=opened["setup"],
            store=store,
            calls=calls,
            federation=DaskFederation(calls),
            cuts=binned["cuts"],
            intercept=binned["intercept"],
            n_rows=binned["n_rows"],
            label_bound=binned["label_bound"],
            workers=binned["workers"],
            model=resumed,
        )
        with _LOCK:
            _RUNS[run_id] = state
        try:
            for round_number in range(start_round, spec.rounds + 1):
                # As in flows/training.py: the parent keeps its heartbeat.
                with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
                    result = federated_boosting_round(run_id, round_number)
                state.history.append(result)
                for listener in list(run_state.listeners):
                    # Listeners read ``state.spec`` (and the history); a
                    # BoostingRun has both, like run_state.RunState.
                    listener(result, cast(Any, state))
            silo_seconds = calls.call_all("timings")
        finally:
            with _LOCK:
                _RUNS.pop(run_id, None)
    finally:
        calls.free()  # the silos drop their rows, on success or failure
        rows.clear()
    final = state.history[-1] if state.history else None
    publish_summary(spec.name, run_id, store.run_path, state.history)
    if final is not None:
        logger.info("finished %s: %s", run_id, format_metrics(final.metrics))
    return {
        "run_id": run_id,
        "run_path": store.run_path,
        "rounds": [r.round for r in state.history],
        "final_metrics": final.metrics if final else {},
        "features": features,
        "classes": list(_classes(params)) if spec.task == "classification" else [],
        "trees": len(state.model.trees) if state.model is not None else 0,
        "traffic": {s: dataclasses.asdict(t) for s, t in calls.traffic.items()},
        "exchange_seconds": dict(state.federation.seconds),
        "exchanges": state.federation.exchanges,
        "grow_seconds": state.grow_seconds,
        "silo_seconds": silo_seconds,
        "transport": calls.transport,
    }


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
