"""Values checked as a silo's rows arrive: infinities, labels, a silo's own class.

The unit tests call the silo's checks on frames; the CLI tests break one silo
file of a real breast-cancer split and run ``fedsilo run`` on the shared
cluster: the run stops before round 1 with one line naming the silo and the
column, and exit code 2.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from fedsilo.errors import SiloDataError
from tasks.protocol.messages import ColumnInfo, SiloSchema
from tasks.silo.data import SiloData, check_values, prepare_silo, silo_moments
from tasks.silo.schema import check_schemas, federation_classes


def _frame(n: int = 12, **columns: Any) -> pd.DataFrame:
    base = {"a": np.linspace(0.0, 1.0, n), "b": np.arange(n) % 3, "y": np.arange(n) % 2}
    return pd.DataFrame({**base, **columns})


def _data(train: pd.DataFrame, test: pd.DataFrame | None = None) -> SiloData:
    return SiloData("hospital-b", train, _frame() if test is None else test, "file")


# --- at the silo ---------------------------------------------------------------


@pytest.mark.parametrize("value", [np.inf, -np.inf])
@pytest.mark.parametrize("split", ["train", "test"])
def test_an_infinite_feature_is_refused_naming_silo_split_and_column(
    value: float, split: str
) -> None:
    broken = _frame()
    broken.loc[4, "a"] = value
    data = _data(broken) if split == "train" else _data(_frame(), broken)

    with pytest.raises(SiloDataError) as caught:
        check_values(data, "y", "classification")

    assert (caught.value.silo, caught.value.column) == ("hospital-b", "a")
    assert f"{split} rows hold infinite values" in caught.value.reason


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_an_infinite_label_is_refused(task: str) -> None:
    broken = _frame(y=np.array([0.0, 1.0, np.inf] * 4))

    with pytest.raises(SiloDataError, match="train labels hold infinite") as caught:
        check_values(_data(broken), "y", task)

    assert caught.value.column == "y"


def test_missing_feature_values_and_nullable_integers_stay_legal() -> None:
    frame = _frame(
        a=[np.nan, *np.linspace(0.0, 1.0, 11)],
        b=pd.array([None, *range(11)], dtype="Int64"),
        flag=[True, False] * 6,
        colour=["red", "blue", None] * 4,
    )

    check_values(_data(frame), "y", "classification")  # no error


def test_labels_mixing_strings_and_numbers_at_one_silo_are_one_clear_error() -> None:
    frame = _frame(y=pd.Series(["benign", 1] * 6, dtype=object))

    with pytest.raises(SiloDataError, match="labels mix strings and numbers") as e:
        check_values(_data(frame), "y", "classification")

    assert e.value.column == "y"


def test_values_too_large_to_standardise_are_refused_by_column() -> None:
    frame = _frame(b=np.full(12, 1e200) * np.arange(12))

    with pytest.raises(SiloDataError, match="too large to standardise") as caught:
        silo_moments(_data(frame), ["a", "b"])

    assert caught.value.column == "b"


def test_missing_features_are_still_refused_for_the_averaged_models() -> None:
    frame = _frame(a=[np.nan, *np.linspace(0.0, 1.0, 11)])

    with pytest.raises(SiloDataError, match="missing values; impute"):
        prepare_silo(_data(frame), ["a", "b"], "y", None, None)


# --- across silos (the coordinator sees names, dtypes and label sets) --------


def _schema(silo: str, labels: tuple[Any, ...], kind: str = "numeric") -> SiloSchema:
    dtype = {"numeric": "int64", "string": "object"}[kind]
    columns = (ColumnInfo("a", "float64", "numeric"), ColumnInfo("y", dtype, kind))
    return SiloSchema(silo, silo, columns, 10, 3, labels)


def test_string_labels_at_one_silo_and_numbers_at_the_others_name_the_odd_one() -> None:
    schemas = [
        _schema("s0", (0, 1)),
        _schema("s1", ("benign", "malignant"), "string"),
        _schema("s2", (0, 1)),
    ]

    with pytest.raises(SiloDataError) as caught:
        check_schemas(schemas, target="y", task="classification")

    assert (caught.value.silo, caught.value.column) == ("s1", "y")
    assert "labels are strings (dtype object) here but numbers at s0, s2" in str(
        caught.value
    )


def test_a_class_one_silo_alone_holds_is_refused_unless_declared() -> None:
    schemas = [_schema("s0", (0, 1)), _schema("s1", (0, 1)), _schema("s2", (0, 1, 7))]

    with pytest.raises(SiloDataError, match="label 7 is held by this silo alone") as e:
        federation_classes(schemas, "y")
    assert (e.value.silo, e.value.column) == ("s2", "y")

    assert federation_classes(schemas, "y", declared=[0, 1, 7]) == (0, 1, 7)
    assert federation_classes(schemas[:2], "y", declared=[1, 0, 2]) == (0, 1, 2)
    with pytest.raises(SiloDataError, match="label 7 is not among the spec's classes"):
        federation_classes(schemas, "y", declared=[0, 1])


def test_classes_two_silos_share_or_the_caller_knows_are_accepted() -> None:
    skewed = [_schema("s0", (0,)), _schema("s1", (0, 1)), _schema("s2", (1,))]

    assert federation_classes(skewed, "y") == (0, 1)
    assert federation_classes([_schema("s0", (0,))], "y", known=(0, 1)) == (0, 1)
    assert federation_classes([_schema("s0", (0, 1, 2))], "y") == (0, 1, 2)


# --- through the CLI, on real silo files ---------------------------------------


def _federation(source: Path, tmp_path: Path, shared_cluster: str) -> Path:
    out = tmp_path / "federation"
    shutil.copytree(source, out)
    spec = yaml.safe_load((out / "federation.yaml").read_text())
    spec.update(rounds=1, cluster={"address": shared_cluster})
    spec["checkpoints"] = str(tmp_path / "store")
    (out / "federation.yaml").write_text(yaml.safe_dump(spec))
    return out


def _edit(path: Path, change: Any) -> None:
    frame = pd.read_parquet(path)
    change(frame)
    frame.to_parquet(path, index=False)


def _one_line_error(
    federation: Path, capsys: pytest.CaptureFixture[str], *extra: str
) -> str:
    from fedsilo.cli import main

    capsys.readouterr()
    code = main(["run", str(federation / "federation.yaml"), *extra])

    assert code == 2
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    return line


def _set(column: str, row: int, value: Any) -> Any:
    def change(frame: pd.DataFrame) -> None:
        if isinstance(value, float):  # integer labels hold no inf or NaN
            frame[column] = frame[column].astype(np.float64)
        frame.loc[row, column] = value

    return change


@pytest.mark.integration
@pytest.mark.usefixtures("prefect_api")
@pytest.mark.parametrize(
    ("column", "value", "words"),
    [
        ("mean_area", np.inf, "train rows hold infinite values"),
        ("label", np.inf, "train labels hold infinite values"),
        ("label", np.nan, "train rows have missing labels"),
    ],
    ids=["inf-feature", "inf-label", "nan-label"],
)
def test_the_cli_names_the_silo_and_column_of_a_bad_value(
    column: str,
    value: float,
    words: str,
    breast_cancer_dir: Path,
    tmp_path: Path,
    shared_cluster: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    federation = _federation(breast_cancer_dir, tmp_path, shared_cluster)
    _edit(federation / "silo-2" / "train.parquet", _set(column, 3, value))

    line = _one_line_error(federation, capsys)

    assert line.startswith("fedsilo: error: ")
    assert f"silo 'silo-2', column '{column}'" in line and words in line
    assert not list(tmp_path.glob("store/**/*.parquet"))  # stopped before round 1


@pytest.mark.integration
@pytest.mark.usefixtures("prefect_api")
def test_the_cli_refuses_string_labels_beside_integer_ones_in_one_line(
    breast_cancer_dir: Path,
    tmp_path: Path,
    shared_cluster: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    federation = _federation(breast_cancer_dir, tmp_path, shared_cluster)
    names = {0: "malignant", 1: "benign"}
    for split in ("train", "test"):
        _edit(
            federation / "silo-1" / f"{split}.parquet",
            lambda f: f.__setitem__("label", f["label"].map(names)),
        )

    line = _one_line_error(federation, capsys)

    assert "silo 'silo-1', column 'label'" in line
    assert "labels are strings (dtype " in line and "here but numbers at" in line


# --- declared classes ------------------------------------------------------------


def _spec(**changes: Any) -> Any:
    from fedsilo.spec import parse_spec

    data = {
        "name": "fed",
        "task": "classification",
        "target": "label",
        "rounds": 1,
        "silos": [{"name": f"s{i}", "train": f"/data/{i}.parquet"} for i in range(3)],
    }
    return parse_spec({**data, **changes})


def test_the_spec_declares_classes_of_one_type_once_for_averaged_models() -> None:
    from fedsilo.errors import SpecError

    assert _spec(classes=[0, 1, 7]).classes == [0, 1, 7]
    assert _spec().classes is None
    for bad, words in [
        ({"classes": [0, "1"]}, "mixes strings and numbers"),
        ({"classes": [0, 1, 1]}, "lists a class twice"),
        ({"classes": [0]}, "at least 2"),
        ({"classes": [0, 1], "task": "regression", "model": {"kind": "sgd-regressor"}},
         "applies to task 'classification'"),
        ({"classes": [0, 1], "model": {"kind": "xgboost", "params": {
            "objective": "binary:logistic"}}}, "num_class"),
    ]:
        with pytest.raises(SpecError, match=words):
            _spec(**bad)


@pytest.mark.integration
@pytest.mark.usefixtures("prefect_api")
def test_the_cli_refuses_a_class_one_silo_alone_holds_unless_the_spec_declares_it(
    breast_cancer_dir: Path,
    tmp_path: Path,
    shared_cluster: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from fedsilo.cli import main

    federation = _federation(breast_cancer_dir, tmp_path, shared_cluster)
    _edit(federation / "silo-3" / "train.parquet", _set("label", 0, 2))

    line = _one_line_error(federation, capsys)

    assert "silo 'silo-3', column 'label'" in line
    assert "label 2 is held by this silo alone" in line

    path = federation / "federation.yaml"
    spec = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**spec, "classes": [0, 1, 2]}))

    assert main(["run", str(path)]) == 0
    from tasks.store.checkpoints import CheckpointStore, list_runs

    store = str(tmp_path / "store")
    (run,) = list_runs(store, spec["name"])
    params = CheckpointStore(store, spec["name"], run).read_params(1)
    assert params["coef_"].shape[0] == 3  # one row per declared class
