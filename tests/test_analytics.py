"""Reading a real checkpoint store with DuckDB, pyarrow/pandas, polars, scikit-learn.

The store holds one averaged and one boosted run (tests/_checkpoint_runs.py),
trained once per session, plus a torn round. The queries and snippets are those
of docs/checkpoints.md, taken from the doc itself, run from the directory that
holds the store, as the doc assumes. tests/test_spark_store.py runs the same
queries in Spark.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import xgboost
from _checkpoint_runs import (
    AVERAGED,
    AVERAGED_ROUNDS,
    BOOSTED,
    BOOSTED_ROUNDS,
    DOCS,
    TORN_ROUND,
    TrainedStore,
    documented,
    shared_queries,
    trained_store,
)

from fedsilo.cli import main
from tasks.store.checkpoints import METRICS_SCHEMA, CheckpointStore, list_runs
from tasks.store.model_io import load_estimator
from tasks.store.tables import MANIFEST_SCHEMA, TREES_SCHEMA

pytestmark = pytest.mark.integration

DOC = documented()
# Imported by tests/test_object_storage.py, which runs them on S3.
WHOLE_STORE_QUERY = DOC["whole_store"].code
LATEST_COMPLETE_ROUND = DOC["latest_complete_round"].code
COMPLETE_ROUNDS_ONLY = DOC["complete_rounds_only"].code

COMMON_KEYS = {
    "fedsilo.federation",
    "fedsilo.run",
    "fedsilo.round",
    "fedsilo.versions",
    "fedsilo.spec",
    "fedsilo.spec_hash",
    "fedsilo.model",
}
FEDERATIONS = (AVERAGED, BOOSTED)
Rows = tuple[list[str], list[tuple[Any, ...]]]


@pytest.fixture(scope="module")
def trained(
    breast_cancer_dir: Path,
    shared_cluster: str,
    prefect_api: None,
    tmp_path_factory: pytest.TempPathFactory,
) -> TrainedStore:
    return trained_store(tmp_path_factory, breast_cancer_dir, shared_cluster)


@pytest.fixture
def in_base(trained: TrainedStore, monkeypatch: pytest.MonkeyPatch) -> TrainedStore:
    """Run from the directory holding ``checkpoints/``, as the doc does."""
    monkeypatch.chdir(trained.base)
    return trained


def duckdb_tables(skip: tuple[str, ...] = ()) -> duckdb.DuckDBPyConnection:
    """Return a connection with the doc's four views (less the ``skip`` ones)."""
    con = duckdb.connect()
    for statement in DOC["duckdb_tables"].code.split(";"):
        if statement.strip() and not any(f"VIEW {v} " in statement for v in skip):
            con.execute(statement)
    return con


def run_query(con: duckdb.DuckDBPyConnection, name: str) -> Rows:
    """Return the column names and rows of the doc's query ``name``."""
    relation = con.sql(DOC[name].code)
    assert relation is not None
    return relation.columns, relation.fetchall()


def _exec(name: str, **names: Any) -> dict[str, Any]:
    namespace: dict[str, Any] = dict(names)
    exec(compile(DOC[name].code, str(DOCS), "exec"), namespace)
    return namespace


def expected_curves(trained: TrainedStore) -> list[tuple[Any, ...]]:
    """Global test metrics of every round, as the runs reported them."""
    kinds = {AVERAGED: "sgd-logistic", BOOSTED: "xgboost"}
    rows = [
        (federation, run, kinds[federation], result.round, metric, value)
        for federation, run in trained.runs.items()
        for result in trained.results[run]
        for metric, value in result.metrics.items()
    ]
    return sorted(rows, key=lambda r: (r[0], r[1], r[3], r[4]))


# --- the doc ------------------------------------------------------------------


