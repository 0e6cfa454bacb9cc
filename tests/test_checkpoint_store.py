"""Tests of the checkpoint store: layout, round trips, atomicity, errors."""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import fsspec
import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from fedsilo.errors import CheckpointError
from tasks.store import checkpoints as checkpoint_store
from tasks.store.checkpoints import (
    METRICS_SCHEMA,
    CheckpointStore,
    MetricRow,
    list_runs,
    metrics_table,
    migrate_store,
    new_run_id,
    params_to_table,
    table_to_params,
)
from tasks.store.tables import MANIFEST_SCHEMA, TREES_SCHEMA, trees_table

FED = "fed-a"
RUN_1 = "20261129T150102Z-3fa9c1"
RUN_2 = "20261129T160000Z-000aaa"


def _metrics(round_number: int) -> list[MetricRow]:
    return [
        MetricRow("global", "test", "accuracy", 0.5 + round_number / 10, 30),
        MetricRow("global", "train", "accuracy", 0.6 + round_number / 10, 70),
        MetricRow("hospital-a", "test", "accuracy", 0.4, 10),
    ]


def _params(round_number: int) -> dict[str, np.ndarray]:
    return {
        "coef": np.full((2, 3), float(round_number)),
        "intercept": np.array([round_number], dtype=np.float32),
    }


def _trees(scale: float = 1.0) -> pd.DataFrame:
    """One split and its two leaves, as ``trees_dataframe`` gives them."""
    return pd.DataFrame(
        {
            "Tree": [0, 0, 0],
            "Node": [0, 1, 2],
            "ID": ["0-0", "0-1", "0-2"],
            "Feature": ["x0", "Leaf", "Leaf"],
            "Split": [0.5, np.nan, np.nan],
            "Yes": ["0-1", np.nan, np.nan],
            "No": ["0-2", np.nan, np.nan],
            "Missing": ["0-1", np.nan, np.nan],
            "Gain": [3.0 * scale, -0.25 * scale, 0.5 * scale],
            "Cover": [10.0, 6.0, 4.0],
            "Category": [np.nan, np.nan, np.nan],
        }
    ).astype({"Tree": "int64", "Node": "int64", "Category": "float64"})


def _tree_table(scale: float = 1.0) -> pa.Table:
    return pa.Table.from_pandas(_trees(scale), preserve_index=False)


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def memory_root() -> Iterator[str]:
    root = f"memory://fedsilo-test-{uuid.uuid4().hex}"
    yield root
    fs = fsspec.filesystem("memory")
    if fs.exists(root):
        fs.rm(root, recursive=True)


PARAM_CASES: dict[str, np.ndarray] = {
    "float64": np.array([0.1, -0.0, np.inf, np.nan, 1e-300], dtype=np.float64),
    "float32": np.array([1.5, -2.25, np.float32(1e-7)], dtype=np.float32),
    "int64": np.array([-(2**53), 0, 7, 2**53], dtype=np.int64),
    "zero_d": np.array(3.25),
    "zero_d_int": np.array(-4, dtype=np.int64),
    "two_d": np.arange(12, dtype=np.float64).reshape(3, 4),
    "two_d_fortran": np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3)),
    "empty": np.empty((0,), dtype=np.float64),
    "empty_2d": np.empty((0, 5), dtype=np.float32),
    "bool": np.array([[True, False]]),
}


@pytest.mark.parametrize("name", list(PARAM_CASES))
def test_params_table_roundtrip_is_exact(name: str) -> None:
    # Prepare
    original = PARAM_CASES[name]
    # Execute
    restored = table_to_params(params_to_table({name: original}))[name]
    # Assert
    assert restored.dtype == original.dtype
    assert restored.shape == original.shape
    np.testing.assert_array_equal(restored, original, strict=True)
    assert np.array_equal(np.signbit(restored), np.signbit(original))


def test_params_table_is_long_format_in_c_order() -> None:
    # Prepare
    params = {"w": np.array([[1.0, 2.0], [3.0, 4.0]]), "b": np.array(9.0)}
    # Execute
    table = params_to_table(params)
    # Assert
    assert table.column_names == ["tensor", "flat_index", "value"]
    assert table.column("tensor").to_pylist() == ["w"] * 4 + ["b"]
    assert table.column("flat_index").to_pylist() == [0, 1, 2, 3, 0]
    assert table.column("value").to_pylist() == [1.0, 2.0, 3.0, 4.0, 9.0]
    spec = json.loads(table.schema.metadata[b"fedsilo.tensors"])
    assert spec == {
        "w": {"shape": [2, 2], "dtype": "float64"},
        "b": {"shape": [], "dtype": "float64"},
    }


