"""Reading a real checkpoint store with DuckDB, pyarrow/pandas, polars, scikit-learn.

One federation (two runs of three rounds) is trained once for the module; every
test then reads its store. The queries and snippets are those of
docs/checkpoints.md, character for character (checked below), run from the
directory that holds the store, as the docs assume.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import polars as pl
import pyarrow.parquet as pq
import pytest

from fedsilo.spec import FederationSpec, load_spec
from tasks import run_state
from tasks.store.checkpoints import CheckpointStore

pytestmark = pytest.mark.integration

DOCS = Path(__file__).resolve().parents[1] / "docs" / "checkpoints.md"
NAME = "breast-cancer"
ROUNDS = 3

# --- the queries and snippets of docs/checkpoints.md ---------------------------

WHOLE_STORE_QUERY = """\
SELECT federation, run, round, silo, metric, value
FROM read_parquet('checkpoints/**/metrics.parquet', hive_partitioning = true)
WHERE silo = 'global' AND split = 'test' ORDER BY round;
"""

LEARNING_CURVE = """\
SELECT run, round, metric, value
FROM read_parquet('checkpoints/**/metrics.parquet', hive_partitioning = true,
                  hive_types = {'round': INTEGER})
WHERE silo = 'global' AND split = 'test'
ORDER BY run, round, metric;
"""

LAST_ROUND_PER_SILO = """\
SELECT run, round, silo, metric, value, n_samples
FROM read_parquet('checkpoints/**/metrics.parquet', hive_partitioning = true,
                  hive_types = {'round': INTEGER})
WHERE split = 'test'
QUALIFY round = max(round) OVER (PARTITION BY run)
ORDER BY run, silo, metric;
"""

LATEST_COMPLETE_ROUND = """\
SELECT regexp_extract(file, 'federation=([^/]+)', 1) AS federation,
       regexp_extract(file, 'run=([^/]+)', 1) AS run,
       max(CAST(regexp_extract(file, 'round=([0-9]+)', 1) AS INTEGER)) AS round
FROM glob('checkpoints/federation=*/run=*/round=*/_SUCCESS')
GROUP BY ALL
ORDER BY federation, run;
"""

COMPLETE_ROUNDS_ONLY = """\
SELECT federation, run, round, silo, metric, value
FROM read_parquet('checkpoints/**/metrics.parquet', hive_partitioning = true,
                  filename = true)
WHERE silo = 'global' AND split = 'test'
  AND replace(filename, 'metrics.parquet', '_SUCCESS')
      IN (SELECT file FROM glob('checkpoints/**/_SUCCESS'))
ORDER BY round;
"""

BYTES_PER_SILO = """\
SELECT run, silo,
       sum(value) FILTER (WHERE metric = 'bytes_up') AS bytes_up,
       sum(value) FILTER (WHERE metric = 'bytes_down') AS bytes_down
FROM read_parquet('checkpoints/**/metrics.parquet', hive_partitioning = true)
WHERE metric IN ('bytes_up', 'bytes_down')
GROUP BY run, silo
ORDER BY run, silo;
"""

PYARROW_SNIPPET = """\
import glob

import pyarrow.dataset as ds

files = glob.glob("checkpoints/**/metrics.parquet", recursive=True)
metrics = ds.dataset(
    files, format="parquet", partitioning="hive", partition_base_dir="checkpoints"
).to_table().to_pandas()
"""

POLARS_SNIPPET = """\
import polars as pl

curve = (
    pl.scan_parquet("checkpoints/**/metrics.parquet", hive_partitioning=True)
    .filter((pl.col("silo") == "global") & (pl.col("split") == "test"))
    .select("run", "round", "metric", "value")
    .sort("run", "round", "metric")
    .collect()
)
"""

LOAD_SNIPPET = """\
from fedsilo.api import CheckpointStore, list_runs, load_estimator

