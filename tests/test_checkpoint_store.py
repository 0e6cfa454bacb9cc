"""Tests of the checkpoint store: layout, round trips, atomicity, errors."""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

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
    new_run_id,
    params_to_table,
    table_to_params,
)

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
    tree_model = pa.table({"tree": [0], "node": [1]})
    # Execute
    store.write_round(0, _metrics(0), _params(0))
    store.write_round(1, _metrics(1), model_table=tree_model, model_json="{}")
    # Assert
    files = sorted(tmp_path.rglob("*.parquet"))
    assert len(files) == 4
    for path in files:
        kv = pq.ParquetFile(path).metadata.metadata
        assert kv[b"fedsilo.spec"] == spec_json.encode()
        assert kv[b"fedsilo.spec_sha256"] == b"ab" * 32
        round_number = int(path.parent.name.split("=")[1])
        assert kv[b"fedsilo.round"] == str(round_number).encode()
        assert kv[b"fedsilo.federation"] == FED.encode()
        assert kv[b"fedsilo.run"] == RUN_1.encode()
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


def test_tree_model_table_and_json_roundtrip(tmp_path: Path) -> None:
    # Prepare
    store = CheckpointStore(str(tmp_path), FED, RUN_1)
    tree_model = pa.table({"tree": [0, 0], "node": [0, 1], "gain": [1.5, 0.0]})
    booster_json = '{"learner": {"gradient_booster": {}}}'
    # Execute
    store.write_round(0, _metrics(0), model_table=tree_model, model_json=booster_json)
    # Assert
    assert store.read_model_table(0).select(["tree", "node", "gain"]).equals(tree_model)
    assert store.read_model_json(0) == booster_json
    with pytest.raises(CheckpointError, match=r"fedsilo\.tensors"):
        store.read_params(0)


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
    assert {k: v for k, v in after.items() if "round=00000" in k} == before
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