def test_table_to_params_accepts_any_row_order() -> None:
    # Prepare
    params = {"a": np.arange(5, dtype=np.int64), "b": np.ones((2, 2))}
    table = params_to_table(params)
    shuffled = table.take(pa.array(np.random.default_rng(0).permutation(len(table))))
    # Execute
    restored = table_to_params(shuffled)
    # Assert
    assert list(restored) == ["a", "b"]
    for key, value in params.items():
        np.testing.assert_array_equal(restored[key], value, strict=True)


def test_params_to_table_rejects_integers_float64_cannot_hold() -> None:
    # Prepare
    params = {"big": np.array([2**53 + 1], dtype=np.int64)}
    # Execute / Assert
    with pytest.raises(CheckpointError, match="'big'"):
        params_to_table(params)


def test_params_to_table_rejects_non_numeric_dtype() -> None:
    # Prepare
    params = {"labels": np.array(["a", "b"])}
    # Execute / Assert
    with pytest.raises(CheckpointError, match=r"'labels'.*dtype"):
        params_to_table(params)


def test_table_to_params_detects_missing_rows() -> None:
    # Prepare
    table = params_to_table({"w": np.arange(4, dtype=np.float64)}).slice(0, 3)
    # Execute / Assert
    with pytest.raises(CheckpointError, match="'w' has 3 values"):
        table_to_params(table)


def test_store_roundtrips_params_exactly(tmp_path: Path) -> None:
    # Prepare
    store = CheckpointStore(str(tmp_path), FED, RUN_1)
    # Execute
    store.write_round(0, _metrics(0), PARAM_CASES)
    restored = store.read_params(0)
    # Assert
    assert list(restored) == list(PARAM_CASES)
    for key, value in PARAM_CASES.items():
        np.testing.assert_array_equal(restored[key], value, strict=True)


def test_metrics_table_has_exact_schema() -> None:
    # Prepare
    frame = pd.DataFrame(
        {
            "n_samples": np.array([5], dtype=np.int32),
            "value": [1],
            "metric": ["accuracy"],
            "split": ["test"],
            "silo": pd.Categorical(["global"]),
        }
    )
    # Execute
    table = metrics_table(frame)
    # Assert
    assert table.schema.equals(METRICS_SCHEMA, check_metadata=True)
    assert table.to_pylist() == [
        {
            "silo": "global",
            "split": "test",
            "metric": "accuracy",
            "value": 1.0,
            "n_samples": 5,
        }
    ]


def test_metrics_table_keeps_nan_metric_values() -> None:
    # Prepare
    rows = [MetricRow("global", "test", "roc_auc", float("nan"), 3)]
    # Execute
    table = metrics_table(rows)
    # Assert
    assert np.isnan(table.column("value")[0].as_py())


def _frame(**overrides: object) -> pd.DataFrame:
    columns: dict[str, object] = {
        "silo": ["global"],
        "split": ["test"],
        "metric": ["accuracy"],
        "value": [0.9],
        "n_samples": [10],
    }
    columns.update(overrides)
    return pd.DataFrame({k: v for k, v in columns.items() if v is not None})


@pytest.mark.parametrize(
    ("metrics", "column"),
    [
        (_frame(value=None), "value"),
        (_frame(value=["high"]), "value"),
        (_frame(n_samples=[1.5]), "n_samples"),
        (_frame(n_samples=[-1]), "n_samples"),
        (_frame(silo=[None]), "silo"),
        (_frame(split=[1]), "split"),
        (_frame(round=[1]), "round"),
        ([MetricRow("global", "test", "accuracy", "high", 10)], "value"),  # type: ignore[arg-type]
    ],
    ids=[
        "missing-value",
        "string-value",
        "float-n_samples",
        "negative-n_samples",
        "null-silo",
        "int-split",
        "extra-round",
        "metricrow-string-value",
    ],
)
def test_metrics_table_names_bad_column(metrics: object, column: str) -> None:
    # Execute / Assert
    with pytest.raises(CheckpointError, match=rf"column '{column}'"):
        metrics_table(metrics)


def test_write_round_with_bad_metrics_writes_nothing(tmp_path: Path) -> None:
    # Prepare
    store = CheckpointStore(str(tmp_path), FED, RUN_1)
    # Execute
    with pytest.raises(CheckpointError, match="'value'"):
        store.write_round(0, _frame(value=["high"]), _params(0))
    # Assert
    assert _tree(tmp_path) == {}


def test_metrics_table_rejects_null_among_strings() -> None:
    # Prepare
    frame = pd.DataFrame(
        {
            "silo": ["global", None],
            "split": ["test", "test"],
            "metric": ["accuracy", "accuracy"],
            "value": [0.5, 0.6],
            "n_samples": [1, 2],
        }
    )
    # Execute / Assert
    with pytest.raises(CheckpointError, match=r"column 'silo' has 1 missing"):
        metrics_table(frame)


