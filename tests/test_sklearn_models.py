"""Tests of scikit-learn estimators as named arrays: build, rebuild, train."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from fedsilo.errors import SpecError
from tasks.averaging.sklearn_models import (
    build_estimator,
    extract_params,
    init_params,
    materialise,
    train_local,
)

CLASSIFIERS = ["sgd-logistic", "logistic", "mlp-classifier"]
REGRESSORS = ["sgd-regressor", "mlp-regressor"]
KINDS = CLASSIFIERS + REGRESSORS
# Small networks keep the tests fast; the spec's params reach the estimator as is.
MODEL_PARAMS: dict[str, dict[str, Any]] = {
    "sgd-logistic": {"alpha": 1e-3},
    "sgd-regressor": {"alpha": 1e-3},
    "logistic": {"C": 1.0},
    "mlp-classifier": {"hidden_layer_sizes": (6,), "learning_rate_init": 0.01},
    "mlp-regressor": {"hidden_layer_sizes": [6, 3], "learning_rate_init": 0.01},
}
N_FEATURES = 4


def _classes(kind: str, n_classes: int = 2) -> list[int]:
    return list(range(n_classes)) if kind in CLASSIFIERS else []


def _rows(kind: str, n_classes: int = 2, n: int = 60, seed: int = 0) -> tuple:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, N_FEATURES))
    if kind in CLASSIFIERS:
        y = rng.integers(0, n_classes, n)
        X[:, 0] += 2.0 * y  # learnable
    else:
        y = X @ np.array([1.0, -2.0, 0.5, 0.0]) + 0.1 * rng.normal(size=n)
    return X, y


def _trained(kind: str, n_classes: int = 2, seed: int = 3) -> Any:
    classes = _classes(kind, n_classes)
    X, y = _rows(kind, n_classes)
    estimator = materialise(
        kind, MODEL_PARAMS[kind], n_features=N_FEATURES, classes=classes, seed=seed
    )
    train_local(
        kind,
        estimator,
        X,
        y,
        classes=classes,
        epochs=2,
        batch_size=16,
        rng=np.random.default_rng(seed),
    )
    return estimator


def _shapes(params: dict[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    return {name: np.shape(value) for name, value in params.items()}


# --- init_params -------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_init_params_deterministic_per_seed(kind: str) -> None:
    kwargs = {"n_features": N_FEATURES, "classes": _classes(kind, 3), "seed": 11}

    first = init_params(kind, MODEL_PARAMS[kind], **kwargs)
    second = init_params(kind, MODEL_PARAMS[kind], **kwargs)

    assert first
    assert sorted(first) == sorted(second)
    for name in first:
        assert np.array_equal(first[name], second[name])
        assert np.all(np.isfinite(first[name]))


@pytest.mark.parametrize("kind", ["mlp-classifier", "mlp-regressor"])
def test_mlp_init_params_depend_on_seed(kind: str) -> None:
    kwargs = {"n_features": N_FEATURES, "classes": _classes(kind)}

    a = init_params(kind, MODEL_PARAMS[kind], seed=1, **kwargs)
    b = init_params(kind, MODEL_PARAMS[kind], seed=2, **kwargs)

    assert not np.array_equal(a["coefs_0"], b["coefs_0"])


@pytest.mark.parametrize(
    ("kind", "n_classes", "expected"),
    [
        ("sgd-logistic", 2, {"coef_": (1, 4), "intercept_": (1,), "t_": ()}),
        ("sgd-logistic", 3, {"coef_": (3, 4), "intercept_": (3,), "t_": ()}),
        ("logistic", 2, {"coef_": (1, 4), "intercept_": (1,)}),
        ("logistic", 3, {"coef_": (3, 4), "intercept_": (3,)}),
        ("sgd-regressor", 0, {"coef_": (4,), "intercept_": (1,), "t_": ()}),
        (
            "mlp-classifier",
            3,
            {
                "coefs_0": (4, 6),
                "coefs_1": (6, 3),
                "intercepts_0": (6,),
                "intercepts_1": (3,),
            },
        ),
        (
            "mlp-regressor",
            0,
            {
                "coefs_0": (4, 6),
                "coefs_1": (6, 3),
                "coefs_2": (3, 1),
                "intercepts_0": (6,),
                "intercepts_1": (3,),
                "intercepts_2": (1,),
            },
        ),
    ],
)
def test_init_params_shapes(kind: str, n_classes: int, expected: dict) -> None:
    params = init_params(
        kind,
        MODEL_PARAMS[kind],
        n_features=N_FEATURES,
        classes=list(range(n_classes)),
        seed=0,
    )

    assert _shapes(params) == expected


# --- exact rebuild from arrays ---------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "n_classes"),
    [(k, n) for k in CLASSIFIERS for n in (2, 3)] + [(k, 0) for k in REGRESSORS],
)
def test_materialise_from_extracted_params_predicts_identically(
    kind: str, n_classes: int
) -> None:
    trained = _trained(kind, n_classes)
    params = extract_params(kind, trained)
    X, _ = _rows(kind, n_classes, n=25, seed=9)

    rebuilt = materialise(
        kind,
        MODEL_PARAMS[kind],
        n_features=N_FEATURES,
        classes=_classes(kind, n_classes),
        seed=12345,
        params=params,
    )

    assert any(np.any(value != 0) for value in params.values())  # really trained
    assert np.array_equal(rebuilt.predict(X), trained.predict(X))
    if kind in CLASSIFIERS:
        assert np.array_equal(rebuilt.predict_proba(X), trained.predict_proba(X))
        assert list(rebuilt.classes_) == list(trained.classes_)
    round_trip = extract_params(kind, rebuilt)
    assert sorted(round_trip) == sorted(params)
    for name in params:
        assert np.array_equal(round_trip[name], params[name])


@pytest.mark.parametrize("kind", KINDS)
def test_extracted_params_are_copies(kind: str) -> None:
    trained = _trained(kind)
    params = extract_params(kind, trained)
    X, _ = _rows(kind, n=10, seed=4)
    before = trained.predict(X)

    for value in params.values():
        value[...] = 0.0

    assert np.array_equal(trained.predict(X), before)


@pytest.mark.parametrize("kind", KINDS)
def test_training_continues_from_materialised_params(kind: str) -> None:
    classes = _classes(kind)
    X, y = _rows(kind)
    start = init_params(
        kind, MODEL_PARAMS[kind], n_features=N_FEATURES, classes=classes, seed=0
    )
    estimator = materialise(
        kind,
        MODEL_PARAMS[kind],
        n_features=N_FEATURES,
        classes=classes,
        seed=0,
        params=start,
    )

    train_local(
        kind,
        estimator,
        X,
        y,
        classes=classes,
        epochs=1,
        batch_size=None,
        rng=np.random.default_rng(0),
    )

    after = extract_params(kind, estimator)
    assert _shapes(after) == _shapes(start)
    assert any(not np.array_equal(after[k], start[k]) for k in start)


# --- a silo that lacks a class --------------------------------------------------


@pytest.mark.parametrize("n_classes", [2, 3])
@pytest.mark.parametrize("kind", CLASSIFIERS)
def test_silo_missing_a_class_keeps_global_classes_and_shapes(
    kind: str, n_classes: int
) -> None:
    classes = _classes(kind, n_classes)
    X, y = _rows(kind, n_classes)
    keep = y != classes[-1]  # this silo never sees the last class
    X, y = X[keep], y[keep]
    start = init_params(
        kind, MODEL_PARAMS[kind], n_features=N_FEATURES, classes=classes, seed=0
    )
    estimator = materialise(
        kind,
        MODEL_PARAMS[kind],
        n_features=N_FEATURES,
        classes=classes,
        seed=0,
        params=start,
    )

    train_local(
        kind,
        estimator,
        X,
        y,
        classes=classes,
        epochs=2,
        batch_size=8,
        rng=np.random.default_rng(1),
    )

    assert classes[-1] not in set(y.tolist())
    assert list(estimator.classes_) == classes
    after = extract_params(kind, estimator)
    assert _shapes(after) == _shapes(start)
    assert all(np.all(np.isfinite(v)) for v in after.values())
    assert estimator.predict_proba(X).shape == (len(X), n_classes)


@pytest.mark.parametrize("kind", CLASSIFIERS)
def test_silo_with_a_single_class(kind: str) -> None:
    classes = [0, 1, 2]
    X, _ = _rows(kind, 3, n=12)
    y = np.ones(12, dtype=int)
    estimator = materialise(
        kind, MODEL_PARAMS[kind], n_features=N_FEATURES, classes=classes, seed=0
    )

    train_local(
        kind,
        estimator,
        X,
        y,
        classes=classes,
        epochs=1,
        batch_size=None,
        rng=np.random.default_rng(0),
    )

    assert list(estimator.classes_) == classes
    assert _shapes(extract_params(kind, estimator)) == _shapes(
        init_params(
            kind, MODEL_PARAMS[kind], n_features=N_FEATURES, classes=classes, seed=0
        )
    )


def test_train_local_is_reproducible_for_a_seeded_rng() -> None:
    kind = "sgd-logistic"
    runs = []
    for _ in range(2):
        estimator = materialise(
            kind, MODEL_PARAMS[kind], n_features=N_FEATURES, classes=[0, 1], seed=5
        )
        X, y = _rows(kind)
        train_local(
            kind,
            estimator,
            X,
            y,
            classes=[0, 1],
            epochs=2,
            batch_size=7,
            rng=np.random.default_rng(42),
        )
        runs.append(extract_params(kind, estimator))

    for name in runs[0]:
        assert np.array_equal(runs[0][name], runs[1][name])


# --- build_estimator ----------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_build_estimator_applies_params_and_seed(kind: str) -> None:
    estimator = build_estimator(kind, MODEL_PARAMS[kind], seed=17)

    params = estimator.get_params()
    assert params["random_state"] == 17
    for key, value in MODEL_PARAMS[kind].items():
        assert params[key] == value


@pytest.mark.parametrize(
    ("kind", "params", "field"),
    [
        ("sgd-logistic", {"loss": "hinge"}, "loss"),
        ("sgd-logistic", {"loss": "modified_huber"}, "loss"),
        ("logistic", {"warm_start": False}, "warm_start"),
    ],
)
def test_forced_param_clash_is_spec_error(kind: str, params: dict, field: str) -> None:
    with pytest.raises(SpecError, match=field) as info:
        build_estimator(kind, params, seed=0)

    assert kind in info.value.reason


@pytest.mark.parametrize(
    ("kind", "params"),
    [("sgd-logistic", {"loss": "log_loss"}), ("logistic", {"warm_start": True})],
)
def test_forced_param_with_its_forced_value_accepted(kind: str, params: dict) -> None:
    estimator = build_estimator(kind, params, seed=0)

    assert estimator.get_params()[next(iter(params))] == next(iter(params.values()))


@pytest.mark.parametrize("kind", KINDS)
def test_unknown_param_is_spec_error(kind: str) -> None:
    with pytest.raises(SpecError, match="hidden_layers_size") as info:
        build_estimator(kind, {"hidden_layers_size": 5}, seed=0)

    assert info.value.reason.startswith("model.params")
