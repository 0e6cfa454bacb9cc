"""Federated one-hot encoding: string columns train end to end, encoded alike."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import accuracy_score, log_loss
from sklearn.preprocessing import OneHotEncoder

from fedsilo.errors import SiloDataError, SpecError
from fedsilo.spec import parse_spec
from tasks.protocol.messages import SiloSchema
from tasks.silo.schema import (
    categorical_features,
    check_schemas,
    describe_columns,
)
from tasks.statistics.categories import (
    frequent_values,
    global_categories,
    one_hot,
)

COLOURS = {"red": 1.5, "green": -1.0, "blue": 0.0, "amber": 0.5}


def silo_frame(rng: np.random.Generator, n: int, colours: list[str]) -> pd.DataFrame:
    """Rows whose label depends on a numeric column and a colour."""
    colour = rng.choice(colours, n)
    x1 = rng.normal(0.0, 2.0, n) + 10.0
    x2 = rng.normal(size=n)
    logit = (x1 - 10.0) + np.array([COLOURS[c] for c in colour]) * 2
    label = (logit + rng.logistic(size=n) * 0.5 > 0).astype(int)
    return pd.DataFrame({"x1": x1, "colour": colour, "x2": x2, "label": label})


def write_federation(tmp_path: Path, address: str, **changes: Any) -> Path:
    """Three silos; 'amber' only at silo-2, and 4 rare 'violet' rows at silo-1."""
    rng = np.random.default_rng(7)
    colours = [["red", "green", "blue"], ["red", "green"], ["red", "blue", "amber"]]
    silos = []
    for i, held in enumerate(colours):
        frame = silo_frame(rng, 260, held)
        if i == 1:
            frame.loc[:3, "colour"] = "violet"
        train, test = frame.iloc[:200], frame.iloc[200:]
        folder = tmp_path / f"silo-{i}"
        folder.mkdir()
        train.to_parquet(folder / "train.parquet")
        test.to_parquet(folder / "test.parquet")
        silos.append(
            {
                "name": f"silo-{i}",
                "train": str(folder / "train.parquet"),
                "test": str(folder / "test.parquet"),
            }
        )
    spec = {
        "name": "colours",
        "task": "classification",
        "target": "label",
        "rounds": 4,
        "model": {"kind": "sgd-logistic", "params": {"alpha": 0.01}},
        "local": {"epochs": 2},
        "preprocessing": {"categorical": ["colour"]},
        "statistics": {"min_count": 10},
        "silos": silos,
        "cluster": {"address": address},
        "checkpoints": str(tmp_path / "store"),
        **changes,
    }
    path = tmp_path / "federation.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def schemas_of(frames: dict[str, pd.DataFrame]) -> list[SiloSchema]:
    return [
        SiloSchema(
            silo=name,
            worker=name,
            columns=describe_columns(frame),
            n_train=len(frame),
            n_test=len(frame),
        )
        for name, frame in frames.items()
    ]


# --- pure -----------------------------------------------------------------------


def test_every_silo_encodes_like_scikit_learn_with_the_global_categories() -> None:
    rng = np.random.default_rng(0)
    a = silo_frame(rng, 120, ["red", "green"])
    b = silo_frame(rng, 90, ["blue", "green"])
    b.loc[:2, "colour"] = "violet"  # 3 rows: below the threshold of 10

    lists = [{"colour": frequent_values(f["colour"], 10)} for f in (a, b)]
    categories = global_categories(lists, ["colour"])

    assert categories == {"colour": ("blue", "green", "red")}
    reference = OneHotEncoder(
        categories=[list(categories["colour"])],
        handle_unknown="ignore",
        sparse_output=False,
    ).fit(a[["colour"]])
    for name, frame in (("a", a), ("b", b)):
        codes = one_hot(name, frame, categories, "train")
        assert codes.shape == (len(frame), 3)
        np.testing.assert_array_equal(codes, reference.transform(frame[["colour"]]))
    rare = one_hot("b", b.iloc[:3], categories, "test")
    assert not rare.any()  # a value rare everywhere encodes as all zeros


def test_a_categorical_column_numeric_at_one_silo_is_named() -> None:
    rng = np.random.default_rng(1)
    a = silo_frame(rng, 20, ["red"])
    b = silo_frame(rng, 20, ["red"]).assign(colour=3)
    c = silo_frame(rng, 20, ["blue"])

    with pytest.raises(SiloDataError) as caught:
        check_schemas(
            schemas_of({"a": a, "b": b, "c": c}),
            target="label",
            task="classification",
            categorical=["colour"],
        )

    assert caught.value.silo == "b" and caught.value.column == "colour"
    assert "string" in caught.value.reason


def test_a_declared_column_missing_at_a_silo_is_named() -> None:
    rng = np.random.default_rng(2)
    frames = {
        "a": silo_frame(rng, 20, ["red"]),
        "b": silo_frame(rng, 20, ["red"]).drop(columns="colour"),
        "c": silo_frame(rng, 20, ["red"]),
    }

    with pytest.raises(SiloDataError) as caught:
        check_schemas(
            schemas_of(frames),
            target="label",
            task="classification",
            categorical=["colour"],
        )
    assert caught.value.silo == "b" and caught.value.column == "colour"

    with pytest.raises(SiloDataError) as caught:
        check_schemas(
            schemas_of(frames),
            target="label",
            task="classification",
            categorical=["shape"],
        )
    assert caught.value.column == "shape" and "preprocessing.categorical" in str(
        caught.value
    )


def test_strings_need_a_declaration_and_auto_finds_them() -> None:
    rng = np.random.default_rng(3)
    schemas = schemas_of({"a": silo_frame(rng, 20, ["red"])})

    with pytest.raises(SiloDataError, match=r"preprocessing\.categorical"):
        check_schemas(schemas, target="label", task="classification")
    features = check_schemas(
        schemas, target="label", task="classification", categorical="auto"
    )

    assert categorical_features(schemas, features, "auto") == ["colour"]


def test_missing_categories_at_a_silo_are_refused() -> None:
    frame = pd.DataFrame({"colour": ["red", None, "blue"]})

    with pytest.raises(SiloDataError) as caught:
        one_hot("a", frame, {"colour": ("blue", "red")}, "train")

    assert caught.value.column == "colour" and "missing" in caught.value.reason


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"preprocessing": {"categorical": ["label"]}}, "lists the target"),
        (
            {
                "model": {
                    "kind": "xgboost",
                    "params": {"objective": "binary:logistic"},
                },
                "preprocessing": {"categorical": ["colour"]},
            },
            "not available for kind 'xgboost'",
        ),
        ({"statistics": {"min_count": 0}}, "statistics.min_count"),
        ({"preprocessing": {"categorical": "all"}}, "preprocessing.categorical"),
    ],
)
def test_spec_refuses_bad_preprocessing(changes: dict[str, Any], message: str) -> None:
    spec = {
        "name": "x",
        "task": "classification",
        "target": "label",
        "rounds": 1,
        "silos": [{"name": "a", "train": "a.parquet"}],
        **changes,
    }

    with pytest.raises(SpecError, match=message):
        parse_spec(spec)


# --- on a real cluster ------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.usefixtures("prefect_api")
def test_string_column_trains_and_the_checkpoint_predicts_the_same(
    tmp_path: Path, shared_cluster: str
) -> None:
    from fedsilo.spec import load_spec
    from flows.training import federated_training
    from tasks.store.checkpoints import CheckpointStore
    from tasks.store.model_io import load_estimator

    spec = load_spec(write_federation(tmp_path, shared_cluster))

    summary = federated_training(spec)

    # 'violet' (4 rows) is below min_count, 'amber' is held by one silo only.
    assert summary["features"] == [
        "x1",
        "x2",
        "colour=amber",
        "colour=blue",
        "colour=green",
        "colour=red",
    ]
    store = CheckpointStore(spec.checkpoints, spec.name, summary["run_id"])
    model = load_estimator(store)
    assert model.feature_names_ == ["x1", "colour", "x2"]
    metrics = store.read_metrics(4)
    tests = {s.name: pd.read_parquet(str(s.test)) for s in spec.silos}
    pooled = pd.concat(tests.values(), ignore_index=True)
    proba = model.predict_proba(pooled[model.feature_names_].to_numpy())
    expected = metrics.query("silo == 'global' and split == 'test'").set_index("metric")
    assert accuracy_score(pooled["label"], model.classes_[proba.argmax(axis=1)]) == (
        pytest.approx(expected.loc["accuracy", "value"], abs=1e-12)
    )
    assert log_loss(pooled["label"], proba, labels=model.classes_) == pytest.approx(
        expected.loc["log_loss", "value"], rel=1e-9
    )
    assert expected.loc["accuracy", "value"] > 0.8
    for name, frame in tests.items():
        row = metrics[
            (metrics["silo"] == name)
            & (metrics["split"] == "test")
            & (metrics["metric"] == "accuracy")
        ]
        got = model.score(frame[model.feature_names_].to_numpy(), frame["label"])
        assert got == pytest.approx(row["value"].item(), abs=1e-12)
    # A colour never seen in training predicts like an all-zero encoding.
    unseen = pooled.iloc[:5].assign(colour="ultraviolet")
    rare = pooled.iloc[:5].assign(colour="violet")
    np.testing.assert_array_equal(
        model.predict_proba(unseen[model.feature_names_].to_numpy()),
        model.predict_proba(rare[model.feature_names_].to_numpy()),
    )


@pytest.mark.integration
@pytest.mark.usefixtures("prefect_api")
def test_cli_names_the_silo_whose_categorical_column_is_missing(
    tmp_path: Path, shared_cluster: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from fedsilo.cli import main

    path = write_federation(tmp_path, shared_cluster)
    broken = tmp_path / "silo-1" / "train.parquet"
    frame = pd.read_parquet(broken)
    frame.drop(columns="colour").to_parquet(broken)
    test = tmp_path / "silo-1" / "test.parquet"
    pd.read_parquet(test).drop(columns="colour").to_parquet(test)

    code = main(["run", str(path), "--rounds", "1"])

    assert code == 2
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert "silo 'silo-1'" in line and "column 'colour'" in line


def test_numeric_codes_are_categories_too() -> None:
    a = pd.DataFrame({"zone": [3, 1, 1, 3, 7] * 4})
    b = pd.DataFrame({"zone": [1.0, 2.0, 2.0, 9.0] * 5})

    lists = [{"zone": frequent_values(f["zone"], 5)} for f in (a, b)]
    categories = global_categories(lists, ["zone"])

    assert categories == {"zone": (1, 2.0, 3, 9.0)}  # 7 is rare at a
    reference = OneHotEncoder(
        categories=[[1.0, 2.0, 3.0, 9.0]], handle_unknown="ignore", sparse_output=False
    ).fit(a[["zone"]].astype(float))
    for name, frame in (("a", a), ("b", b)):
        np.testing.assert_array_equal(
            one_hot(name, frame, categories, "train"),
            reference.transform(frame[["zone"]].astype(float)),
        )


@pytest.mark.integration
@pytest.mark.usefixtures("prefect_api")
def test_compare_scores_every_variant_of_a_categorical_federation(
    tmp_path: Path, shared_cluster: str
) -> None:
    """Centralized scoring re-encodes raw columns with the checkpoint's categories."""
    import duckdb

    from fedsilo.spec import load_spec
    from flows.compare import federated_comparison
    from tasks.reports import comparison

    spec = load_spec(write_federation(tmp_path, shared_cluster, rounds=2))

    result = federated_comparison(spec, personalize_epochs=1, command="pytest")

    assert result["skipped"] == {}
    frame = duckdb.sql(f"SELECT * FROM read_parquet('{result['comparison']}')").df()
    assert comparison.present_variants(frame) == list(comparison.VARIANTS)
    final = comparison.final_rows(frame)
    accuracy = final[
        (final["silo"] == "global")
        & (final["split"] == "test")
        & (final["metric"] == "accuracy")
    ].set_index("variant")["value"]
    assert accuracy["centralized"] > 0.8
    assert accuracy["federated"] > 0.8