def test_the_doc_marks_every_query_it_shows() -> None:
    text = DOCS.read_text()

    sql = [b for b in DOC.values() if b.language == "sql"]

    assert text.count("```sql") == len(sql)  # no SQL block goes untested
    assert set(DOC) == {
        "duckdb_tables",
        "spark_tables",
        "runs",
        "unlisted_runs",
        "learning_curves",
        "last_round_per_silo",
        "latest_model_of_each_run",
        "latest_tensors",
        "latest_trees",
        "bytes_per_silo",
        "whole_store",
        "latest_complete_round",
        "complete_rounds_only",
        "pandas_snippet",
        "polars_snippet",
        "load_snippet",
    }
    assert len(shared_queries()) == 8
    for block in DOC.values():
        assert block.code in text


# --- the files ----------------------------------------------------------------


def test_runs_wrote_every_round(trained: TrainedStore) -> None:
    rounds = {AVERAGED: AVERAGED_ROUNDS, BOOSTED: BOOSTED_ROUNDS}
    for federation, run in trained.runs.items():
        summary = trained.summaries[run]
        assert summary["rounds"] == list(range(1, rounds[federation] + 1))
        assert [r.round for r in trained.results[run]] == summary["rounds"]
        assert trained.results[run][-1].metrics == summary["final_metrics"]


def test_every_file_has_the_documented_schema(trained: TrainedStore) -> None:
    averaged = trained.run_dir(AVERAGED) / "round=00001"
    boosted = trained.run_dir(BOOSTED) / "round=00001"

    model = pq.read_table(averaged / "model.parquet")
    trees = pq.read_table(boosted / "trees.parquet")
    metrics = [pq.read_table(d / "metrics.parquet") for d in (averaged, boosted)]
    manifests = [
        pq.read_table(trained.run_dir(f) / "manifest.parquet") for f in FEDERATIONS
    ]

    assert model.schema.remove_metadata() == pa.schema(
        [
            pa.field("tensor", pa.string(), nullable=False),
            pa.field("flat_index", pa.int64(), nullable=False),
            pa.field("value", pa.float64(), nullable=False),
        ]
    )
    assert set(model.column("tensor").to_pylist()) == {"coef_", "intercept_", "t_"}
    assert trees.schema.remove_metadata() == TREES_SCHEMA
    assert trees.num_rows > 0
    for table in metrics:
        assert table.schema.remove_metadata() == METRICS_SCHEMA
        assert set(table.column("split").to_pylist()) == {"train", "test"}
    for table in manifests:
        assert table.schema.remove_metadata() == MANIFEST_SCHEMA
        assert table.num_rows == 1
    assert _keys(model) == COMMON_KEYS | {"fedsilo.tensors", "fedsilo.sklearn_version"}
    assert _keys(metrics[0]) == COMMON_KEYS | {"fedsilo.sklearn_version"}
    assert (
        _keys(trees) == _keys(metrics[1]) == COMMON_KEYS | {"fedsilo.xgboost_version"}
    )
    assert sorted(p.name for p in averaged.iterdir()) == [
        "_SUCCESS",
        "metrics.parquet",
        "model.parquet",
    ]
    assert sorted(p.name for p in boosted.iterdir()) == [
        "_SUCCESS",
        "metrics.parquet",
        "model.json",
        "trees.parquet",
    ]


def _keys(table: pa.Table) -> set[str]:
    return {k.decode() for k in table.schema.metadata} - {"ARROW:schema"}


# --- the queries (DuckDB) -----------------------------------------------------


def test_the_runs_query_lists_both_kinds_with_their_progress(
    in_base: TrainedStore,
) -> None:
    con = duckdb_tables()

    columns, rows = run_query(con, "runs")
    types = dict(zip(columns, map(str, con.sql(DOC["runs"].code).types), strict=True))

    fedsilo_version = json.loads(
        CheckpointStore("checkpoints", AVERAGED, in_base.runs[AVERAGED]).read_metadata(
            1
        )["fedsilo.versions"]
    )["fedsilo"]
    assert rows == [
        (
            AVERAGED,
            in_base.runs[AVERAGED],
            "sgd-logistic",
            "model.parquet",
            "complete",
            AVERAGED_ROUNDS,  # the torn round 4 does not count
            AVERAGED_ROUNDS,
            AVERAGED_ROUNDS,
            in_base.specs[AVERAGED].spec_hash(),
            fedsilo_version,
        ),
        (
            BOOSTED,
            in_base.runs[BOOSTED],
            "xgboost",
            "trees.parquet",
            "complete",
            BOOSTED_ROUNDS,
            BOOSTED_ROUNDS,
            BOOSTED_ROUNDS,
            in_base.specs[BOOSTED].spec_hash(),
            fedsilo_version,
        ),
    ]
    assert (types["federation"], types["run"], types["last_round"]) == (
        "VARCHAR",
        "VARCHAR",
        "BIGINT",
    )
    assert run_query(con, "unlisted_runs")[1] == []


