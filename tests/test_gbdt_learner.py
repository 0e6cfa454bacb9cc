"""Federated training: exactness across silo splits, quality, resume, bad input."""

from __future__ import annotations

import itertools
import json
from typing import Any

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb
from sklearn.datasets import make_classification
from sklearn.metrics import roc_auc_score

from fedsilo.errors import SiloDataError, SpecError
from fedsilo.gbdt_params import GBDTParams
from tasks.gbdt.histogram import numba_available
from tasks.gbdt.learner import (
    InMemoryFederation,
    federated_cuts,
    train,
    train_in_memory,
)
from tasks.gbdt.objective import make_objective
from tasks.gbdt.silo_state import SiloTreeState, prepare_silo_data
from tasks.gbdt.xgb_export import dumps, model_from_json, predict


def data(
    n: int = 1200, seed: int = 0, classes: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 5))
    X[rng.random((n, 5)) < 0.1] = np.nan
    z = np.nan_to_num(X[:, 0]) - np.nan_to_num(X[:, 1], nan=-1.0) * X[:, 2].clip(-1, 1)
    z = np.nan_to_num(z) + rng.normal(scale=0.5, size=n)
    if classes == 2:
        return X, (z > 0).astype(float)
    return X, np.digitize(
        z, np.quantile(z, np.linspace(0, 1, classes + 1)[1:-1])
    ).astype(float)


@pytest.mark.parametrize(
    "params",
    [
        {"objective": "binary:logistic"},
        {"objective": "reg:squarederror", "alpha": 0.5, "gamma": 0.1},
        {"objective": "multi:softprob", "num_class": 3},
    ],
)
def test_same_trees_for_one_two_and_four_silos(params: dict) -> None:
    X, y = data(classes=params.get("num_class", 2))
    if params["objective"] == "reg:squarederror":
        y = y * 2.5 + np.nan_to_num(X[:, 3])
    cuts = federated_cuts([X.astype(np.float32)], 32)
    full = {**params, "max_depth": 4, "num_boost_round": 5, "max_bin": 32}
    models = []
    for k in (1, 2, 4):
        bounds = np.linspace(0, X.shape[0], k + 1).astype(int)
        silos = [(X[a:b], y[a:b]) for a, b in itertools.pairwise(bounds)]
        models.append(train_in_memory(silos, full, cuts=cuts))
    texts = [dumps(m) for m in models]
    assert texts[0] == texts[1] == texts[2]
    assert sum(t.n_nodes for t in models[0].trees) > 10 * len(models[0].trees)


def test_backends_give_identical_models() -> None:
    if not numba_available():
        pytest.skip("numba not installed")
    X, y = data()
    params = {"objective": "binary:logistic", "max_depth": 3, "num_boost_round": 3}
    a = train_in_memory([(X, y)], params, backend="numpy")
    b = train_in_memory([(X, y)], params, backend="numba")
    assert dumps(a) == dumps(b)


def test_auc_close_to_xgboost_hist() -> None:
    X, y = make_classification(
        n_samples=20_000, n_features=20, n_informative=10, random_state=0
    )
    X_train, X_test, y_train, y_test = X[:15_000], X[15_000:], y[:15_000], y[15_000:]
    params = {"max_depth": 4, "eta": 0.3, "max_bin": 64, "lambda": 1.0}
    rounds = 20
    # nthread=1: hist grows the same trees with any thread count, and on a busy
    # two-core machine OpenMP's spin-waiting made nthread=2 take seconds, not 0.1 s.
    booster = xgb.train(
        {"objective": "binary:logistic", "tree_method": "hist", "nthread": 1, **params},
        xgb.DMatrix(X_train, y_train),
        num_boost_round=rounds,
    )
    theirs = roc_auc_score(y_test, booster.predict(xgb.DMatrix(X_test)))
    silos = [(X_train[i::3], y_train[i::3]) for i in range(3)]
    model = train_in_memory(
        silos, {"objective": "binary:logistic", "num_boost_round": rounds, **params}
    )
    ours = roc_auc_score(y_test, predict(model, X_test))
    assert len(model.trees) == rounds
    assert abs(ours - theirs) <= 0.005, (ours, theirs)


@pytest.mark.parametrize("objective", ["binary:logistic", "reg:squarederror"])
def test_same_trees_as_xgboost_when_cut_points_coincide(objective: str) -> None:
    # At most max_bin distinct values per column: both sketches are exact, so
    # both learners use the same cuts and must grow the same trees.
    X, y = make_classification(n_samples=4000, n_features=8, random_state=1)
    X = np.round(X, 1)
    X[np.random.default_rng(1).random(X.shape) < 0.1] = np.nan
    if objective == "reg:squarederror":
        y = 2.0 * y + np.nan_to_num(X[:, 0])
    params = {"objective": objective, "max_depth": 3, "eta": 0.3, "max_bin": 256}
    booster = xgb.train(
        {**params, "tree_method": "hist", "nthread": 1},
        xgb.DMatrix(X, y, missing=np.nan),
        num_boost_round=5,
    )
    silos = [(X[:1500], y[:1500]), (X[1500:], y[1500:])]
    model = train_in_memory(silos, {**params, "num_boost_round": 5})
    theirs = json.loads(booster.save_raw("json"))["learner"]["gradient_booster"]
    for ours, tree in zip(model.trees, theirs["model"]["trees"], strict=True):
        assert ours.left.tolist() == tree["left_children"]
        assert np.where(ours.is_leaf, 0, ours.feature).tolist() == tree["split_indices"]
        np.testing.assert_allclose(ours.cover, tree["sum_hessian"], rtol=1e-5)
    pred = booster.predict(xgb.DMatrix(X, missing=np.nan))
    assert np.max(np.abs(pred - predict(model, X))) <= 1e-5


