"""Integration: real Dask workers per silo, a real Prefect API, real Parquet."""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pytest
import yaml

from fedsilo.errors import ClusterError
from fedsilo.spec import FederationSpec, load_spec
from tasks import run_state
from tasks.store.checkpoints import CheckpointStore

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_api")]


def make_spec(data_dir: Path, store: Path, **changes: Any) -> FederationSpec:
    spec = load_spec(data_dir / "federation.yaml")
    data = {**spec.model_dump(), "checkpoints": str(store), **changes}
    return FederationSpec.model_validate(data)


@pytest.fixture
def recorded() -> Iterator[list[tuple[Any, list[Any]]]]:
    """Every round's result and the updates the silos sent in it."""
    seen: list[tuple[Any, list[Any]]] = []

    def listener(result: Any, state: run_state.Run) -> None:
        seen.append((result, list(state.last_updates)))

    with run_state.listening(listener):
        yield seen


def test_embedded_run_pins_silos_and_checkpoints_every_round(
    breast_cancer_dir: Path, tmp_path: Path, recorded: list
) -> None:
    from flows.training import federated_training

    spec = make_spec(breast_cancer_dir, tmp_path / "store", rounds=3)

    summary = federated_training(spec)

    assert summary["rounds"] == [1, 2, 3]
    for result, _ in recorded:
        assert result.fit_workers == {s.name: s.name for s in spec.silos}
        assert result.eval_workers == {s.name: s.name for s in spec.silos}
    store = CheckpointStore(str(tmp_path / "store"), spec.name, summary["run_id"])
    assert store.complete_rounds() == [1, 2, 3]
    assert summary["final_metrics"]["accuracy"] > 0.9


def test_duckdb_reads_every_run_of_a_store(
    breast_cancer_dir: Path, tmp_path: Path, shared_cluster: str
) -> None:
    from flows.training import federated_training

    store = tmp_path / "store"
    spec = make_spec(
        breast_cancer_dir, store, rounds=2, cluster={"address": shared_cluster}
    )
    runs = [federated_training(spec)["run_id"] for _ in range(2)]

    rows = duckdb.sql(
        f"""
        SELECT federation, run, round, silo, metric, value
        FROM read_parquet('{store}/**/metrics.parquet', hive_partitioning = true)
        WHERE silo = 'global' AND split = 'test' ORDER BY round;
        """
    ).df()

    accuracy = rows[rows.metric == "accuracy"]
    assert sorted(set(accuracy.run)) == sorted(runs)
    assert sorted(accuracy["round"].astype(int).tolist()) == [1, 1, 2, 2]
    assert set(accuracy.federation) == {spec.name}
    assert accuracy.value.between(0.0, 1.0).all()


def test_payloads_hold_no_training_rows(
    breast_cancer_dir: Path, tmp_path: Path, shared_cluster: str, recorded: list
) -> None:
    from flows.training import federated_training

    spec = make_spec(
        breast_cancer_dir,
        tmp_path / "store",
        rounds=1,
        cluster={"address": shared_cluster},
    )
    federated_training(spec)

    ((_, updates),) = recorded
    assert len(updates) == 4
    for update in updates:
        silo = next(s for s in spec.silos if s.name == update.silo)
        train = pd.read_parquet(silo.train)
        raw_bytes = train.to_numpy(dtype=np.float64).nbytes
        payload = pickle.dumps(update)
        assert len(payload) < raw_bytes / 10
        assert {name: a.shape for name, a in update.params.items()} == {
            "coef_": (1, 30),
            "intercept_": (1,),
            "t_": (),
        }
        values = np.concatenate([np.ravel(a) for a in update.params.values()])
        features = train.drop(columns=[spec.target]).to_numpy(dtype=np.float64)
        # No feature value of any training row travels in the update.
        assert not np.isin(values, features).any()
        assert update.n_samples == len(train)


def test_resumed_run_ends_with_the_same_model(
    breast_cancer_dir: Path, tmp_path: Path, shared_cluster: str
) -> None:
    from flows.training import federated_training

    store = tmp_path / "store"
    spec = make_spec(
        breast_cancer_dir, store, rounds=4, cluster={"address": shared_cluster}
    )
    straight = federated_training(spec, run_id="straight")
    federated_training(spec.model_copy(update={"rounds": 2}), run_id="resumed")

    federated_training(spec, run_id="resumed", resume=True)

    a = CheckpointStore(str(store), spec.name, straight["run_id"]).read_params(4)
    b = CheckpointStore(str(store), spec.name, "resumed").read_params(4)
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


def test_missing_silo_worker_is_named(
    breast_cancer_dir: Path, tmp_path: Path, shared_cluster: str
) -> None:
    from flows.training import federated_training

    spec = make_spec(
        breast_cancer_dir,
        tmp_path / "store",
        cluster={"address": shared_cluster, "timeout": 2},
    )
    silos = [s.model_dump() for s in spec.silos]
    silos[3]["name"] = "hospital-z"
    spec = FederationSpec.model_validate({**spec.model_dump(), "silos": silos})

    with pytest.raises(ClusterError, match="hospital-z"):
        federated_training(spec)


def test_spec_file_round_trips_through_yaml(breast_cancer_dir: Path) -> None:
    data = yaml.safe_load((breast_cancer_dir / "federation.yaml").read_text())
    spec = load_spec(breast_cancer_dir / "federation.yaml")
    assert [s.name for s in spec.silos] == [s["name"] for s in data["silos"]]
    assert all(Path(s.train).is_file() for s in spec.silos if s.train)