def test_learning_curves_are_the_numbers_the_runs_reported(
    in_base: TrainedStore,
) -> None:
    con = duckdb_tables()

    columns, rows = run_query(con, "learning_curves")

    assert columns == ["federation", "run", "model_kind", "round", "metric", "value"]
    assert str(con.sql(DOC["learning_curves"].code).types[3]) == "INTEGER"
    assert rows == expected_curves(in_base)  # the torn round 4 is not in
    assert {r[2] for r in rows} == {"sgd-logistic", "xgboost"}


def test_pandas_and_polars_give_duckdbs_rows(in_base: TrainedStore) -> None:
    con = duckdb_tables()
    curves = run_query(con, "learning_curves")[1]
    tensors = run_query(con, "latest_tensors")[1]
    trees = run_query(con, "latest_trees")[1]

    by_pandas = _exec("pandas_snippet")
    by_polars = _exec("polars_snippet")

    assert str(by_pandas["curves"]["round"].dtype) == "int32"
    assert _pandas_rows(by_pandas["curves"]) == curves
    assert _pandas_rows(by_pandas["latest"]) == tensors
    assert by_polars["curves"].schema["round"] == pl.Int32
    assert by_polars["curves"].rows() == curves
    assert by_polars["trees"].rows() == trees
    assert len(curves) == len(expected_curves(in_base))


def _pandas_rows(frame: pd.DataFrame) -> list[tuple[Any, ...]]:
    return [
        tuple(v.item() if isinstance(v, np.generic) else v for v in row)
        for row in frame.itertuples(index=False, name=None)
    ]


def test_last_round_per_silo(in_base: TrainedStore) -> None:
    columns, rows = run_query(duckdb_tables(), "last_round_per_silo")

    frame = pd.DataFrame(rows, columns=columns)
    silos = {s.name for s in in_base.specs[AVERAGED].silos}
    assert set(frame.silo) == {"global"} | silos
    for federation, last in ((AVERAGED, AVERAGED_ROUNDS), (BOOSTED, BOOSTED_ROUNDS)):
        run = frame[frame.federation == federation]
        summary = in_base.summaries[in_base.runs[federation]]
        assert set(run["round"]) == {last}
        per_silo = run[(run.silo != "global") & (run.metric == "accuracy")]
        pooled = (per_silo.value * per_silo.n_samples).sum() / per_silo.n_samples.sum()
        assert pooled == pytest.approx(summary["final_metrics"]["accuracy"], abs=1e-12)
        overall = run[run.silo == "global"]
        assert (
            dict(zip(overall.metric, overall.value, strict=True))
            == (summary["final_metrics"])
        )
        assert overall.n_samples.iloc[0] == len(in_base.test)


def test_latest_model_of_each_run_names_its_file(in_base: TrainedStore) -> None:
    columns, rows = run_query(duckdb_tables(), "latest_model_of_each_run")

    assert columns == ["federation", "run", "model_kind", "round", "path", "n_rows"]
    assert [r[:4] for r in rows] == [
        (AVERAGED, in_base.runs[AVERAGED], "sgd-logistic", AVERAGED_ROUNDS),
        (BOOSTED, in_base.runs[BOOSTED], "xgboost", BOOSTED_ROUNDS),
    ]
    assert rows[0][4].endswith(f"round={AVERAGED_ROUNDS:05d}/model.parquet")
    assert rows[1][4].endswith(f"round={BOOSTED_ROUNDS:05d}/trees.parquet")
    for *_, path, n_rows in rows:
        assert pq.read_metadata(path).num_rows == n_rows


