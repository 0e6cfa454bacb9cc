"""scikit-learn estimators as named arrays: build, materialise, train, extract.

The coordinator never sees rows, so a global model exists only as named arrays;
each silo turns them into a ready estimator, trains it on its own rows, and
hands back the arrays.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, SGDClassifier, SGDRegressor
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils import check_random_state

from fedsilo.errors import SpecError

Params = dict[str, np.ndarray]
Labels = Sequence[Any]

_ESTIMATORS: dict[str, type[BaseEstimator]] = {
    "sgd-logistic": SGDClassifier,
    "sgd-regressor": SGDRegressor,
    "logistic": LogisticRegression,
    "mlp-classifier": MLPClassifier,
    "mlp-regressor": MLPRegressor,
}
_FORCED: dict[str, dict[str, Any]] = {
    "sgd-logistic": {"loss": "log_loss"},
    "logistic": {"warm_start": True},
}


def build_estimator(kind: str, params: Mapping[str, Any], seed: int) -> Any:
    """Return an unfitted estimator of ``kind`` with the spec's parameters."""
    cls = _ESTIMATORS[kind]
    forced = _FORCED.get(kind, {})
    clash = {k for k in forced if k in params and params[k] != forced[k]}
    if clash:
        raise SpecError(f"model.params: {sorted(clash)} cannot be changed for {kind}")
    try:
        estimator = cls(**{**dict(params), **forced})
    except TypeError as error:
        raise SpecError(f"model.params: {error}") from None
    if "random_state" in estimator.get_params():
        estimator.set_params(random_state=seed)
    return estimator


def is_mlp(kind: str) -> bool:
    """Return whether ``kind`` is a multilayer perceptron."""
    return kind.startswith("mlp")


def extract_params(kind: str, estimator: Any) -> Params:
    """Return the estimator's learned state as named float arrays."""
    if is_mlp(kind):
        out = {f"coefs_{i}": np.array(c) for i, c in enumerate(estimator.coefs_)}
        out.update(
            {
                f"intercepts_{i}": np.array(b)
                for i, b in enumerate(estimator.intercepts_)
            }
        )
        return out
    params = {
        "coef_": np.array(estimator.coef_, dtype=np.float64),
        "intercept_": np.atleast_1d(np.array(estimator.intercept_, dtype=np.float64)),
    }
    if kind.startswith("sgd"):
        params["t_"] = np.array(float(estimator.t_))
    return params


def materialise(
    kind: str,
    model_params: Mapping[str, Any],
    *,
    n_features: int,
    classes: Labels,
    seed: int,
    params: Mapping[str, np.ndarray] | None = None,
) -> Any:
    """Return an estimator ready to predict and to continue training.

    With ``params`` None the state is freshly initialised (zeros for linear
    models, scikit-learn's Glorot initialisation for MLPs, seeded).
    """
    estimator = build_estimator(kind, model_params, seed)
    estimator.n_features_in_ = n_features
    is_classifier = kind in {"sgd-logistic", "logistic", "mlp-classifier"}
    class_array = np.asarray(classes) if is_classifier else None
    if is_mlp(kind):
        _materialise_mlp(estimator, n_features, class_array, seed)
        if params is not None:
            for i, coef in enumerate(estimator.coefs_):
                coef[...] = params[f"coefs_{i}"]
            for i, intercept in enumerate(estimator.intercepts_):
                intercept[...] = params[f"intercepts_{i}"]
        return estimator
    n_rows = 1 if class_array is None or len(class_array) <= 2 else len(class_array)
    if params is None:
        coef = np.zeros((n_rows, n_features))
        intercept = np.zeros(n_rows)
        t = np.array(1.0)
    else:
        coef = np.array(params["coef_"], dtype=np.float64)
        intercept = np.array(params["intercept_"], dtype=np.float64)
        t = np.array(params.get("t_", np.array(1.0)))
    if kind == "sgd-regressor":
        coef = coef.reshape(-1)
    estimator.coef_ = coef
    estimator.intercept_ = intercept
    if class_array is not None:
        estimator.classes_ = class_array
    if kind.startswith("sgd"):
        estimator.t_ = float(t)
    return estimator


def _materialise_mlp(
    estimator: Any, n_features: int, classes: np.ndarray | None, seed: int
) -> None:
    hidden = estimator.hidden_layer_sizes
    hidden = list(hidden) if hasattr(hidden, "__iter__") else [hidden]
    if classes is not None:
        binarizer = LabelBinarizer().fit(classes)
        estimator._label_binarizer = binarizer
        estimator.classes_ = binarizer.classes_
        n_outputs = 1 if len(classes) <= 2 else len(classes)
        y_stub = binarizer.transform(classes[: max(2, len(classes))])
    else:
        n_outputs = 1
        y_stub = np.zeros((2, 1))
    estimator._random_state = check_random_state(seed)
    # scikit-learn's own initialiser gives the exact attributes partial_fit needs.
    estimator._initialize(
        y_stub.reshape(len(y_stub), -1), [n_features, *hidden, n_outputs], np.float64
    )


def init_params(
    kind: str,
    model_params: Mapping[str, Any],
    *,
    n_features: int,
    classes: Labels,
    seed: int,
) -> Params:
    """Return the global model's initial arrays, the same for a given seed."""
    estimator = materialise(
        kind, model_params, n_features=n_features, classes=classes, seed=seed
    )
    return extract_params(kind, estimator)


def train_local(
    kind: str,
    estimator: Any,
    X: np.ndarray,
    y: np.ndarray,
    *,
    classes: Labels,
    epochs: int,
    batch_size: int | None,
    rng: np.random.Generator,
) -> None:
    """Train ``estimator`` in place on one silo's rows for one round."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        if kind == "logistic":
            _fit_logistic(estimator, X, y, np.asarray(classes), epochs)
            return
        is_classifier = kind in {"sgd-logistic", "mlp-classifier"}
        size = len(X) if batch_size is None else batch_size
        for _ in range(epochs):
            order = rng.permutation(len(X))
            for start in range(0, len(X), size):
                rows = order[start : start + size]
                if is_classifier:
                    estimator.partial_fit(X[rows], y[rows], classes=np.asarray(classes))
                else:
                    estimator.partial_fit(X[rows], y[rows])


def _fit_logistic(
    estimator: LogisticRegression,
    X: np.ndarray,
    y: np.ndarray,
    classes: np.ndarray,
    epochs: int,
) -> None:
    """Warm-started L-BFGS for ``epochs`` iterations, with every global class known.

    A silo that lacks a class gets one zero-weight row of it, so the estimator
    keeps the global shape while the missing class adds nothing to the loss.
    """
    missing = np.setdiff1d(classes, np.unique(y))
    weights = np.ones(len(y))
    if len(missing):
        X = np.vstack([X, np.zeros((len(missing), X.shape[1]))])
        y = np.concatenate([y, missing.astype(y.dtype)])
        weights = np.concatenate([weights, np.zeros(len(missing))])
    estimator.set_params(max_iter=epochs)
    estimator.fit(X, y, sample_weight=weights)
