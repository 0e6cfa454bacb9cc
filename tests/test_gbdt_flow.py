"""Integration: federated boosting through Prefect and real Dask silo workers."""

from __future__ import annotations

import itertools
import json
import pickle
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb
import yaml

from datasets.writer import write_slices
from fedsilo.errors import SiloDataError, SpecError
from fedsilo.spec import parse_spec
from tasks.gbdt.histogram import NodeHistograms
from tasks.gbdt.learner import federated_cuts, train_in_memory
from tasks.gbdt.objective import make_objective
from tasks.gbdt.xgb_export import dumps, model_from_json, predict
from tasks.store.checkpoints import CheckpointStore

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_api")]

FEATURES = [f"x{j}" for j in range(5)]
OBJECTIVES = {
    "binary:logistic": ("classification", {}),
    "reg:squarederror": ("regression", {}),
    "multi:softprob": ("classification", {"num_class": 3}),
}


def make_data(
    objective: str, n: int = 900, seed: int = 0, decimals: int | None = None
) -> pd.DataFrame:
    """Five features with 10% NaN (x4: 30%); labels of the objective."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, len(FEATURES)))
    if decimals is not None:
        X = np.round(X, decimals)
    z = X[:, 0] - X[:, 1] * np.clip(X[:, 2], -1, 1) + rng.normal(scale=0.5, size=n)
    X[rng.random(X.shape) < 0.1] = np.nan
    X[rng.random(n) < 0.2, 4] = np.nan
    frame = pd.DataFrame(X, columns=FEATURES)
    if objective == "binary:logistic":
        frame["label"] = (z > 0).astype(np.int64)
    elif objective == "multi:softprob":
        frame["label"] = np.digitize(z, [-0.7, 0.7]).astype(np.int64)
    else:
        frame["label"] = 3.0 * z + 1.0
    return frame


def make_spec(
    silos: list[dict[str, str]],
    store: Path,
    address: str,
    objective: str = "binary:logistic",
    rounds: int = 2,
    trees_per_round: int = 2,
    **params: Any,
) -> Any:
    task, extra = OBJECTIVES[objective]
    return parse_spec(
        {
            "name": "gbdt-test",
            "task": task,
            "target": "label",
            "rounds": rounds,
            "model": {
                "kind": "xgboost",
                "trees_per_round": trees_per_round,
                "params": {
                    "objective": objective,
                    "max_depth": 3,
                    "eta": 0.3,
                    "max_bin": 32,
                    **extra,
                    **params,
                },
            },
            "silos": silos,
            "cluster": {"address": address},
            "checkpoints": str(store),
        }
    )


def run(spec: Any, **kwargs: Any) -> dict[str, Any]:
    from flows.training import federated_training

    return federated_training(spec, **kwargs)


def store_of(spec: Any, summary: dict[str, Any]) -> CheckpointStore:
    return CheckpointStore(spec.checkpoints, spec.name, summary["run_id"])


@pytest.fixture
def payloads() -> Iterator[list[tuple[str, str, Any]]]:
    """Every (silo, call, (sent, reply)) of the boosting exchanges."""
    from tasks.boosting import federation as gbdt_federation

    seen: list[tuple[str, str, Any]] = []

    def observe(silo: str, name: str, message: Any) -> None:
        seen.append((silo, name, message))

    gbdt_federation.observers.append(observe)
    yield seen
    gbdt_federation.observers.remove(observe)


@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_every_round_checkpoints_a_model_stock_xgboost_predicts_equally(
    objective: str, tmp_path: Path, shared_cluster: str
) -> None:
    frame = make_data(objective)
    train, test = frame.iloc[:700], frame.iloc[700:]
    silos = write_slices(train, test, 4, tmp_path / "data")
    spec = make_spec(silos, tmp_path / "store", shared_cluster, objective)

    summary = run(spec)

    store = store_of(spec, summary)
    assert store.complete_rounds() == [1, 2]
    X = test[FEATURES]
    for round_number in (1, 2):
        path = Path(store.round_path(round_number))
        ours = model_from_json((path / "model.json").read_text())
        booster = xgb.Booster(model_file=str(path / "model.json"))
        theirs = booster.predict(xgb.DMatrix(X))
        assert np.max(np.abs(theirs - predict(ours, X.to_numpy()))) <= 1e-6
        assert len(ours.trees) == 2 * round_number * max(ours.num_class, 1)
        table = pd.read_parquet(path / "trees.parquet")
        expected = booster.trees_to_dataframe()
        assert list(table.columns) == list(expected.columns)
        pd.testing.assert_frame_equal(
            table[["Tree", "Node", "ID", "Feature", "Yes", "No", "Missing"]],
            expected[["Tree", "Node", "ID", "Feature", "Yes", "No", "Missing"]],
        )
        np.testing.assert_allclose(table.Split, expected.Split, rtol=1e-6)
        np.testing.assert_allclose(table.Cover, expected.Cover, rtol=1e-5)
    estimator = (
        xgb.XGBRegressor() if objective.startswith("reg") else xgb.XGBClassifier()
    )
    estimator.load_model(str(Path(store.round_path(2)) / "model.json"))
    metrics = store.read_metrics(2)
    glob = metrics[(metrics.silo == "global") & (metrics.split == "test")]
    if objective.startswith("reg"):
        np.testing.assert_allclose(estimator.predict(X), theirs, atol=1e-6)
        rmse = np.sqrt(np.mean((theirs - test.label.to_numpy()) ** 2))
        value = glob.set_index("metric").value["rmse"]
        assert value == pytest.approx(rmse, rel=1e-5)
    else:
        proba = estimator.predict_proba(X)
        assert proba.shape == (len(X), max(ours.num_class, 2))
        accuracy = np.mean(proba.argmax(axis=1) == test.label.to_numpy())
        assert glob.set_index("metric").value["accuracy"] == pytest.approx(accuracy)
    # The Dask path grows the very model the in-memory learner grows.
    params = dict(spec.model.params, num_boost_round=4)
    pure = train_in_memory(
        [
            (train.iloc[i][FEATURES], train.iloc[i]["label"].to_numpy(float))
            for i in np.array_split(np.arange(len(train)), 4)
        ],
        params,
    )
    assert dumps(pure) == store.read_model_json(2)


def test_one_two_and_four_silos_grow_the_same_trees(
    tmp_path: Path, shared_cluster: str
) -> None:
    # One decimal: at most ~70 distinct values per column, so every silo's
    # summary is exact and all three federations get the same cut points.
    frame = make_data("binary:logistic", n=1000, decimals=1)
    train, test = frame.iloc[:800], frame.iloc[800:]
    texts = []
    for k in (1, 2, 4):
        silos = write_slices(train, test, k, tmp_path / f"data-{k}")
        spec = make_spec(
            silos, tmp_path / "store", shared_cluster, rounds=1, trees_per_round=4
        )
        texts.append(store_of(spec, summary := run(spec)).read_model_json(1))
        assert summary["trees"] == 4
    models = [model_from_json(t) for t in texts]
    for a, b in itertools.pairwise(models):
        for x, y in zip(a.cuts, b.cuts, strict=True):
            np.testing.assert_array_equal(x, y)
    assert texts[0] == texts[1] == texts[2]
    assert sum(t.n_nodes for t in models[0].trees) > 4 * 7


def test_resumed_run_ends_with_the_same_model(
    tmp_path: Path, shared_cluster: str
) -> None:
    frame = make_data("multi:softprob")
    silos = write_slices(frame.iloc[:700], frame.iloc[700:], 3, tmp_path / "data")
    spec = make_spec(
        silos, tmp_path / "store", shared_cluster, "multi:softprob", rounds=3
    )
    straight = run(spec, run_id="straight")
    run(spec.model_copy(update={"rounds": 1}), run_id="resumed")

    resumed = run(spec, run_id="resumed", resume=True)

    assert resumed["rounds"] == [2, 3]
    a = store_of(spec, straight)
    b = store_of(spec, resumed)
    assert a.read_model_json(3) == b.read_model_json(3)
    ma, mb = a.read_metrics(3), b.read_metrics(3)
    keep = ~ma.metric.isin(["fit_seconds"])
    pd.testing.assert_frame_equal(ma[keep], mb[~mb.metric.isin(["fit_seconds"])])


def test_payloads_hold_no_rows(
    tmp_path: Path, shared_cluster: str, payloads: list[tuple[str, str, Any]]
) -> None:
    frame = make_data("binary:logistic", n=1300)
    train, test = frame.iloc[:1000], frame.iloc[1000:]
    silos = write_slices(train, test, 4, tmp_path / "data")
    spec = make_spec(silos, tmp_path / "store", shared_cluster, rounds=1)

    summary = run(spec)

    values = train[FEATURES].to_numpy(np.float64)
    values = values[~np.isnan(values)]
    n_rows = {s["name"]: len(pd.read_parquet(s["train"])) for s in silos}
    calls = {name for _, name, _ in payloads}
    assert {"gbdt-start_round", "gbdt-grow_level", "gbdt-finish_and_start"} <= calls
    histograms = 0
    for silo, name, (sent, reply) in payloads:
        raw = n_rows[silo] * (len(FEATURES) + 1) * 8
        if name != "gbdt-sketch":  # a sketch is bounded by max_bin, not by rows
            assert len(pickle.dumps(sent)) < raw / 4, name
        for array in _arrays(reply):
            assert n_rows[silo] not in array.shape, (name, array.shape)
        for h in _histograms(reply):
            histograms += 1
            assert h.grad.shape[1:] == (len(FEATURES), 33)
            # Gradient sums, never a feature value of any row.
            assert not np.isin(h.grad, values).any()
    assert histograms >= 4 * 3
    # The flow reads no per-tree training loss, so none is computed or sent.
    finished = [r for _, name, (_, r) in payloads if name == "gbdt-finish_and_start"]
    assert finished and all(loss is None for loss, _ in finished)
    traffic = summary["traffic"]
    assert set(traffic) == set(n_rows)


def _arrays(value: Any) -> Iterator[np.ndarray]:
    if isinstance(value, np.ndarray):
        yield value
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _arrays(v)
    elif hasattr(value, "__dataclass_fields__"):
        for name in value.__dataclass_fields__:
            yield from _arrays(getattr(value, name))


def _histograms(value: Any) -> Iterator[NodeHistograms]:
    if isinstance(value, NodeHistograms):
        yield value
    elif isinstance(value, tuple):
        for v in value:
            yield from _histograms(v)


def test_silo_state_is_freed_at_the_end(tmp_path: Path, shared_cluster: str) -> None:
    from distributed import Client

    from tests._probe import probe

    frame = make_data("reg:squarederror", n=600)
    silos = write_slices(frame.iloc[:500], frame.iloc[500:], 2, tmp_path / "data")
    spec = make_spec(
        silos, tmp_path / "store", shared_cluster, "reg:squarederror", rounds=1
    )
    run(spec)

    def held(address: str, security: Any) -> int:
        runs = probe(address, "runs", security=security)
        return len(runs) + int(probe(address, "dask-data", security=security))

    with Client(shared_cluster, set_as_default=False) as client:
        workers = list(client.scheduler_info(n_workers=-1)["workers"])
        for _ in range(50):
            counts = {w: held(w, client.security) for w in workers}
            if not sum(counts.values()):
                break
            time.sleep(0.1)
    assert sum(counts.values()) == 0, counts


# -- bad input -----------------------------------------------------------------


def _bad(frame: pd.DataFrame, case: str) -> pd.DataFrame:
    frame = frame.copy()
    if case == "other dtype":
        frame["x1"] = frame["x1"].astype(str)
    elif case == "all NaN":
        frame["x2"] = np.nan
    elif case == "label outside num_class":
        frame.loc[frame.index[3], "label"] = 3
    return frame


BAD = {
    "other dtype": ("incompatible", "x1"),
    "all NaN": ("no non-missing value", "x2"),
    "label outside num_class": ("label 3 is not one of the classes 0..2", "label"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_silo_data_names_the_silo_and_column(
    case: str, tmp_path: Path, shared_cluster: str
) -> None:
    frame = make_data("multi:softprob", n=400)
    silos = write_slices(frame.iloc[:300], frame.iloc[300:], 3, tmp_path / "data")
    path = Path(silos[1]["train"])
    _bad(pd.read_parquet(path), case).to_parquet(path, index=False)
    spec = make_spec(silos, tmp_path / "store", shared_cluster, "multi:softprob")

    with pytest.raises(SiloDataError) as error:
        run(spec)

    reason, column = BAD[case]
    assert error.value.silo == "silo-1"
    assert error.value.column == column
    assert reason in error.value.reason
    assert not list((tmp_path / "store").rglob("_SUCCESS"))


def test_non_numeric_feature_everywhere_is_refused(
    tmp_path: Path, shared_cluster: str
) -> None:
    frame = make_data("binary:logistic", n=300)
    frame["x3"] = np.where(frame["x3"] > 0, "high", "low")
    silos = write_slices(frame.iloc[:200], frame.iloc[200:], 2, tmp_path / "data")

    with pytest.raises(SiloDataError, match=r"column 'x3'.*must be numeric"):
        run(make_spec(silos, tmp_path / "store", shared_cluster))


def test_max_bin_below_two_is_a_spec_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="max_bin"):
        make_spec([{"name": "silo-0", "train": "x.parquet"}], tmp_path, "x", max_bin=1)


def test_cli_reports_bad_labels_in_one_line(
    tmp_path: Path, shared_cluster: str
) -> None:
    from prefect.settings import PREFECT_API_URL

    from tests.test_cli import error_lines, run_cli

    frame = make_data("binary:logistic", n=300)
    silos = write_slices(frame.iloc[:200], frame.iloc[200:], 2, tmp_path / "data")
    path = Path(silos[1]["train"])
    bad = pd.read_parquet(path)
    bad.loc[bad.index[0], "label"] = 2
    bad.to_parquet(path, index=False)
    spec = make_spec(silos, tmp_path / "store", shared_cluster)
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(json.loads(spec.model_dump_json())))

    result = run_cli(
        "run", str(spec_path), env={"PREFECT_API_URL": str(PREFECT_API_URL.value())}
    )

    assert result.returncode == 2, result.stderr
    (line,) = error_lines(result)
    assert line.startswith("fedsilo: error: silo 'silo-1', column 'label': ")
    assert "label 2 is not one of the classes 0..1" in line


def test_cli_reports_max_bin_below_two_in_one_line(tmp_path: Path) -> None:
    from tests.test_cli import error_lines, run_cli

    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(
        yaml.safe_dump(
            {
                "name": "x",
                "task": "classification",
                "target": "label",
                "rounds": 1,
                "model": {
                    "kind": "xgboost",
                    "params": {"objective": "binary:logistic", "max_bin": 1},
                },
                "silos": [{"name": "silo-0", "train": "a.parquet"}],
            }
        )
    )

    result = run_cli("run", str(spec_path))

    assert result.returncode == 2
    (line,) = error_lines(result)
    assert "spec.yaml" in line and "max_bin" in line


def test_a_worker_out_of_reach_of_a_channel_fails_naming_the_silo(
    tmp_path: Path, shared_cluster: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fedsilo.errors import SiloFailedError
    from tasks.silo import link
    from tasks.silo.channel import ChannelError

    frame = make_data("binary:logistic", n=600)
    silos = write_slices(frame.iloc[:500], frame.iloc[500:], 2, tmp_path / "data")
    spec = make_spec(silos, tmp_path / "store", shared_cluster, rounds=1)

    def firewalled(address: str, *_: Any, **__: Any) -> Any:
        raise ChannelError(f"cannot open a channel to {address}: timed out")

    monkeypatch.setattr(link.Channel, "connect", firewalled)
    with pytest.raises(SiloFailedError, match=r"silo 'silo-0'.*timed out"):
        run(spec)


def test_pool_workers_sum_their_silos_histograms_and_grow_the_same_trees(
    tmp_path: Path, shared_cluster: str, payloads: list[tuple[str, str, Any]]
) -> None:
    from fedsilo.spec import with_changes

    frame = make_data("binary:logistic", n=1300)
    silos = write_slices(frame.iloc[:1000], frame.iloc[1000:], 4, tmp_path / "data")
    own = make_spec(silos, tmp_path / "own", shared_cluster, rounds=1)
    pooled = with_changes(
        own,
        "test",
        cluster={"address": None, "workers": 2},
        checkpoints=str(tmp_path / "pool"),
    )

    by_silo = run(own)
    payloads.clear()
    by_pool = run(pooled)

    assert store_of(pooled, by_pool).read_model_json(1) == store_of(
        own, by_silo
    ).read_model_json(1)
    # Two silos per worker: one summed histogram answers for both of them.
    levels = [(silo, reply) for silo, name, (_, reply) in payloads if "level" in name]
    assert levels and len({id(reply) for _, reply in levels}) == len(levels) // 2
    # Bytes are still counted per silo, as if each had a worker of its own.
    assert by_pool["traffic"] == by_silo["traffic"]


def two_silo_calls(client: Any, run_key: str, rows: Path) -> tuple[Any, Any]:
    """Return SiloCalls on silo-0 and silo-1 of the shared cluster, and open_all().

    ``open_all()`` makes both silos' boosting state resident (200 rows each,
    written to ``rows`` as Parquet files they read).
    """
    from fedsilo.cluster import SiloCluster
    from tasks.boosting import silo_side as gbdt_silo
    from tasks.boosting.federation import SiloCalls
    from tasks.silo.data import SiloSource
    from tasks.silo.link import SiloLink

    frame = make_data("binary:logistic", n=200)
    frame.iloc[:150].to_parquet(rows / "train.parquet")
    frame.iloc[150:].to_parquet(rows / "test.parquet")
    setup = gbdt_silo.BoostingSetup(
        tuple(FEATURES), "label", "classification", "binary:logistic", 0
    )
    workers = {
        s: a
        for a, w in client.scheduler_info(n_workers=-1)["workers"].items()
        if (s := str(w["name"])) in ("silo-0", "silo-1")
    }
    cluster = SiloCluster(client, workers, str(client.scheduler.address), False)
    link = SiloLink(cluster, run_key, 30, ("boosting",))
    calls = SiloCalls(link)

    def open_all() -> None:
        link.connect(list(workers))
        train, test = str(rows / "train.parquet"), str(rows / "test.parquet")
        link.each(
            "load",
            {s: (SiloSource(s, train, test, 0.0, {}), "label", 0) for s in workers},
            keep="rows",
        )
        link.each(
            "gbdt-rows",
            {s: (link.ref(s, "rows"), setup) for s in workers},
            name="rows",
            keep="gbdt-rows",
        )
        X = frame[FEATURES].to_numpy(np.float32)
        intercept = make_objective("binary:logistic").intercept(
            np.array([1, 0.5]), None
        )
        cuts = federated_cuts([X], 16)
        calls.open(
            {s: (link.ref(s, "gbdt-rows"), setup, cuts, intercept) for s in workers}
        )

    return calls, open_all


def test_a_broken_channel_fails_the_exchange_naming_the_silo(
    shared_cluster: str, tmp_path: Path
) -> None:
    from distributed import Client

    from fedsilo.errors import SiloFailedError
    from tasks.boosting.federation import sum_replies

    with Client(shared_cluster, set_as_default=False) as client:
        calls, open_all = two_silo_calls(client, "broken-channel", tmp_path)
        try:
            open_all()
            assert len(calls.link.channels) == 2
            summed = sum_replies(calls.exchange("start_round", 40))
            assert summed.sums.size and np.isfinite(summed.sums).all()
            broken = calls.link.channels[calls.workers["silo-1"]]

            broken.close()

            with pytest.raises(SiloFailedError, match=r"silo 'silo-1'"):
                calls.exchange("start_round", 40)
            assert list(calls.link.channels) == [calls.workers["silo-0"]]
        finally:
            calls.free()
    assert not calls.link.channels


def test_a_failing_silo_is_named(shared_cluster: str, tmp_path: Path) -> None:
    from distributed import Client

    from fedsilo.errors import SiloFailedError

    with Client(shared_cluster, set_as_default=False) as client:
        calls, open_all = two_silo_calls(client, "failing", tmp_path)
        try:
            open_all()
            calls.call("free", {"silo-1": ()})

            with pytest.raises(SiloFailedError, match=r"silo 'silo-1'.*freed"):
                calls.exchange("start_round", 40)

            # The silo's runtime no longer holds the state at all (released).
            calls.drop("silo-1")
            calls.link.release([calls.link.ref("silo-0", "gbdt")])
            with pytest.raises(SiloFailedError, match=r"silo 'silo-0'.*holds no gbdt"):
                calls.exchange("start_round", 40)
        finally:
            calls.free()


def test_load_estimator_gives_xgboosts_own_estimator(
    tmp_path: Path, shared_cluster: str
) -> None:
    from tasks.store.model_io import load_estimator

    for objective in ("binary:logistic", "reg:squarederror"):
        frame = make_data(objective, n=600)
        data = tmp_path / objective / "data"
        silos = write_slices(frame.iloc[:500], frame.iloc[500:], 2, data)
        spec = make_spec(
            silos, tmp_path / objective / "store", shared_cluster, objective
        )
        store = store_of(spec, run(spec))

        estimator = load_estimator(store)

        X = frame[FEATURES].iloc[500:]
        text = store.read_model_json(2) or ""
        booster = xgb.Booster(model_file=bytearray(text.encode()))
        expected = booster.predict(xgb.DMatrix(X))
        if objective == "binary:logistic":
            assert isinstance(estimator, xgb.XGBClassifier)
            got = estimator.predict_proba(X)[:, 1]
        else:
            assert isinstance(estimator, xgb.XGBRegressor)
            got = estimator.predict(X)
        np.testing.assert_allclose(got, expected, rtol=1e-6)
        assert list(estimator.feature_names_in_) == FEATURES