def _pooled(data_dir: Path, split: str) -> pd.DataFrame:
    files = sorted(data_dir.glob(f"silo-*/{split}.parquet"))
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


@pytest.mark.slow
def test_breast_cancer_fedavg_is_within_two_points_of_pooled_logistic(
    breast_cancer_dir: Path, tmp_path: Path, shared_cluster: str
) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from flows.training import federated_training
    from tasks.store.model_io import load_estimator

    spec = make_spec(
        breast_cancer_dir,
        tmp_path / "store",
        rounds=20,
        cluster={"address": shared_cluster},
    )
    train, test = (
        _pooled(breast_cancer_dir, "train"),
        _pooled(breast_cancer_dir, "test"),
    )
    features = [c for c in train.columns if c != "label"]
    pooled = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    pooled.fit(train[features], train["label"])
    pooled_accuracy = pooled.score(test[features], test["label"])

    summary = federated_training(spec)

    federated = summary["final_metrics"]["accuracy"]
    assert federated >= pooled_accuracy - 0.02
    # The checkpoint rebuilds the very model the silos scored.
    store = CheckpointStore(str(tmp_path / "store"), spec.name, summary["run_id"])
    model = load_estimator(store)
    rebuilt = model.score(
        test[model.feature_names_].to_numpy(), test["label"].to_numpy()
    )
    assert rebuilt == pytest.approx(federated, abs=1e-12)


@pytest.mark.parametrize(
    ("dataset", "kind", "metric", "floor"),
    [
        ("wine", "mlp-classifier", "accuracy", 0.8),
        ("wine", "logistic", "accuracy", 0.85),
        ("diabetes", "sgd-regressor", "r2", 0.2),
        ("diabetes", "mlp-regressor", "rmse", None),
    ],
)
def test_every_model_kind_trains_across_silos(
    dataset: str,
    kind: str,
    metric: str,
    floor: float | None,
    tmp_path: Path,
    shared_cluster: str,
) -> None:
    from datasets.writer import write_federation
    from flows.training import federated_training

    spec_path = write_federation(
        dataset,
        n_silos=3,
        partition="iid",
        out=tmp_path / "data",
        rounds=8,
        model_kind=kind,
    )
    local = {"epochs": 5, "batch_size": 16}
    params = (
        {"hidden_layer_sizes": [16], "learning_rate_init": 0.01}
        if "mlp" in kind
        else {}
    )
    spec = make_spec(
        spec_path.parent,
        tmp_path / "store",
        cluster={"address": shared_cluster},
        model={"kind": kind, "params": params},
        local=local,
    )

    summary = federated_training(spec)

    value = summary["final_metrics"][metric]
    assert np.isfinite(value)
    if floor is not None:
        assert value >= floor
    store = CheckpointStore(str(tmp_path / "store"), spec.name, summary["run_id"])
    assert store.complete_rounds() == list(range(1, 9))


def test_fraction_samples_trainers_and_every_silo_scores(
    breast_cancer_dir: Path, tmp_path: Path, shared_cluster: str
) -> None:
    from flows.training import federated_training

    seen: list[Any] = []
    spec = make_spec(
        breast_cancer_dir,
        tmp_path / "store",
        rounds=3,
        cluster={"address": shared_cluster},
        strategy={"kind": "fedavg", "fraction": 0.5, "min_silos": 1},
    )
    with run_state.listening(lambda result, run: seen.append(result)):
        federated_training(spec)

    for result in seen:
        assert len(result.selected) == 2
        assert sorted(result.fit_workers) == sorted(result.selected)
        assert sorted(result.eval_workers) == [s.name for s in spec.silos]
    assert len({r.selected for r in seen}) > 1 or len(seen) == 1


def test_prefect_records_round_flow_runs_and_artifacts(
    breast_cancer_dir: Path, tmp_path: Path, shared_cluster: str
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterKey,
        FlowRunFilter,
        FlowRunFilterName,
        FlowRunFilterParentFlowRunId,
    )

    from flows.reporting import artifact_key
    from flows.training import federated_training

    spec = make_spec(
        breast_cancer_dir,
        tmp_path / "store",
        rounds=2,
        name="artifact-check",
        cluster={"address": shared_cluster},
    )

    federated_training(spec)

    with get_client(sync_client=True) as client:
        # Filter on the server: an unfiltered read returns one page (200 runs),
        # and the session's shared test API holds more than that.
        parents = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                name=FlowRunFilterName(any_=["artifact-check"])
            )
        )
        assert len(parents) == 1 and parents[0].state.is_completed()
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parents[0].id])
            )
        )
        assert sorted(r.name for r in children) == ["round-0001", "round-0002"]
        assert all(r.state.is_completed() for r in children)
        key = artifact_key("artifact-check", "round-metrics")
        tables = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
        )
        assert len(tables) == 2
        assert {t.flow_run_id for t in tables} == {r.id for r in children}
        summary = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[artifact_key("artifact-check", "summary")])
            )
        )
    assert len(summary) == 1
    assert str(tmp_path / "store") in summary[0].data
    table = tables[0].data
    rows = json.loads(table) if isinstance(table, str) else table
    assert {row["silo"] for row in rows} == {
        "silo-0",
        "silo-1",
        "silo-2",
        "silo-3",
        "global",
    }