def test_latest_tensors_are_the_stored_parameters(in_base: TrainedStore) -> None:
    store = CheckpointStore("checkpoints", AVERAGED, in_base.runs[AVERAGED])

    rows = run_query(duckdb_tables(), "latest_tensors")[1]

    params = store.read_params(AVERAGED_ROUNDS)
    expected = sorted(
        (AVERAGED, store.run_id, AVERAGED_ROUNDS, name, i, float(v))
        for name, array in params.items()
        for i, v in enumerate(np.asarray(array).reshape(-1))
    )
    assert rows == expected


def test_latest_trees_are_the_boosted_model_xgboost_loads(
    in_base: TrainedStore,
) -> None:
    store = CheckpointStore("checkpoints", BOOSTED, in_base.runs[BOOSTED])
    path = Path(store.round_path(BOOSTED_ROUNDS)) / "model.json"

    columns, rows = run_query(duckdb_tables(), "latest_trees")

    frame = pd.DataFrame(rows, columns=columns)
    booster = xgboost.Booster(model_file=str(path)).trees_to_dataframe()
    assert len(frame) == len(booster) == store.read_trees(BOOSTED_ROUNDS).num_rows
    assert frame.Tree.tolist() == booster.Tree.tolist()
    assert frame.Feature.tolist() == booster.Feature.tolist()
    np.testing.assert_allclose(frame.Cover, booster.Cover, rtol=1e-5)
    leaves = frame.Feature == "Leaf"
    assert frame.Split[leaves].isna().all() and frame.Split[~leaves].notna().all()
    assert frame.Tree.nunique() == 2 * BOOSTED_ROUNDS  # trees_per_round 2


def test_bytes_per_silo(in_base: TrainedStore) -> None:
    columns, rows = run_query(duckdb_tables(), "bytes_per_silo")

    frame = pd.DataFrame(rows, columns=columns)
    assert set(frame.silo) == {s.name for s in in_base.specs[AVERAGED].silos}
    for federation, run_id in in_base.runs.items():
        run = frame[frame.run == run_id]
        results = in_base.results[run_id]
        assert set(run.federation) == {federation}
        assert run.bytes_up.sum() == sum(r.bytes_up for r in results)
        assert run.bytes_down.sum() == sum(r.bytes_down for r in results)
        assert (run.bytes_up > 0).all()


def test_duckdb_reads_the_files_directly(in_base: TrainedStore) -> None:
    relation = duckdb.sql(WHOLE_STORE_QUERY)
    assert relation is not None

    everything = relation.df()
    latest = duckdb.sql(LATEST_COMPLETE_ROUND).fetchall()  # type: ignore[union-attr]
    complete = duckdb.sql(COMPLETE_ROUNDS_ONLY).df()  # type: ignore[union-attr]

    assert str(relation.types[2]) == "VARCHAR"
    assert f"{TORN_ROUND:05d}" in set(everything["round"])  # this one sees it ...
    assert everything["round"].tolist() == sorted(everything["round"])
    assert f"{TORN_ROUND:05d}" not in set(complete["round"])  # ... these do not
    assert latest == [
        (AVERAGED, in_base.runs[AVERAGED], AVERAGED_ROUNDS),
        (BOOSTED, in_base.runs[BOOSTED], BOOSTED_ROUNDS),
    ]
    kinds = {AVERAGED: "sgd-logistic", BOOSTED: "xgboost"}
    rows = sorted(
        (f, r, kinds[f], int(n), m, v)
        for f, r, n, _, m, v in complete.itertuples(index=False, name=None)
    )
    assert rows == expected_curves(in_base)


def test_latest_model_scores_the_pooled_test_rows_at_the_federated_accuracy(
    in_base: TrainedStore,
) -> None:
    accuracy = _exec("load_snippet", test=in_base.test)["accuracy"]

    summary = in_base.summaries[in_base.runs[AVERAGED]]
    assert accuracy == pytest.approx(summary["final_metrics"]["accuracy"], abs=1e-12)
    assert accuracy > 0.85


# --- a store written by an earlier fedsilo ------------------------------------


