"""Tests of silo sources (Parquet, CSV; local and fsspec) and cross-silo schemas."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
import pytest

from connectors.files import detect_format, read_table
from fedsilo.errors import SiloDataError
from tasks.protocol.messages import SiloSchema
from tasks.silo.schema import check_schemas, column_kind, describe_columns

TARGET = "label"


def _frame(n: int = 5) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "age": np.arange(n, dtype=np.int64) + 20,
            "bmi": np.linspace(18.5, 30.0, n),
            "smoker": [i % 2 == 0 for i in range(n)],
            TARGET: [i % 2 for i in range(n)],
        }
    )


@pytest.fixture
def memory_dir() -> Iterator[str]:
    """A fresh directory in fsspec's in-process memory filesystem."""
    fs = fsspec.filesystem("memory")
    root = f"/fedsilo-test-{uuid.uuid4().hex}"
    fs.mkdir(root)
    yield root
    fs.rm(root, recursive=True)


def _write_memory(root: str, name: str, data: bytes) -> str:
    fs = fsspec.filesystem("memory")
    with fs.open(f"{root}/{name}", "wb") as handle:
        handle.write(data)
    return f"memory://{root}/{name}"


# --- detect_format -----------------------------------------------------------


@pytest.mark.parametrize(
    ("location", "kind"),
    [
        ("train.parquet", "parquet"),
        ("/a/b/TRAIN.PARQUET", "parquet"),
        ("s3://bucket/x/train.pq", "parquet"),
        ("s3://bucket/dataset/", "parquet"),  # a directory of Parquet files
        ("/data/v1.2/train", "parquet"),
        ("train.csv", "csv"),
        ("memory://a/train.csv.gz", "csv"),
    ],
)
def test_detect_format(location: str, kind: str) -> None:
    assert detect_format(location) == kind


@pytest.mark.parametrize("location", ["train.txt", "train.json", "/a/b/train.xlsx"])
def test_detect_format_unknown_suffix(location: str) -> None:
    with pytest.raises(ValueError, match="unknown file type"):
        detect_format(location)


# --- read_table --------------------------------------------------------------


def test_read_parquet_local(tmp_path: Path) -> None:
    expected = _frame()
    path = tmp_path / "train.parquet"
    expected.to_parquet(path)

    frame = read_table("silo-a", str(path))

    pd.testing.assert_frame_equal(frame, expected)


def test_read_csv_local(tmp_path: Path) -> None:
    expected = _frame()
    path = tmp_path / "train.csv"
    expected.to_csv(path, index=False)

    frame = read_table("silo-a", str(path))

    pd.testing.assert_frame_equal(frame, expected)


def test_read_gzipped_csv_local(tmp_path: Path) -> None:
    expected = _frame()
    path = tmp_path / "train.csv.gz"
    expected.to_csv(path, index=False, compression="gzip")

    frame = read_table("silo-a", str(path))

    pd.testing.assert_frame_equal(frame, expected)


def test_read_parquet_memory_url(memory_dir: str) -> None:
    expected = _frame(7)
    url = _write_memory(memory_dir, "train.parquet", expected.to_parquet())

    frame = read_table("silo-a", url, storage_options={})

    pd.testing.assert_frame_equal(frame, expected)


def test_read_csv_memory_url(memory_dir: str) -> None:
    expected = _frame(7)
    url = _write_memory(memory_dir, "train.csv", expected.to_csv(index=False).encode())

    frame = read_table("silo-a", url)

    pd.testing.assert_frame_equal(frame, expected)