@pytest.mark.parametrize(
    ("objective", "extra"),
    [
        ("binary:logistic", {}),
        ("reg:squarederror", {}),
        ("multi:softprob", {"num_class": 3}),
    ],
)
def test_intercept_comes_from_federated_label_sums(objective: str, extra: dict) -> None:
    X, y = data(classes=extra.get("num_class", 2))
    silos = [(X[:200], y[:200]), (X[200:], y[200:])]
    tiny = {
        "objective": objective,
        "eta": 1e-6,
        "num_boost_round": 1,
        "max_depth": 2,
        **extra,
    }
    pred = predict(train_in_memory(silos, tiny), X)
    if objective == "multi:softprob":
        prior = np.bincount(y.astype(int), minlength=3) / y.size
        np.testing.assert_allclose(pred, np.tile(prior, (y.size, 1)), atol=1e-4)
    else:
        np.testing.assert_allclose(pred, y.mean(), atol=1e-4)


def _two_silos(X: np.ndarray, y: np.ndarray, objective: Any, max_bin: int) -> tuple:
    """Alternate rows over two silos: their data, cuts, label statistics, intercept."""
    silo_data = [
        prepare_silo_data(f"s{i}", X[i::2], y[i::2], objective) for i in range(2)
    ]
    cuts = federated_cuts([d.X for d in silo_data], max_bin)
    stats = np.sum([objective.label_stats(d.y) for d in silo_data], axis=0)
    return silo_data, cuts, stats, objective.intercept(stats, None)


def _states(silo_data: list, cuts: list, objective: Any, intercept: Any) -> list:
    """Fresh silo states, intercept set, for one in-memory federation."""
    states = [
        SiloTreeState.create(f"s{i}", d, cuts, objective)
        for i, d in enumerate(silo_data)
    ]
    for s in states:
        s.set_intercept(intercept)
    return states


def test_resume_from_json_checkpoint_reaches_the_same_model() -> None:
    X, y = data(classes=3)
    params = GBDTParams.from_dict(
        {
            "objective": "multi:softprob",
            "num_class": 3,
            "max_depth": 3,
            "num_boost_round": 2,
        }
    )
    objective = make_objective("multi:softprob", 3)
    silo_data, cuts, stats, intercept = _two_silos(X, y, objective, params.max_bin)

    def federation(resume_from=None) -> InMemoryFederation:
        states = _states(silo_data, cuts, objective, intercept)
        if resume_from is not None:
            for s in states:
                s.replay(resume_from.trees, resume_from.tree_info)
        return InMemoryFederation(states)

    sizes = {"n_rows": objective.n_rows(stats), "label_bound": 1.0}
    seen: list[float] = []
    first = train(
        federation(),
        cuts,
        params,
        intercept,
        callback=lambda m, r: seen.append(r.value),
        **sizes,
    )
    checkpoint = model_from_json(dumps(first))
    resumed = train(
        federation(checkpoint), cuts, params, intercept, init_model=checkpoint, **sizes
    )
    straight = train(
        federation(),
        cuts,
        GBDTParams.from_dict(
            {
                **{"objective": "multi:softprob", "num_class": 3},
                "max_depth": 3,
                "num_boost_round": 4,
            }
        ),
        intercept,
        **sizes,
    )
    assert dumps(resumed) == dumps(straight)
    assert len(seen) == 2 and seen[1] < seen[0]  # training loss goes down


def test_training_loss_is_summed_only_when_asked() -> None:
    X, y = data()
    objective = make_objective("binary:logistic", 0)
    params = GBDTParams.from_dict(
        {"objective": "binary:logistic", "num_boost_round": 3, "max_bin": 16}
    )
    silo_data, cuts, _, intercept = _two_silos(X, y, objective, params.max_bin)

    class Counting(InMemoryFederation):
        asked: list[bool] = []

        def finish_round(self, trees, loss=True):  # type: ignore[no-untyped-def]
            self.asked.append(loss)
            return super().finish_round(trees, loss)

    def federation() -> Counting:
        return Counting(_states(silo_data, cuts, objective, intercept))

    seen: list[float] = []
    sizes = {"n_rows": X.shape[0], "label_bound": 1.0}
    model = train(
        federation(),
        cuts,
        params,
        intercept,
        callback=lambda m, r: seen.append(r.value),
        **sizes,
    )
    assert Counting.asked == [True] * 3
    # The reported loss is the log loss of the model's own predictions.
    pooled_X = np.concatenate([d.X for d in silo_data])
    pooled_y = np.concatenate([d.y for d in silo_data])
    p = predict(model, pooled_X)
    expected = -np.mean(pooled_y * np.log(p) + (1 - pooled_y) * np.log(1 - p))
    assert seen[-1] == pytest.approx(expected, rel=1e-6)

    Counting.asked = []
    quiet = train(federation(), cuts, params, intercept, **sizes)
    assert Counting.asked == [False] * 3
    assert dumps(quiet) == dumps(model)