run_id = list_runs("checkpoints", "breast-cancer")[-1]
model = load_estimator(CheckpointStore("checkpoints", "breast-cancer", run_id))
features = test[model.feature_names_].to_numpy()
accuracy = model.score(features, test["label"].to_numpy())
"""

DOCUMENTED = {
    "WHOLE_STORE_QUERY": WHOLE_STORE_QUERY,
    "LEARNING_CURVE": LEARNING_CURVE,
    "LAST_ROUND_PER_SILO": LAST_ROUND_PER_SILO,
    "LATEST_COMPLETE_ROUND": LATEST_COMPLETE_ROUND,
    "COMPLETE_ROUNDS_ONLY": COMPLETE_ROUNDS_ONLY,
    "BYTES_PER_SILO": BYTES_PER_SILO,
    "PYARROW_SNIPPET": PYARROW_SNIPPET,
    "POLARS_SNIPPET": POLARS_SNIPPET,
    "LOAD_SNIPPET": LOAD_SNIPPET,
}
METRICS_COLUMNS = ["silo", "split", "metric", "value", "n_samples"]
MODEL_METADATA_KEYS = {
    "fedsilo.federation",
    "fedsilo.run",
    "fedsilo.round",
    "fedsilo.versions",
    "fedsilo.tensors",
    "fedsilo.spec",
    "fedsilo.spec_hash",
    "fedsilo.model",
    "fedsilo.sklearn_version",
}


@dataclass(frozen=True)
class Federation:
    """A trained store and what the runs reported while writing it."""

    base: Path  # the store is base / "checkpoints"
    spec: FederationSpec
    summaries: dict[str, dict[str, Any]]  # run id -> federated_training's summary
    results: dict[str, list[run_state.RoundResult]]  # run id -> rounds
    test: pd.DataFrame  # every silo's test rows, pooled (for scoring only)

    def expected_curve(self) -> pd.DataFrame:
        """Global test metrics of every round, as the runs reported them."""
        rows = [
            (run, result.round, metric, value)
            for run, results in self.results.items()
            for result in results
            for metric, value in result.metrics.items()
        ]
        return _canonical(
            pd.DataFrame(rows, columns=["run", "round", "metric", "value"])
        )


@pytest.fixture(scope="module")
def federation(
    breast_cancer_dir: Path,
    shared_cluster: str,
    prefect_api: None,
    tmp_path_factory: pytest.TempPathFactory,
) -> Federation:
    """Two runs (seeds 0 and 1) of one federation into ``<base>/checkpoints``."""
    from flows.training import federated_training

    base = tmp_path_factory.mktemp("analytics")
    spec = load_spec(breast_cancer_dir / "federation.yaml")
    spec = FederationSpec.model_validate(
        {
            **spec.model_dump(),
            "name": NAME,
            "rounds": ROUNDS,
            "checkpoints": str(base / "checkpoints"),
            "cluster": {"address": shared_cluster},
        }
    )
    results: dict[str, list[run_state.RoundResult]] = {}

    def listener(result: run_state.RoundResult, state: run_state.Run) -> None:
        results.setdefault(state.run_id, []).append(result)

    with run_state.listening(listener):
        summaries = [
            federated_training(spec.model_copy(update={"seed": seed}))
            for seed in (0, 1)
        ]
    files = sorted(breast_cancer_dir.glob("silo-*/test.parquet"))
    test = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    return Federation(base, spec, {s["run_id"]: s for s in summaries}, results, test)


@pytest.fixture
def in_base(federation: Federation, monkeypatch: pytest.MonkeyPatch) -> Federation:
    """Run from the directory holding ``checkpoints/``, as the docs do."""
    monkeypatch.chdir(federation.base)
    return federation


def _canonical(frame: pd.DataFrame) -> pd.DataFrame:
    """(run, round as int, metric, value), sorted, fresh index."""
    out = frame[["run", "round", "metric", "value"]].astype(
        {"run": str, "round": "int64", "metric": str, "value": "float64"}
    )
    return out.sort_values(["run", "round", "metric"]).reset_index(drop=True)


def _sql(query: str) -> duckdb.DuckDBPyRelation:
    relation = duckdb.sql(query)
    assert relation is not None  # a SELECT always gives a relation
    return relation


def _exec(snippet: str, **names: Any) -> dict[str, Any]:
    namespace: dict[str, Any] = dict(names)
    exec(compile(snippet, str(DOCS), "exec"), namespace)
    return namespace


def test_docs_hold_every_tested_query_verbatim() -> None:
    text = DOCS.read_text()
    missing = [name for name, code in DOCUMENTED.items() if code not in text]
    assert missing == []


def test_runs_wrote_every_round(federation: Federation) -> None:
    assert len(federation.summaries) == 2
    for run_id, summary in federation.summaries.items():
        assert summary["rounds"] == list(range(1, ROUNDS + 1))
        assert [r.round for r in federation.results[run_id]] == summary["rounds"]
        assert federation.results[run_id][-1].metrics == summary["final_metrics"]


def test_whole_store_query_reads_round_as_varchar(in_base: Federation) -> None:
    relation = _sql(WHOLE_STORE_QUERY)

    rows = relation.df()

    types = dict(zip(relation.columns, map(str, relation.types), strict=True))
    assert types == {
        "federation": "VARCHAR",
        "run": "VARCHAR",
        "round": "VARCHAR",
        "silo": "VARCHAR",
        "metric": "VARCHAR",
        "value": "DOUBLE",
    }
    assert set(rows["round"]) == {f"{r:05d}" for r in range(1, ROUNDS + 1)}
    assert rows["round"].tolist() == sorted(rows["round"])  # zero-padded: sorts
    assert set(rows.federation) == {NAME}
    pd.testing.assert_frame_equal(_canonical(rows), in_base.expected_curve())


def test_every_reader_returns_the_runs_numbers(in_base: Federation) -> None:
    expected = in_base.expected_curve()

    curve = _sql(LEARNING_CURVE)
    by_pyarrow = _exec(PYARROW_SNIPPET)["metrics"]
    by_polars = _exec(POLARS_SNIPPET)["curve"]

    assert str(curve.types[1]) == "INTEGER"
    pd.testing.assert_frame_equal(_canonical(curve.df()), expected)
    assert str(by_pyarrow["round"].dtype) == "int32"
    global_test = by_pyarrow[
        (by_pyarrow.silo == "global") & (by_pyarrow.split == "test")
    ]
    pd.testing.assert_frame_equal(_canonical(global_test), expected)
    assert by_polars.schema["round"] == pl.Int64
    pd.testing.assert_frame_equal(_canonical(by_polars.to_pandas()), expected)
    for run_id, summary in in_base.summaries.items():
        last = expected[(expected.run == run_id) & (expected["round"] == ROUNDS)]
        assert (
            dict(zip(last.metric, last.value, strict=True)) == summary["final_metrics"]
        )


def test_metrics_and_model_files_have_the_documented_schema(
    in_base: Federation,
) -> None:
    run_id = next(iter(in_base.summaries))
    store = CheckpointStore("checkpoints", NAME, run_id)

    metrics = pq.read_table(f"{store.round_path(1)}/metrics.parquet")
    model = pq.read_table(f"{store.round_path(1)}/model.parquet")

    assert metrics.column_names == METRICS_COLUMNS
    assert [str(t) for t in metrics.schema.types] == [
        "string",
        "string",
        "string",
        "double",
        "int64",
    ]
    assert set(metrics.column("split").to_pylist()) == {"train", "test"}
    assert {"accuracy", "log_loss", "roc_auc", "bytes_up", "bytes_down"} <= set(
        metrics.column("metric").to_pylist()
    )
    assert model.column_names == ["tensor", "flat_index", "value"]
    assert set(model.column("tensor").to_pylist()) == {"coef_", "intercept_", "t_"}
    keys = {k.decode() for k in model.schema.metadata} - {"ARROW:schema"}
    assert keys == MODEL_METADATA_KEYS
    metrics_keys = {k.decode() for k in metrics.schema.metadata} - {"ARROW:schema"}
    assert metrics_keys == MODEL_METADATA_KEYS - {"fedsilo.tensors"}
    assert sorted(p.name for p in Path(store.round_path(1)).iterdir()) == [
        "_SUCCESS",
        "metrics.parquet",
        "model.parquet",
    ]


def test_last_round_per_silo(in_base: Federation) -> None:
    rows = _sql(LAST_ROUND_PER_SILO).df()

    assert set(rows["round"]) == {ROUNDS}
    assert set(rows.silo) == {"global"} | {s.name for s in in_base.spec.silos}
    for run_id, summary in in_base.summaries.items():
        run = rows[rows.run == run_id]
        silos = run[(run.silo != "global") & (run.metric == "accuracy")]
        pooled = (silos.value * silos.n_samples).sum() / silos.n_samples.sum()
        assert pooled == pytest.approx(summary["final_metrics"]["accuracy"], abs=1e-12)
        overall = run[run.silo == "global"]
        assert (
            dict(zip(overall.metric, overall.value, strict=True))
            == summary["final_metrics"]
        )
        assert overall.n_samples.iloc[0] == len(in_base.test)


def test_latest_complete_round_ignores_a_torn_round(
    federation: Federation, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: a copy of the store where one run crashed in round 4, after
    # metrics.parquet and before _SUCCESS.
    shutil.copytree(federation.base / "checkpoints", tmp_path / "checkpoints")
    monkeypatch.chdir(tmp_path)
    torn_run = sorted(federation.summaries)[0]
    run_dir = tmp_path / "checkpoints" / f"federation={NAME}" / f"run={torn_run}"
    torn = run_dir / "round=00004"
    torn.mkdir()
    shutil.copy(run_dir / "round=00003" / "metrics.parquet", torn)
    # Execute
    latest = _sql(LATEST_COMPLETE_ROUND).fetchall()
    everything = _sql(WHOLE_STORE_QUERY).df()
    complete = _sql(COMPLETE_ROUNDS_ONLY).df()
    # Assert
    assert latest == [(NAME, run, ROUNDS) for run in sorted(federation.summaries)]
    assert "00004" in set(everything["round"])  # the one query sees it ...
    assert "00004" not in set(complete["round"])  # ... this one does not
    pd.testing.assert_frame_equal(_canonical(complete), federation.expected_curve())


def test_bytes_per_silo(in_base: Federation) -> None:
    rows = _sql(BYTES_PER_SILO).df()

    assert set(rows.silo) == {s.name for s in in_base.spec.silos}
    for run_id, results in in_base.results.items():
        run = rows[rows.run == run_id]
        assert run.bytes_up.sum() == sum(r.bytes_up for r in results)
        assert run.bytes_down.sum() == sum(r.bytes_down for r in results)
        # Every silo sends an update of the global model's size each round.
        assert (run.bytes_up > 0).all()
        assert run.bytes_up.nunique() == 1


def test_latest_model_scores_the_pooled_test_rows_at_the_federated_accuracy(
    in_base: Federation,
) -> None:
    latest_run = sorted(in_base.summaries)[-1]

    accuracy = _exec(LOAD_SNIPPET, test=in_base.test)["accuracy"]

    expected = in_base.summaries[latest_run]["final_metrics"]["accuracy"]
    assert accuracy == pytest.approx(expected, abs=1e-12)
    assert accuracy > 0.85