def _write_two_runs(root: str) -> None:
    for run in (RUN_1, RUN_2):
        store = CheckpointStore(root, FED, run)
        for round_number in (0, 1):
            store.write_round(round_number, _metrics(round_number), _params(0))


def test_duckdb_reads_the_whole_store(tmp_path: Path) -> None:
    # Prepare
    _write_two_runs(str(tmp_path))
    query = (
        "SELECT federation, run, round, silo, metric, value "
        f"FROM read_parquet('{tmp_path}/**/metrics.parquet', hive_partitioning = true) "
        "WHERE silo = 'global' AND split = 'test' ORDER BY round;"
    )
    # Execute
    relation = duckdb.sql(query)
    assert relation is not None
    rows = relation.fetchall()
    # Assert
    assert len(rows) == 4
    assert {r[0] for r in rows} == {FED}
    assert sorted((r[1], int(r[2])) for r in rows) == [
        (RUN_1, 0),
        (RUN_1, 1),
        (RUN_2, 0),
        (RUN_2, 1),
    ]
    assert [int(r[2]) for r in rows] == [0, 0, 1, 1]
    assert {(r[3], r[4]) for r in rows} == {("global", "accuracy")}
    assert [r[5] for r in rows] == pytest.approx([0.5, 0.5, 0.6, 0.6])


def test_pyarrow_dataset_reads_the_whole_store(tmp_path: Path) -> None:
    # Prepare
    _write_two_runs(str(tmp_path))
    files = sorted(str(p) for p in tmp_path.rglob("metrics.parquet"))
    # Execute
    table = ds.dataset(
        files, format="parquet", partitioning="hive", partition_base_dir=str(tmp_path)
    ).to_table(filter=(ds.field("silo") == "global") & (ds.field("split") == "test"))
    # Assert
    frame = table.to_pandas().sort_values(["run", "round"])
    assert frame["federation"].tolist() == [FED] * 4
    assert frame["run"].tolist() == [RUN_1, RUN_1, RUN_2, RUN_2]
    assert frame["round"].tolist() == [0, 1, 0, 1]
    assert frame["value"].tolist() == pytest.approx([0.5, 0.6, 0.5, 0.6])


def test_polars_reads_the_whole_store(tmp_path: Path) -> None:
    # Prepare
    _write_two_runs(str(tmp_path))
    # Execute
    frame = (
        pl.scan_parquet(f"{tmp_path}/**/metrics.parquet", hive_partitioning=True)
        .filter((pl.col("silo") == "global") & (pl.col("split") == "test"))
        .sort("run", "round")
        .collect()
    )
    # Assert
    assert frame["federation"].to_list() == [FED] * 4
    assert frame["run"].to_list() == [RUN_1, RUN_1, RUN_2, RUN_2]
    assert frame["round"].to_list() == [0, 1, 0, 1]
    assert frame["n_samples"].to_list() == [30] * 4


def test_every_parquet_file_carries_metadata(tmp_path: Path) -> None:
    # Prepare
    spec_json = json.dumps({"name": FED, "rounds": 2})
    metadata = {"fedsilo.spec": spec_json, "fedsilo.spec_sha256": "ab" * 32}
    store = CheckpointStore(str(tmp_path), FED, RUN_1, metadata=metadata)
    boosted = CheckpointStore(str(tmp_path), FED, RUN_2, metadata=metadata)
    # Execute
    store.write_round(0, _metrics(0), _params(0))
    store.write_round(1, _metrics(1), _params(1))
    boosted.write_round(1, _metrics(1), model_table=_tree_table(), model_json="{}")
    # Assert
    files = sorted(tmp_path.rglob("*.parquet"))
    assert [p.name for p in files].count("manifest.parquet") == 2
    assert len(files) == 2 + 2 * 2 + 2
    for path in files:
        kv = pq.ParquetFile(path).metadata.metadata
        assert kv[b"fedsilo.spec"] == spec_json.encode()
        assert kv[b"fedsilo.spec_sha256"] == b"ab" * 32
        if path.name == "manifest.parquet":  # the run's latest round
            round_number = 1
        else:
            round_number = int(path.parent.name.split("=")[1])
        assert kv[b"fedsilo.round"] == str(round_number).encode()
        assert kv[b"fedsilo.federation"] == FED.encode()
        assert kv[b"fedsilo.run"] in (RUN_1.encode(), RUN_2.encode())
        versions = json.loads(kv[b"fedsilo.versions"])
        assert set(versions) == {
            "fedsilo",
            "numpy",
            "pyarrow",
            "pandas",
            "scikit-learn",
        }
        assert versions["numpy"] == np.__version__
        assert versions["pyarrow"] == pa.__version__
    assert store.read_metadata(1)["fedsilo.spec"] == spec_json