def test_column_names_become_strings(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    path.write_text("0,1,label\n1.5,2.5,0\n")

    frame = read_table("silo-a", str(path))

    assert list(frame.columns) == ["0", "1", "label"]
    assert all(isinstance(c, str) for c in frame.columns)


@pytest.mark.parametrize("name", ["train.parquet", "train.csv"])
def test_missing_local_file(tmp_path: Path, name: str) -> None:
    location = str(tmp_path / "absent" / name)

    with pytest.raises(SiloDataError) as info:
        read_table("hospital-b", location)

    assert info.value.silo == "hospital-b"
    assert location in info.value.reason
    assert "hospital-b" in str(info.value)


def test_missing_memory_file(memory_dir: str) -> None:
    location = f"memory://{memory_dir}/nothing.parquet"

    with pytest.raises(SiloDataError) as info:
        read_table("hospital-c", location)

    assert info.value.silo == "hospital-c"
    assert location in info.value.reason


@pytest.mark.parametrize(
    "data",
    [
        b"this is not parquet at all",
        b"PAR1" + b"\x00" * 40,
        _frame().to_parquet()[:-20],
    ],
    ids=["text", "magic-only", "truncated"],
)
def test_corrupt_parquet(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "train.parquet"
    path.write_bytes(data)

    with pytest.raises(SiloDataError) as info:
        read_table("silo-a", str(path))

    assert info.value.silo == "silo-a"
    assert "cannot read" in info.value.reason
    assert str(path) in info.value.reason
    assert "\n" not in info.value.reason  # one line for the CLI


def test_corrupt_parquet_memory(memory_dir: str) -> None:
    url = _write_memory(memory_dir, "train.parquet", b"garbage")

    with pytest.raises(SiloDataError, match="cannot read"):
        read_table("silo-a", url)


def test_empty_csv(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    path.write_bytes(b"")

    with pytest.raises(SiloDataError) as info:
        read_table("silo-a", str(path))

    assert info.value.silo == "silo-a"


def test_unknown_suffix(tmp_path: Path) -> None:
    path = tmp_path / "train.txt"
    path.write_text("a,b\n1,2\n")

    with pytest.raises(SiloDataError) as info:
        read_table("silo-d", str(path))

    assert info.value.silo == "silo-d"
    assert "train.txt" in info.value.reason


# --- describe_columns --------------------------------------------------------


def test_describe_columns_kinds() -> None:
    frame = _frame().assign(
        city=["a", "b", "c", "d", "e"],
        when=pd.date_range("2026-01-01", periods=5),
        score=np.float32(1.0),
    )

    info = {c.name: c for c in describe_columns(frame)}

    assert [c.name for c in describe_columns(frame)] == list(frame.columns)
    assert info["age"].kind == "numeric"
    assert info["bmi"].kind == "numeric"
    assert info["score"].kind == "numeric"
    assert info["smoker"].kind == "bool"
    assert info["city"].kind == "string"
    assert info["when"].kind == "other"
    assert info["bmi"].dtype == "float64"


def test_column_kind_pandas_string_dtype() -> None:
    assert column_kind(pd.Series(["x", "y"], dtype="string")) == "string"


# --- check_schemas -----------------------------------------------------------


def _schema(
    silo: str, frame: pd.DataFrame, n_train: int = 8, n_test: int = 2
) -> SiloSchema:
    return SiloSchema(
        silo=silo,
        worker=f"worker-{silo}",
        columns=describe_columns(frame),
        n_train=n_train,
        n_test=n_test,
    )


def _culprit(schemas: list[SiloSchema], task: str = "classification") -> SiloDataError:
    with pytest.raises(SiloDataError) as info:
        check_schemas(schemas, target=TARGET, task=task)
    return info.value


def test_shared_features_in_order() -> None:
    frame = _frame()
    reordered = frame[["label", "smoker", "bmi", "age"]]
    schemas = [_schema("a", frame), _schema("b", reordered), _schema("c", frame)]

    features = check_schemas(schemas, target=TARGET, task="classification")

    assert features == ["age", "bmi", "smoker"]


def test_int_and_float_features_compatible() -> None:
    frame = _frame()
    floats = frame.assign(age=frame["age"].astype(np.float64))

    features = check_schemas(
        [_schema("a", frame), _schema("b", floats)],
        target=TARGET,
        task="classification",
    )

    assert features == ["age", "bmi", "smoker"]


def test_regression_target_numeric_accepted() -> None:
    frame = _frame().assign(label=np.linspace(0.0, 1.0, 5))

    features = check_schemas(
        [_schema("a", frame), _schema("b", frame)], target=TARGET, task="regression"
    )

    assert features == ["age", "bmi", "smoker"]


def test_missing_feature_at_one_silo() -> None:
    frame = _frame()
    schemas = [
        _schema("a", frame),
        _schema("b", frame),
        _schema("c", frame.drop(columns="bmi")),
    ]

    error = _culprit(schemas)

    assert (error.silo, error.column) == ("c", "bmi")
    assert "missing" in error.reason


def test_missing_feature_at_first_silo_blames_first_silo() -> None:
    frame = _frame()
    schemas = [
        _schema("a", frame.drop(columns="bmi")),
        _schema("b", frame),
        _schema("c", frame),
    ]

    error = _culprit(schemas)

    assert (error.silo, error.column) == ("a", "bmi")


def test_extra_feature_at_one_silo() -> None:
    frame = _frame()
    schemas = [_schema("a", frame), _schema("b", frame.assign(height=1.8))]

    error = _culprit(schemas)

    assert (error.silo, error.column) == ("b", "height")
    assert "unexpected" in error.reason


def test_incompatible_dtype_string_vs_numeric() -> None:
    frame = _frame()
    stringy = frame.assign(bmi=frame["bmi"].astype(str))
    schemas = [_schema("a", frame), _schema("b", frame), _schema("c", stringy)]

    error = _culprit(schemas)

    assert (error.silo, error.column) == ("c", "bmi")
    assert "incompatible" in error.reason


def test_missing_target() -> None:
    frame = _frame()
    schemas = [_schema("a", frame), _schema("b", frame.drop(columns=TARGET))]

    error = _culprit(schemas)

    assert (error.silo, error.column) == ("b", TARGET)
    assert "target" in error.reason


def test_empty_silo() -> None:
    frame = _frame()
    schemas = [_schema("a", frame), _schema("b", frame, n_train=0)]

    error = _culprit(schemas)

    assert error.silo == "b"
    assert error.column is None
    assert "no training rows" in error.reason


def test_silo_without_test_rows() -> None:
    frame = _frame()
    schemas = [_schema("a", frame, n_test=0), _schema("b", frame)]

    error = _culprit(schemas)

    assert error.silo == "a"


def test_non_numeric_feature_everywhere() -> None:
    frame = _frame().assign(city=["x", "y", "z", "x", "y"])
    schemas = [_schema("a", frame), _schema("b", frame)]

    error = _culprit(schemas)

    assert (error.silo, error.column) == ("a", "city")
    assert "numeric" in error.reason


def test_non_numeric_regression_target() -> None:
    frame = _frame().assign(label=np.linspace(0.0, 1.0, 5))
    stringy = frame.assign(label=["a", "b", "c", "d", "e"])
    schemas = [_schema("a", frame), _schema("b", stringy)]

    error = _culprit(schemas, task="regression")

    assert (error.silo, error.column) == ("b", TARGET)


def test_label_dtype_differs_between_silos() -> None:
    frame = _frame()
    stringy = frame.assign(label=frame[TARGET].astype(str))
    schemas = [_schema("a", frame), _schema("b", frame), _schema("c", stringy)]

    error = _culprit(schemas)

    assert (error.silo, error.column) == ("c", TARGET)


def test_no_schemas() -> None:
    with pytest.raises(ValueError, match="no silo schemas"):
        check_schemas([], target=TARGET, task="classification")
