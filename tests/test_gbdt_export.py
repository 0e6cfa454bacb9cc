"""Exported XGBoost JSON through stock xgboost: predictions, routing, tables."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb

from tasks.gbdt.binning import bin_matrix
from tasks.gbdt.learner import train_in_memory
from tasks.gbdt.model import GBDTModel
from tasks.gbdt.xgb_export import (
    dumps,
    model_from_json,
    predict,
    save_model,
    trees_dataframe,
)

CASES = {
    "binary:logistic": {},
    "reg:squarederror": {},
    "multi:softprob": {"num_class": 3},
}


def load(path: Path) -> xgb.Booster:
    booster = xgb.Booster(model_file=str(path))
    booster.set_param({"nthread": 1})  # per-call thread start-up dominates tiny batches
    return booster


def make_data(
    objective: str, n: int = 1500, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 6))
    X[:, 5] = rng.integers(0, 4, n)  # low-cardinality column
    X[rng.random((n, 6)) < 0.15] = np.nan
    z = (
        np.nan_to_num(X[:, 0], nan=1.0)
        + np.nan_to_num(X[:, 1]) ** 2
        - X[:, 5].clip(0, 2)
    )
    z = np.nan_to_num(z) + rng.normal(scale=0.5, size=n)
    if objective == "binary:logistic":
        return X, (z > 0.5).astype(float)
    if objective == "multi:softprob":
        return X, np.digitize(z, [0.0, 1.5]).astype(float)
    return X, 3.0 * z + 10.0


def fit(objective: str, X: np.ndarray, y: np.ndarray, **extra: object) -> GBDTModel:
    params = {
        "objective": objective,
        "max_depth": 4,
        "num_boost_round": 8,
        "max_bin": 32,
        "eta": 0.3,
        **CASES[objective],
        **extra,
    }
    return train_in_memory([(X[:500], y[:500]), (X[500:], y[500:])], params)


@pytest.fixture(scope="module", params=list(CASES))
def trained(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    objective = request.param
    X, y = make_data(objective)
    model = fit(objective, X, y)
    path = tmp_path_factory.mktemp("model") / "model.json"
    save_model(model, path)
    return objective, X, y, model, path


def test_stock_xgboost_predicts_like_the_learner(trained) -> None:
    _, X, _, model, path = trained
    booster = load(path)
    ours = predict(model, X)
    theirs = booster.predict(xgb.DMatrix(X, missing=np.nan))
    assert theirs.shape == ours.shape
    assert np.max(np.abs(ours - theirs)) <= 1e-6
    assert np.ptp(ours) > 0.1  # the trees do something


def test_single_row_predictions_equal_batch(trained) -> None:
    _, X, _, _, path = trained
    booster = load(path)
    rows = X[:25]
    assert np.isnan(rows).any(axis=1).mean() > 0.3  # missing values take part
    batch = booster.predict(xgb.DMatrix(rows, missing=np.nan))
    single = np.stack(
        [booster.predict(xgb.DMatrix(r[None, :], missing=np.nan))[0] for r in rows]
    )
    np.testing.assert_array_equal(single, batch)
    inplace = np.stack([booster.inplace_predict(r[None, :])[0] for r in rows])
    np.testing.assert_allclose(inplace, batch, rtol=0, atol=1e-7)


def test_xgboost_routes_training_rows_like_the_bins(trained) -> None:
    _, X, _, model, path = trained
    booster = load(path)
    leaves = booster.predict(xgb.DMatrix(X, missing=np.nan), pred_leaf=True)
    binned = bin_matrix(X, model.cuts)
    start = np.zeros(X.shape[0], np.int64)
    ours = np.column_stack([t.descend_binned(binned, start) for t in model.trees])
    np.testing.assert_array_equal(leaves, ours)


def test_json_follows_the_format_facts(trained) -> None:
    objective, _, y, model, path = trained
    doc = json.loads(Path(path).read_text())
    param = doc["learner"]["learner_model_param"]
    assert param["boost_from_average"] == "0"
    assert param["base_score"] == str(np.float32(param["base_score"]))
    if objective == "binary:logistic":
        assert np.float32(param["base_score"]) == np.float32(y.mean())
    if objective == "reg:squarederror":
        assert float(param["base_score"]) == pytest.approx(y.mean(), rel=1e-6)
    booster = doc["learner"]["gradient_booster"]["model"]
    assert [t["id"] for t in booster["trees"]] == list(range(len(model.trees)))
    k = max(model.num_class, 1)
    assert booster["tree_info"] == [i % k for i in range(len(model.trees))]
    for tree in booster["trees"]:
        left, right = tree["left_children"], tree["right_children"]
        inner = [i for i, v in enumerate(left) if v != -1]
        assert all(right[i] == left[i] + 1 for i in inner)
        assert sorted(left[i] for i in inner) == list(range(1, len(left), 2))
        for key in ("split_conditions", "sum_hessian", "base_weights", "loss_changes"):
            assert all(isinstance(v, float) for v in tree[key])
        assert tree["sum_hessian"][0] > 0
    text = Path(path).read_text()
    assert (
        '"sum_hessian":[1,' not in text and "NaN" not in text and "Infinity" not in text
    )


def test_covers_are_hessian_sums(trained) -> None:
    objective, X, y, model, _ = trained
    root = model.trees[0].cover[0]
    if objective == "reg:squarederror":
        assert root == X.shape[0]
    if objective == "binary:logistic":
        p = np.float32(y.mean())
        assert root == pytest.approx(X.shape[0] * p * (1 - p), rel=1e-5)


def test_classifier_wrapper_loads_the_model(trained) -> None:
    objective, X, _, model, path = trained
    if objective == "reg:squarederror":
        reg = xgb.XGBRegressor()
        reg.load_model(str(path))
        np.testing.assert_allclose(reg.predict(X), predict(model, X), atol=1e-5)
        return
    clf = xgb.XGBClassifier()
    clf.load_model(str(path))
    proba = clf.predict_proba(X)
    ours = predict(model, X)
    if objective == "binary:logistic":
        ours = np.column_stack([1 - ours, ours])
    assert np.max(np.abs(proba - ours)) <= 1e-6
    np.testing.assert_array_equal(clf.predict(X), ours.argmax(axis=1))


def test_trees_dataframe_equals_xgboost(trained) -> None:
    _, _, _, model, path = trained
    ours = trees_dataframe(model)
    theirs = load(Path(path)).trees_to_dataframe()
    assert list(ours.columns) == list(theirs.columns)
    for col in ("Tree", "Node", "ID", "Feature", "Yes", "No", "Missing"):
        np.testing.assert_array_equal(
            ours[col].astype(object).fillna("").to_numpy(),
            theirs[col].astype(object).fillna("").to_numpy(),
        )
    for col in ("Split", "Gain", "Cover"):
        np.testing.assert_allclose(ours[col], theirs[col], rtol=1e-5, atol=1e-7)


def test_json_round_trip_is_exact(trained) -> None:
    _, _, _, model, path = trained
    back = model_from_json(Path(path).read_text())
    assert dumps(back) == Path(path).read_text()
    for a, b in zip(back.trees, model.trees, strict=True):
        np.testing.assert_array_equal(a.split_bin, b.split_bin)


def test_cached_export_equals_a_fresh_one_as_the_model_grows(trained) -> None:
    from tasks.gbdt.xgb_export import ExportCache, model_to_json

    _, _, _, model, _ = trained
    named = dataclasses.replace(
        model,
        # names that look like the document's own keys must stay names
        feature_names=(
            '"trees":[]',
            "fedsilo-trees-placeholder",
            *(f"f{j}" for j in range(2, model.num_feature)),
        ),
    )
    cache = ExportCache()
    for n in (1, 3, len(named.trees)):
        part = dataclasses.replace(
            named, trees=named.trees[:n], tree_info=named.tree_info[:n]
        )
        text = dumps(part, cache)
        assert text == json.dumps(model_to_json(part), separators=(",", ":"))
        assert text == dumps(part)  # without the cache
        pd.testing.assert_frame_equal(
            trees_dataframe(part, cache), trees_dataframe(part)
        )
    assert json.loads(text)["learner"]["feature_names"][:2] == list(
        named.feature_names[:2]
    )


def test_dataframe_feature_names_are_exported(tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    X, y = make_data("binary:logistic", n=400)
    frame = pd.DataFrame(X, columns=[f"col_{j}" for j in range(6)])
    model = train_in_memory(
        [(frame, y)], {"objective": "binary:logistic", "num_boost_round": 2}
    )
    save_model(model, tmp_path / "m.json")
    booster = xgb.Booster(model_file=str(tmp_path / "m.json"))
    assert booster.feature_names == list(frame.columns)
    theirs = booster.predict(xgb.DMatrix(frame, missing=np.nan))
    assert np.max(np.abs(theirs - predict(model, X))) <= 1e-6
    assert set(trees_dataframe(model)["Feature"]) <= {*frame.columns, "Leaf"}