def test_metadata_cannot_override_store_keys(tmp_path: Path) -> None:
    # Execute / Assert
    with pytest.raises(CheckpointError, match=r"fedsilo\.round"):
        CheckpointStore(str(tmp_path), FED, RUN_1, metadata={"fedsilo.round": "7"})


def test_tree_table_goes_to_trees_parquet_and_reads_back(tmp_path: Path) -> None:
    # Prepare
    store = CheckpointStore(str(tmp_path), FED, RUN_1)
    booster_json = '{"learner": {"gradient_booster": {}}}'
    # Execute
    store.write_round(
        0, _metrics(0), model_table=_tree_table(), model_json=booster_json
    )
    # Assert
    round_dir = Path(store.round_path(0))
    assert sorted(p.name for p in round_dir.iterdir()) == [
        "_SUCCESS",
        "metrics.parquet",
        "model.json",
        "trees.parquet",
    ]
    trees = store.read_trees(0)
    assert trees.schema.equals(TREES_SCHEMA)
    assert (
        pq.read_schema(round_dir / "trees.parquet")
        .remove_metadata()
        .equals(TREES_SCHEMA)
    )
    assert trees.column("Gain").to_pylist() == [3.0, -0.25, 0.5]
    assert trees.column("Yes").to_pylist() == ["0-1", None, None]
    assert store.read_model_json(0) == booster_json
    with pytest.raises(CheckpointError, match=r"holds trees \(trees\.parquet\)"):
        store.read_params(0)


def test_reading_trees_of_an_averaged_round_names_the_round(tmp_path: Path) -> None:
    # Prepare
    store = CheckpointStore(str(tmp_path), FED, RUN_1)
    store.write_round(0, _metrics(0), _params(0))
    # Execute / Assert
    with pytest.raises(CheckpointError, match=re.escape(store.round_path(0))):
        store.read_trees(0)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.drop_columns(["Cover"]), r"missing column 'Cover'"),
        (lambda t: t.append_column("extra", pa.array([1, 2, 3])), r"unexpected.*extra"),
        (
            lambda t: t.set_column(0, "Tree", pa.array(["a", "b", "c"])),
            r"column 'Tree' cannot be cast to int64",
        ),
        (
            lambda t: t.set_column(3, "Feature", pa.array(["x0", None, "Leaf"])),
            r"column 'Feature' has 1 missing",
        ),
    ],
)
def test_a_bad_tree_table_is_refused_naming_the_column(
    tmp_path: Path, change: Any, message: str
) -> None:
    # Prepare
    store = CheckpointStore(str(tmp_path), FED, RUN_1)
    # Execute / Assert
    with pytest.raises(CheckpointError, match=message):
        store.write_round(0, _metrics(0), model_table=change(_tree_table()))
    assert _tree(tmp_path) == {}


def test_read_back_metrics_and_rounds(tmp_path: Path) -> None:
    # Prepare
    store = CheckpointStore(str(tmp_path), FED, RUN_1)
    assert store.latest_complete_round() is None
    # Execute
    path = store.write_round(np.int64(3), _metrics(3), _params(3))  # type: ignore[arg-type]
    store.write_round(1, _metrics(1), _params(1))
    # Assert
    assert path == str(tmp_path / f"federation={FED}" / f"run={RUN_1}" / "round=00003")
    assert path == store.round_path(3)
    assert store.complete_rounds() == [1, 3]
    assert store.latest_complete_round() == 3
    assert store.read_model_json(3) is None
    frame = store.read_metrics(3)
    assert list(frame.columns) == METRICS_SCHEMA.names
    assert frame["silo"].tolist() == ["global", "global", "hospital-a"]
    assert frame["value"].tolist() == pytest.approx([0.8, 0.9, 0.4])