def test_training_is_deterministic() -> None:
    X, y = data()
    params = {"objective": "binary:logistic", "num_boost_round": 3, "max_bin": 16}
    silos = [(X[:600], y[:600]), (X[600:], y[600:])]
    assert dumps(train_in_memory(silos, params)) == dumps(
        train_in_memory(silos, params)
    )


# -- bad input ---------------------------------------------------------------------


def test_bad_parameters_raise_spec_errors() -> None:
    X, y = data(n=50)
    for params, match in [
        ({"max_bin": 1}, "max_bin"),
        ({"objective": "rank:pairwise"}, "not supported"),
        ({"objective": "multi:softprob"}, "num_class"),
        ({"colsample_bytree": 0.5}, "unknown"),
        ({"eta": 0.1, "learning_rate": 0.2}, "twice"),
        ({"tree_method": "exact"}, "hist"),
        ({"max_depth": 0}, "max_depth"),
    ]:
        with pytest.raises(SpecError, match=match):
            train_in_memory([(X, y)], params)


def test_parameter_aliases_mean_the_same() -> None:
    X, y = data(n=300)
    a = {"learning_rate": 0.1, "lambda": 2.0, "alpha": 0.1, "min_split_loss": 0.01}
    b = {"eta": 0.1, "reg_lambda": 2.0, "reg_alpha": 0.1, "gamma": 0.01}
    common = {"objective": "binary:logistic", "num_boost_round": 2, "nthread": 4}
    assert dumps(train_in_memory([(X, y)], {**common, **a})) == dumps(
        train_in_memory([(X, y)], {**common, **b})
    )
    assert dumps(train_in_memory([(X, y)], {**common, **a})) != dumps(
        train_in_memory([(X, y)], {**common, **b, "eta": 0.2})
    )


def test_label_outside_class_range_names_silo_and_column() -> None:
    X, y = data(n=100, classes=3)
    bad = y.copy()
    bad[7] = 3.0
    with pytest.raises(SiloDataError, match=r"num_class|\[0, 3\)") as info:
        train_in_memory(
            [(X, y), (X, pd.Series(bad, name="outcome"))],
            {"objective": "multi:softprob", "num_class": 3},
            names=["a", "b"],
        )
    assert info.value.silo == "b" and info.value.column == "outcome"
    with pytest.raises(SiloDataError) as info:
        train_in_memory([(X, y + 1)], {"objective": "binary:logistic"}, names=["h1"])
    assert info.value.silo == "h1" and info.value.column == "label"


def test_non_numeric_column_names_silo_and_column() -> None:
    X, y = data(n=30)
    frame = pd.DataFrame(X, columns=list("abcde"))
    frame["c"] = ["x"] * 30
    with pytest.raises(SiloDataError, match="numeric") as info:
        train_in_memory(
            [(frame, y)], {"objective": "binary:logistic"}, names=["clinic"]
        )
    assert (info.value.silo, info.value.column) == ("clinic", "c")
    objects = X.astype(object)
    objects[3, 1] = "7"
    with pytest.raises(SiloDataError, match="numeric") as info:
        train_in_memory([(objects, y)], {"objective": "binary:logistic"}, names=["lab"])
    assert (info.value.silo, info.value.column) == ("lab", "f1")


def test_all_missing_or_infinite_column_names_silo_and_column() -> None:
    X, y = data(n=40)
    missing = X.copy()
    missing[:, 4] = np.nan
    with pytest.raises(SiloDataError, match="no non-missing") as info:
        train_in_memory(
            [(X, y), (missing, y)], {"objective": "binary:logistic"}, names=["a", "b"]
        )
    assert (info.value.silo, info.value.column) == ("b", "f4")
    infinite = X.copy()
    infinite[2, 0] = np.inf
    with pytest.raises(SiloDataError, match="infinite") as info:
        train_in_memory([(infinite, y)], {"objective": "binary:logistic"}, names=["a"])
    assert info.value.column == "f0"


def test_silos_must_share_features_and_have_rows() -> None:
    X, y = data(n=40)
    with pytest.raises(SiloDataError, match="features") as info:
        train_in_memory([(X, y), (X[:, :4], y)], {}, names=["a", "b"])
    assert info.value.silo == "b"
    with pytest.raises(SiloDataError, match="no training rows"):
        train_in_memory([(X, y), (X[:0], y[:0])], {}, names=["a", "b"])