def _earlier_layout(trained: TrainedStore, root: Path) -> Path:
    """Copy the store to ``root`` and turn its boosted run into the old layout.

    Before trees.parquet and manifest.parquet, a boosted round kept its trees
    (as pandas wrote them) in model.parquet and no run had a manifest.
    """
    shutil.copytree(trained.root, root)
    run_dir = trained.run_dir(BOOSTED, root)
    for trees in sorted(run_dir.glob("round=*/trees.parquet")):
        table = pq.read_table(trees)
        old = pa.Table.from_pandas(table.to_pandas(), preserve_index=False)
        kept = {k: v for k, v in table.schema.metadata.items() if b"fedsilo." in k}
        old = old.replace_schema_metadata({**old.schema.metadata, **kept})
        pq.write_table(old, trees.with_name("model.parquet"))
        trees.unlink()
    (run_dir / "manifest.parquet").unlink()
    return run_dir


def test_a_store_in_the_earlier_layout_reads_and_migrates_to_the_same_answers(
    trained: TrainedStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Prepare
    monkeypatch.chdir(trained.base)
    con = duckdb_tables()
    answers = {b.name: run_query(con, b.name) for b in shared_queries()}
    monkeypatch.chdir(tmp_path)
    _earlier_layout(trained, tmp_path / "checkpoints")
    # Execute: read as it is (no trees.parquet anywhere: no trees table), migrate.
    runs = {f: list_runs("checkpoints", f) for f in FEDERATIONS}
    estimators = {
        f: load_estimator(CheckpointStore("checkpoints", f, trained.runs[f]))
        for f in FEDERATIONS
    }
    unlisted = run_query(duckdb_tables(skip=("trees",)), "unlisted_runs")[1]
    code = main(["migrate", "checkpoints"])
    printed = capsys.readouterr().out.splitlines()
    migrated = duckdb_tables()
    # Assert
    assert runs == {f: [trained.runs[f]] for f in FEDERATIONS}
    assert hasattr(estimators[AVERAGED], "feature_names_")
    assert isinstance(estimators[BOOSTED], xgboost.XGBClassifier)
    assert unlisted == [(BOOSTED, trained.runs[BOOSTED])]
    assert code == 0
    assert printed == [
        f"{BOOSTED}/{trained.runs[BOOSTED]}: wrote {BOOSTED_ROUNDS + 1} file(s)",
        "checkpoints: 1 run(s) migrated; the rest were current",
    ]
    for name, answer in answers.items():
        assert run_query(migrated, name) == answer, name


def test_resuming_a_run_of_the_earlier_layout_brings_it_to_the_current_one(
    trained: TrainedStore, tmp_path: Path
) -> None:
    # Prepare
    from flows.training import federated_training

    run_dir = _earlier_layout(trained, tmp_path / "checkpoints")
    spec = trained.specs[BOOSTED].model_copy(
        update={
            "rounds": BOOSTED_ROUNDS + 1,
            "checkpoints": str(tmp_path / "checkpoints"),
        }
    )
    # Execute
    summary = federated_training(spec, run_id=trained.runs[BOOSTED], resume=True)
    # Assert
    assert summary["rounds"] == [BOOSTED_ROUNDS + 1]
    assert sorted(p.parent.name for p in run_dir.glob("round=*/trees.parquet")) == [
        f"round={r:05d}" for r in range(1, BOOSTED_ROUNDS + 2)
    ]
    assert not list(run_dir.glob("round=*/model.parquet"))
    store = CheckpointStore(spec.checkpoints, BOOSTED, trained.runs[BOOSTED])
    manifest = store.read_manifest()
    assert manifest is not None
    assert (manifest["last_round"], manifest["status"]) == (
        BOOSTED_ROUNDS + 1,
        "complete",
    )
    before = store.read_trees(BOOSTED_ROUNDS).to_pandas()
    after = store.read_trees(BOOSTED_ROUNDS + 1).to_pandas()
    assert after.Tree.nunique() == before.Tree.nunique() + 2
    pd.testing.assert_frame_equal(after[after.Tree < before.Tree.nunique()], before)
