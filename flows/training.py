"""The parent flow: attach to the silos, check their data, run the rounds."""

from __future__ import annotations

import json
from importlib.metadata import version
from typing import Any, cast

import numpy as np
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from fedsilo.cluster import SiloCluster, spec_cluster
from fedsilo.connectors.schema import categorical_features, check_schemas
from fedsilo.errors import CheckpointError
from fedsilo.flows.reporting import finish_run
from fedsilo.flows.round import federated_round
from fedsilo.flows.round_loop import run_rounds
from fedsilo.spec import FederationSpec
from fedsilo.tasks import run_state, silo_rpc, sklearn_models
from fedsilo.tasks.checkpoint_store import CheckpointStore, new_run_id
from fedsilo.tasks.compression import SiloCompressor
from fedsilo.tasks.encoding import Encoding, global_categories
from fedsilo.tasks.privacy.accountant import would_exceed
from fedsilo.tasks.round_tasks import wait_silo
from fedsilo.tasks.sampling import sample_silos
from fedsilo.tasks.server_optimizers import make_server_optimizer
from fedsilo.tasks.silo import (
    FitConfig,
    SiloSource,
    load_silo,
    prepare_silo,
    row_count,
    silo_moments,
    silo_schema,
)
from fedsilo.tasks.silo_privacy import STATE_TENSORS, make_keypair, public_key
from fedsilo.tasks.silo_stats import silo_categories
from fedsilo.tasks.statistics import standard_scaler


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
            SiloSource(
                s.name, s.train, s.test, s.test_fraction, dict(s.storage_options)
            ),
            spec.target,
            spec.seed,
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


@task(name="open-silos", cache_policy=NO_CACHE, persist_result=False)
def open_silos(
    spec: FederationSpec,
    cluster: SiloCluster,
    run_id: str,
    known_classes: tuple[Any, ...] = (),
) -> dict[str, Any]:
    """Read every silo's rows on its worker, check schemas, prepare arrays.

    ``known_classes`` are labels the model must know even if no silo holds
    them (``fedsilo compare`` trains a one-class silo alone with them).

    Returns the futures of the prepared, silo-resident arrays and what the
    coordinator learned: feature names, classes and the global scaler.
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
                    name,
                    silo_moments,
                    future,
                    numeric,
                    key=f"moments-{name}-{run_id}",
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
    # Every worker serves the round's fit and scoring requests (tasks/silo_rpc.py).
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
    return {
        "prepared": prepared,
        "features": features if encoding is None else encoding.feature_names(),
        "classes": classes,
        "scaler": None if mean is None else {"mean": mean, "scale": scale},
        "schemas": schemas,
        "encoding": encoding,
    }


def _encoding(
    spec: FederationSpec,
    cluster: SiloCluster,
    data: dict[str, Any],
    schemas: dict[str, Any],
    features: list[str],
    run_id: str,
) -> Encoding | None:
    """Agree on one-hot categories from the silos' lists (tasks/encoding.py)."""
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
    from fedsilo.errors import SiloDataError

    raise SiloDataError(
        spec.silos[0].name,
        f"all silos together hold only the label(s) {list(classes)}; "
        "classification needs at least two",
        column=spec.target,
    )


def _metadata(
    spec: FederationSpec,
    features: list[str],
    classes: tuple[Any, ...],
    scaler: dict[str, np.ndarray] | None,
    encoding: Encoding | None = None,
) -> dict[str, str]:
    model = {
        "kind": spec.model.kind,
        "params": spec.model.params,
        "features": features,
        "classes": [c if isinstance(c, str) else float(c) for c in classes],
        "scaler": None
        if scaler is None
        else {k: v.tolist() for k, v in scaler.items()},
    }
    if encoding is not None:
        model["encoding"] = encoding.to_json()
    return {
        "fedsilo.spec": spec.public_json(),
        "fedsilo.spec_hash": spec.spec_hash(),
        "fedsilo.model": json.dumps(model),
        "fedsilo.sklearn_version": version("scikit-learn"),
    }


def setup_compression(state: run_state.RunState) -> None:
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


def setup_privacy(state: run_state.RunState, server: dict[str, Any]) -> None:
    """Make silo key pairs, the DP clip and the server optimiser (or restore them)."""
    spec = state.spec
    if spec.privacy.secure_aggregation:
        for silo in spec.silos:
            state.keypairs[silo.name] = state.cluster.submit(
                silo.name,
                make_keypair,
                key=f"keypair-{silo.name}-{state.run_id}",
            )
        publics = {
            name: state.cluster.submit(
                name,
                public_key,
                future,
                key=f"public-{name}-{state.run_id}",
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


def budget_stop(state: run_state.RunState, round_number: int) -> str | None:
    """Return why the run must stop before ``round_number`` (DP budget), if it must."""
    dp = state.spec.privacy.dp
    if dp is None or dp.epsilon_budget is None:
        return None
    n = len(state.spec.silos)
    strategy = state.spec.strategy
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


@flow(
    name="federated-training",
    flow_run_name="{spec.name}",
    persist_result=False,
)
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
    if spec.model.kind != "xgboost":
        sklearn_models.check_params(spec.model.kind, spec.model.params)
    with spec_cluster(spec) as cluster:
        if spec.model.kind == "xgboost":
            from fedsilo.flows.boosting import train_boosted

            return train_boosted(spec, cluster, run_id, resume)
        opened = open_silos(spec, cluster, run_id, tuple(known_classes))
        features, classes = opened["features"], opened["classes"]
        store = CheckpointStore(
            spec.checkpoints,
            spec.name,
            run_id,
            storage_options=spec.storage_options,
            metadata=_metadata(
                spec, features, classes, opened["scaler"], opened["encoding"]
            ),
        )
        config = FitConfig(
            kind=spec.model.kind,
            model_params=dict(spec.model.params),
            task=spec.task,
            classes=classes,
            n_features=len(features),
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
                n_features=len(features),
                classes=classes,
                seed=spec.seed,
            )
        state = run_state.RunState(
            spec=spec,
            run_id=run_id,
            cluster=cluster,
            store=store,
            config=config,
            prepared=opened["prepared"],
            params=params,
        )
        setup_privacy(state, server)
        setup_compression(state)
        run_state.register(state)
        try:
            stopped = run_rounds(
                state,
                range(start_round, spec.rounds + 1),
                federated_round,
                budget_stop,
                logger,
            )
        finally:
            run_state.forget(run_id)
            opened["prepared"].clear()
            state.keypairs.clear()
            state.compressors.clear()
    return {
        **finish_run(spec.name, run_id, store.run_path, state.history, logger),
        "stopped": stopped,
        "epsilon": state.epsilon,
        "features": features,
        "classes": list(classes),
    }