def test_torn_write_is_incomplete_and_can_be_rewritten(tmp_path: Path) -> None:
    # Prepare
    store = CheckpointStore(str(tmp_path), FED, RUN_1)
    store.write_round(0, _metrics(0), _params(0))
    torn = Path(store.round_path(1))
    torn.mkdir()
    good = (Path(store.round_path(0)) / "metrics.parquet").read_bytes()
    (torn / "metrics.parquet").write_bytes(good[: len(good) // 2])
    (torn / "model.json").write_text("stale")
    # Execute
    rounds_before = store.complete_rounds()
    runs_before = list_runs(str(tmp_path), FED)
    with pytest.raises(CheckpointError, match=re.escape(str(torn))):
        store.read_params(1)
    store.write_round(1, _metrics(1), _params(1))
    # Assert
    assert rounds_before == [0]
    assert runs_before == [RUN_1]
    assert store.complete_rounds() == [0, 1]
    assert store.read_model_json(1) is None  # stale leftover removed
    assert sorted(p.name for p in torn.iterdir()) == [
        "_SUCCESS",
        "metrics.parquet",
        "model.parquet",
    ]
    assert store.read_metrics(1)["value"].iloc[0] == pytest.approx(0.6)


def test_torn_run_is_not_listed(tmp_path: Path) -> None:
    # Prepare
    CheckpointStore(str(tmp_path), FED, RUN_2).write_round(0, _metrics(0), _params(0))
    torn = tmp_path / f"federation={FED}" / f"run={RUN_1}" / "round=00000"
    torn.mkdir(parents=True)
    (torn / "model.parquet").write_bytes(b"PAR1")
    # Execute
    runs = list_runs(str(tmp_path), FED)
    # Assert
    assert runs == [RUN_2]


def test_writing_a_complete_round_twice_raises_and_keeps_files(tmp_path: Path) -> None:
    # Prepare
    store = CheckpointStore(str(tmp_path), FED, RUN_1)
    store.write_round(0, _metrics(0), _params(0), model_json="{}")
    before = _tree(tmp_path)
    # Execute
    with pytest.raises(CheckpointError, match=r"already complete.*round=00000"):
        store.write_round(0, _metrics(5), _params(5), model_json='{"new": 1}')
    # Assert
    assert _tree(tmp_path) == before


def test_failure_mid_round_leaves_earlier_rounds_and_no_temp_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare
    store = CheckpointStore(str(tmp_path), FED, RUN_1)
    store.write_round(0, _metrics(0), _params(0))
    before = _tree(tmp_path)
    real_replace = os.replace

    def failing_replace(src: str, dst: str) -> None:
        if dst.endswith("metrics.parquet"):
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(checkpoint_store.os, "replace", failing_replace)
    # Execute
    with pytest.raises(CheckpointError, match=r"round=00001/metrics\.parquet"):
        store.write_round(1, _metrics(1), _params(1))
    # Assert
    after = _tree(tmp_path)
    # Round 0 and the manifest (which still says round 0) are as they were.
    assert {k: v for k, v in after.items() if "round=00001" not in k} == before
    assert store.complete_rounds() == [0]
    assert not [name for name in after if "tmp" in name]


def test_memory_url_end_to_end(memory_root: str) -> None:
    # Prepare
    store = CheckpointStore(memory_root, FED, RUN_1, metadata={"k": "v"})
    # Execute
    path = store.write_round(0, _metrics(0), _params(2), model_json="{}")
    store.write_round(1, _metrics(1), _params(3))
    # Assert
    assert path.startswith("memory://") and path.endswith(f"run={RUN_1}/round=00000")
    assert store.run_path.startswith("memory://")
    assert store.complete_rounds() == [0, 1]
    assert list_runs(memory_root, FED) == [RUN_1]
    np.testing.assert_array_equal(store.read_params(1)["coef"], np.full((2, 3), 3.0))
    assert store.read_metrics(0)["n_samples"].tolist() == [30, 70, 10]
    assert store.read_model_json(0) == "{}"
    assert store.read_metadata(1)["k"] == "v"
    with pytest.raises(CheckpointError, match="already complete"):
        store.write_round(1, _metrics(1), _params(3))


def test_unwritable_root_raises_naming_the_path(tmp_path: Path) -> None:
    # Prepare
    blocker = tmp_path / "checkpoints"
    blocker.write_text("a file where the store's directory should be")
    store = CheckpointStore(str(blocker), FED, RUN_1)
    # Execute
    with pytest.raises(CheckpointError, match=re.escape(str(blocker))) as info:
        store.write_round(0, _metrics(0), _params(0))
    # Assert
    assert "round=00000" in info.value.reason
    assert blocker.read_text() == "a file where the store's directory should be"


def test_blocked_run_leaves_other_runs_unchanged(tmp_path: Path) -> None:
    # Prepare
    CheckpointStore(str(tmp_path), FED, RUN_1).write_round(0, _metrics(0), _params(0))
    blocked = tmp_path / f"federation={FED}" / f"run={RUN_2}"
    blocked.write_text("in the way")
    before = _tree(tmp_path)
    store = CheckpointStore(str(tmp_path), FED, RUN_2)
    # Execute
    with pytest.raises(CheckpointError, match=re.escape(str(blocked))):
        store.write_round(0, _metrics(0), _params(0))
    # Assert
    assert _tree(tmp_path) == before
    assert list_runs(str(tmp_path), FED) == [RUN_1]


def test_read_of_missing_round_names_the_path(tmp_path: Path) -> None:
    # Prepare
    store = CheckpointStore(str(tmp_path), FED, RUN_1)
    # Execute / Assert
    with pytest.raises(CheckpointError, match=re.escape(store.round_path(4))):
        store.read_metrics(4)


@pytest.mark.parametrize(
    ("federation", "run_id"),
    [("fed/a", RUN_1), (FED, "run=1"), ("", RUN_1), (FED, "../x")],
)
def test_unsafe_names_are_rejected(
    tmp_path: Path, federation: str, run_id: str
) -> None:
    # Execute / Assert
    with pytest.raises(CheckpointError, match="must match"):
        CheckpointStore(str(tmp_path), federation, run_id)


@pytest.mark.parametrize("round_number", [-1, 100_000, True, 1.0])
def test_bad_round_numbers_are_rejected(tmp_path: Path, round_number: object) -> None:
    # Prepare
    store = CheckpointStore(str(tmp_path), FED, RUN_1)
    # Execute / Assert
    with pytest.raises(CheckpointError, match="round number"):
        store.write_round(round_number, _metrics(0), _params(0))  # type: ignore[arg-type]


def test_write_round_needs_exactly_one_model(tmp_path: Path) -> None:
    # Prepare
    store = CheckpointStore(str(tmp_path), FED, RUN_1)
    # Execute / Assert
    with pytest.raises(CheckpointError, match="exactly one"):
        store.write_round(0, _metrics(0))
    with pytest.raises(CheckpointError, match="exactly one"):
        store.write_round(0, _metrics(0), _params(0), model_table=pa.table({"a": [1]}))
    assert _tree(tmp_path) == {}


def test_new_run_id_is_sortable_and_unique() -> None:
    # Execute
    ids = [new_run_id() for _ in range(50)]
    # Assert
    assert all(re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{6}", i) for i in ids)
    assert len(set(ids)) == 50
    stamps = [i.split("-")[0] for i in ids]
    assert stamps == sorted(stamps)


def test_list_runs_is_sorted_and_empty_for_unknown_federation(tmp_path: Path) -> None:
    # Prepare
    for run in (RUN_2, RUN_1):
        CheckpointStore(str(tmp_path), FED, run).write_round(0, _metrics(0), _params(0))
    # Execute
    runs = list_runs(str(tmp_path), FED)
    other = list_runs(str(tmp_path), "other")
    # Assert
    assert runs == [RUN_1, RUN_2]
    assert other == []


# --- manifest.parquet ----------------------------------------------------------


def _run_metadata(kind: str, rounds: int) -> dict[str, str]:
    """What a training run gives its store (spec, hash, model), in miniature."""
    spec = {"name": FED, "task": "classification", "rounds": rounds}
    metadata = {
        "fedsilo.spec": json.dumps(spec),
        "fedsilo.spec_hash": "0123456789abcdef",
        "fedsilo.model": json.dumps({"kind": kind, "params": {}}),
    }
    if kind == "xgboost":
        metadata["fedsilo.xgboost_version"] = "9.9.9"
    return metadata


def test_manifest_is_one_row_of_plain_columns_kept_up_to_date(tmp_path: Path) -> None:
    # Prepare
    metadata = _run_metadata("sgd-logistic", rounds=2)
    store = CheckpointStore(str(tmp_path), FED, RUN_1, metadata=metadata)
    path = tmp_path / f"federation={FED}" / f"run={RUN_1}" / "manifest.parquet"
    # Execute
    store.write_round(1, _metrics(1), _params(1))
    after_one = store.read_manifest()
    store.write_round(2, _metrics(2), _params(2))
    after_two = store.read_manifest()
    # Assert
    assert after_one is not None and after_two is not None
    assert (after_one["status"], after_one["last_round"]) == ("partial", 1)
    table = pq.read_table(path)
    assert table.schema.remove_metadata().equals(MANIFEST_SCHEMA)
    assert table.num_rows == 1
    assert after_two["updated_at"] >= after_one["updated_at"]
    assert after_two["updated_at"].tzinfo is not None
    del after_two["updated_at"]
    assert after_two == {
        "model_kind": "sgd-logistic",
        "task": "classification",
        "model_file": "model.parquet",
        "status": "complete",
        "last_round": 2,
        "rounds_done": 2,
        "rounds_planned": 2,
        "spec_hash": "0123456789abcdef",
        "fedsilo_version": json.loads(store.read_metadata(2)["fedsilo.versions"])[
            "fedsilo"
        ],
        "numpy_version": np.__version__,
        "pyarrow_version": pa.__version__,
        "pandas_version": pd.__version__,
        "sklearn_version": json.loads(store.read_metadata(2)["fedsilo.versions"])[
            "scikit-learn"
        ],
        "xgboost_version": None,
        "spec": metadata["fedsilo.spec"],
    }
    assert table.schema.metadata[b"fedsilo.round"] == b"2"
    assert table.schema.metadata[b"fedsilo.spec_hash"] == b"0123456789abcdef"


def test_manifest_of_a_boosted_run_names_trees_parquet(tmp_path: Path) -> None:
    # Prepare
    metadata = _run_metadata("xgboost", rounds=3)
    store = CheckpointStore(str(tmp_path), FED, RUN_2, metadata=metadata)
    # Execute
    store.write_round(1, _metrics(1), model_table=_tree_table(), model_json="{}")
    manifest = store.read_manifest()
    # Assert
    assert manifest is not None
    assert manifest["model_kind"] == "xgboost"
    assert manifest["model_file"] == "trees.parquet"
    assert manifest["xgboost_version"] == "9.9.9"
    assert (manifest["status"], manifest["rounds_planned"]) == ("partial", 3)


def test_store_without_spec_metadata_leaves_the_spec_columns_null(
    memory_root: str,
) -> None:
    # Prepare
    store = CheckpointStore(memory_root, FED, RUN_1)
    assert store.read_manifest() is None
    # Execute
    store.write_round(0, _metrics(0), _params(0))
    store.write_round(3, _metrics(3), _params(3))
    manifest = store.read_manifest()
    # Assert
    assert manifest is not None
    assert (manifest["last_round"], manifest["rounds_done"]) == (3, 2)
    assert manifest["model_kind"] is None
    assert manifest["rounds_planned"] is None
    assert manifest["status"] == "partial"


def test_each_file_name_holds_one_schema_across_runs_of_both_kinds(
    tmp_path: Path,
) -> None:
    # Prepare
    averaged = CheckpointStore(str(tmp_path), FED, RUN_1)
    boosted = CheckpointStore(str(tmp_path), FED, RUN_2)
    for round_number in (1, 2):
        averaged.write_round(round_number, _metrics(round_number), _params(1))
        boosted.write_round(
            round_number, _metrics(round_number), model_table=_tree_table()
        )
    expected = {
        "model.parquet": ["tensor", "flat_index", "value"],
        "trees.parquet": TREES_SCHEMA.names,
        "metrics.parquet": METRICS_SCHEMA.names,
        "manifest.parquet": MANIFEST_SCHEMA.names,
    }
    # Execute
    found: dict[str, set[tuple[str, ...]]] = {}
    for path in tmp_path.rglob("*.parquet"):
        names = tuple(pq.read_schema(path).names)
        found.setdefault(path.name, set()).add(names)
    # Assert
    assert found == {name: {tuple(cols)} for name, cols in expected.items()}
    rows = duckdb.sql(
        "SELECT DISTINCT run FROM read_parquet("
        f"'{tmp_path}/federation=*/run=*/round=*/model.parquet', "
        "hive_partitioning = true)"
    ).fetchall()
    assert rows == [(RUN_1,)]


# --- stores written before trees.parquet and manifest.parquet ------------------


def _write_legacy_round(
    root: Path, run: str, round_number: int, model: pa.Table, kind: str
) -> None:
    """Write a round as fedsilo did before: trees in model.parquet, no manifest."""
    round_dir = root / f"federation={FED}" / f"run={run}" / f"round={round_number:05d}"
    round_dir.mkdir(parents=True)
    metadata = {
        **_run_metadata(kind, rounds=3),
        "fedsilo.federation": FED,
        "fedsilo.run": run,
        "fedsilo.round": str(round_number),
        "fedsilo.versions": json.dumps({"fedsilo": "0.0.9", "numpy": "1.0"}),
    }

    def with_kv(table: pa.Table) -> pa.Table:
        merged = dict(table.schema.metadata or {})
        merged.update({k.encode(): v.encode() for k, v in metadata.items()})
        return table.replace_schema_metadata(merged)

    pq.write_table(with_kv(model), round_dir / "model.parquet")
    if kind == "xgboost":
        (round_dir / "model.json").write_text(json.dumps({"round": round_number}))
    pq.write_table(
        with_kv(metrics_table(_metrics(round_number))), round_dir / "metrics.parquet"
    )
    (round_dir / "_SUCCESS").write_text(json.dumps({"round": round_number}))


def _legacy_store(root: Path) -> None:
    """Two rounds of an averaged run (RUN_1) and a boosted run (RUN_2)."""
    for round_number in (1, 2):
        _write_legacy_round(
            root, RUN_1, round_number, params_to_table(_params(round_number)), "sgd"
        )
        _write_legacy_round(
            root, RUN_2, round_number, _tree_table(round_number), "xgboost"
        )


def test_readers_accept_a_store_in_the_earlier_layout(tmp_path: Path) -> None:
    # Prepare
    _legacy_store(tmp_path)
    before = _tree(tmp_path)
    averaged = CheckpointStore(str(tmp_path), FED, RUN_1)
    boosted = CheckpointStore(str(tmp_path), FED, RUN_2)
    # Execute
    runs = list_runs(str(tmp_path), FED)
    params = averaged.read_params(2)
    trees = boosted.read_trees(2)
    # Assert
    assert runs == [RUN_1, RUN_2]
    np.testing.assert_array_equal(params["coef"], _params(2)["coef"])
    assert trees.schema.equals(TREES_SCHEMA)
    assert trees.column("Gain").to_pylist() == [6.0, -0.5, 1.0]
    assert boosted.read_model_json(2) == '{"round": 2}'
    assert averaged.read_manifest() is None
    assert _tree(tmp_path) == before  # reading changes nothing


def test_migrate_store_moves_trees_and_writes_manifests_once(tmp_path: Path) -> None:
    # Prepare
    _legacy_store(tmp_path)
    run_2 = tmp_path / f"federation={FED}" / f"run={RUN_2}"
    old_kv = pq.read_schema(run_2 / "round=00002" / "model.parquet").metadata
    # Execute
    changed = migrate_store(str(tmp_path))
    again = migrate_store(str(tmp_path))
    # Assert
    assert sorted(changed) == [f"{FED}/{RUN_1}", f"{FED}/{RUN_2}"]
    assert len(changed[f"{FED}/{RUN_1}"]) == 1  # the manifest only
    assert len(changed[f"{FED}/{RUN_2}"]) == 3  # two trees.parquet, the manifest
    assert again == {}
    for round_dir in sorted(run_2.glob("round=*")):
        assert sorted(p.name for p in round_dir.iterdir()) == [
            "_SUCCESS",
            "metrics.parquet",
            "model.json",
            "trees.parquet",
        ]
    schema = pq.read_schema(run_2 / "round=00002" / "trees.parquet")
    assert schema.remove_metadata().equals(TREES_SCHEMA)
    assert {k: v for k, v in schema.metadata.items() if k.startswith(b"fedsilo.")} == {
        k: v for k, v in old_kv.items() if k.startswith(b"fedsilo.")
    }
    boosted = CheckpointStore(str(tmp_path), FED, RUN_2).read_manifest()
    averaged = CheckpointStore(str(tmp_path), FED, RUN_1).read_manifest()
    assert boosted is not None and averaged is not None
    assert (boosted["model_file"], boosted["last_round"]) == ("trees.parquet", 2)
    assert boosted["fedsilo_version"] == "0.0.9"  # the version that wrote it
    assert (averaged["model_file"], averaged["model_kind"]) == ("model.parquet", "sgd")


def test_migrate_finishes_a_migration_stopped_between_its_two_files(
    tmp_path: Path,
) -> None:
    # Prepare: trees.parquet written, the old model.parquet not yet removed.
    _legacy_store(tmp_path)
    round_dir = tmp_path / f"federation={FED}" / f"run={RUN_2}" / "round=00001"
    pq.write_table(trees_table(_tree_table(1.0)), round_dir / "trees.parquet")
    # Execute
    migrate_store(str(tmp_path))
    # Assert
    assert not (round_dir / "model.parquet").exists()
    assert CheckpointStore(str(tmp_path), FED, RUN_2).read_trees(1).num_rows == 3


def test_first_write_to_a_run_in_the_earlier_layout_migrates_it(
    tmp_path: Path,
) -> None:
    # Prepare: resuming the boosted run writes its round 3.
    _legacy_store(tmp_path)
    store = CheckpointStore(
        str(tmp_path), FED, RUN_2, metadata=_run_metadata("xgboost", rounds=3)
    )
    # Execute
    store.write_round(3, _metrics(3), model_table=_tree_table(3.0), model_json="{}")
    # Assert
    run_dir = tmp_path / f"federation={FED}" / f"run={RUN_2}"
    assert sorted(p.parent.name for p in run_dir.rglob("trees.parquet")) == [
        "round=00001",
        "round=00002",
        "round=00003",
    ]
    assert not list(run_dir.rglob("model.parquet"))
    manifest = store.read_manifest()
    assert manifest is not None
    assert (manifest["last_round"], manifest["rounds_done"]) == (3, 3)
    assert manifest["status"] == "complete"
    other = tmp_path / f"federation={FED}" / f"run={RUN_1}"
    assert not (other / "manifest.parquet").exists()  # another run: untouched


def test_cli_migrate_says_what_it_did_in_one_line_per_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    from fedsilo.cli import main

    _legacy_store(tmp_path)
    # Execute
    first = main(["migrate", str(tmp_path)])
    first_out = capsys.readouterr().out.splitlines()
    second = main(["migrate", str(tmp_path)])
    second_out = capsys.readouterr().out.splitlines()
    # Assert
    assert (first, second) == (0, 0)
    assert first_out == [
        f"{FED}/{RUN_1}: wrote 1 file(s)",
        f"{FED}/{RUN_2}: wrote 3 file(s)",
        f"{tmp_path}: 2 run(s) migrated; the rest were current",
    ]
    assert second_out == [f"{tmp_path}: 0 run(s) migrated; the rest were current"]
