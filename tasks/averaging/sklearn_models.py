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
from fedsilo.spec import proximal_refusal

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


def check_params(kind: str, params: Mapping[str, Any]) -> None:
    """Raise ``SpecError`` naming ``model.params`` if scikit-learn refuses them.

    Scikit-learn checks parameter values only when an estimator first fits,
    which would be at every silo, as a silo failure; this checks them once,
    before any silo is read.
    """
    estimator = build_estimator(kind, params, 0)
    try:
        estimator._validate_params()
    except (ValueError, TypeError) as error:
        raise SpecError(f"model.params: {error}") from None


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
    proximal_mu: float = 0.0,
) -> None:
    """Train ``estimator`` in place on one silo's rows for one round.

    With ``proximal_mu`` > 0 this is FedProx (Li et al. 2020): after every
    mini-batch the parameters take the proximal step of
    ``mu/2 * ||w - w_global||**2`` toward the model the round started from
    (:func:`proximal_shrink`). ``proximal_mu`` 0 leaves training untouched.
    """
    if proximal_mu > 0:
        refusal = proximal_refusal(kind, estimator.get_params())
        if refusal is not None:
            raise SpecError(refusal)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        if kind == "logistic":
            _fit_logistic(estimator, X, y, np.asarray(classes), epochs)
            return
        anchor = _proximal_anchor(kind, estimator) if proximal_mu > 0 else None
        is_classifier = kind in {"sgd-logistic", "mlp-classifier"}
        size = len(X) if batch_size is None else batch_size
        for _ in range(epochs):
            order = rng.permutation(len(X))
            for start in range(0, len(X), size):
                rows = order[start : start + size]
                steps = None
                if anchor is not None:
                    steps = _step_sizes(kind, estimator, len(rows))
                if is_classifier:
                    estimator.partial_fit(X[rows], y[rows], classes=np.asarray(classes))
                else:
                    estimator.partial_fit(X[rows], y[rows])
                if anchor is not None and steps is not None:
                    _proximal_step(
                        kind, estimator, anchor, proximal_shrink(steps, proximal_mu)
                    )


def sgd_step_sizes(estimator: Any, n_rows: int) -> np.ndarray:
    """Return the step sizes scikit-learn's SGD uses on its next ``n_rows`` samples.

    ``partial_fit`` takes one step per sample, the ``t``-th (counting from
    ``estimator.t_``) with the schedule of ``sklearn/linear_model/_sgd_fast``:
    ``constant`` and ``adaptive`` use ``eta0`` (``adaptive`` only divides it
    between epochs of one ``fit``; a ``partial_fit`` call is a single epoch),
    ``invscaling`` ``eta0 / t**power_t`` and ``optimal``
    ``1 / (alpha * (t0 + t - 1))`` with ``t0 = 1 / (alpha * sqrt(alpha**-0.5))``
    (scikit-learn's heuristic initial step ``sqrt(alpha**-0.5) / max(1, dloss)``,
    where ``dloss`` at ``(y=1, p=-sqrt(alpha**-0.5))`` is negative for every
    loss fedsilo offers, so the ``max`` is 1).
    """
    rate = estimator.learning_rate
    t = float(estimator.t_) + np.arange(n_rows, dtype=np.float64)
    if rate in {"constant", "adaptive"}:
        return np.full(n_rows, float(estimator.eta0))
    if rate == "invscaling":
        return float(estimator.eta0) / t ** float(estimator.power_t)
    if rate == "optimal":
        alpha = float(estimator.alpha)
        initial_eta = np.sqrt(1.0 / np.sqrt(alpha))
        optimal_init = 1.0 / (initial_eta * alpha)
        return 1.0 / (alpha * (optimal_init + t - 1.0))
    raise SpecError(f"model.params.learning_rate {rate!r}: no step size for FedProx")


def mlp_step_sizes(estimator: Any, n_rows: int) -> np.ndarray:
    """Return the step sizes of the optimiser steps ``partial_fit`` takes on ``n_rows``.

    ``partial_fit`` splits its rows into batches of the estimator's own
    ``batch_size`` (``auto``: 200) and takes one optimiser step per batch. The
    proximal step is decoupled from the optimiser, as weight decay is in SGDW
    and AdamW (Loshchilov and Hutter 2019): with ``sgd`` it uses the current
    learning rate (``invscaling``/``adaptive`` as the optimiser holds it) and
    ignores momentum; with ``adam`` it uses ``learning_rate_init``, Adam's
    nominal step, not the per-coordinate adaptive one.
    """
    size = estimator.batch_size
    batch = min(200, n_rows) if size == "auto" else int(np.clip(size, 1, n_rows))
    n_steps = -(-n_rows // batch)
    rate = float(estimator.learning_rate_init)
    optimizer = getattr(estimator, "_optimizer", None)
    if estimator.solver == "sgd" and optimizer is not None:
        rate = float(optimizer.learning_rate)
    return np.full(n_steps, rate)


def proximal_shrink(step_sizes: np.ndarray, mu: float) -> float:
    """Return the factor by which consecutive proximal steps shrink ``w - w_global``.

    One proximal step of ``mu/2 * ||w - w_global||**2`` with step size ``eta`` is
    ``w <- (w + eta * mu * w_global) / (1 + eta * mu)``, i.e. ``w - w_global``
    times ``1 / (1 + eta * mu)``; steps in a row multiply.
    """
    return float(np.exp(-np.sum(np.log1p(mu * np.asarray(step_sizes)))))


def _step_sizes(kind: str, estimator: Any, n_rows: int) -> np.ndarray:
    if is_mlp(kind):
        return mlp_step_sizes(estimator, n_rows)
    if not hasattr(estimator, "t_"):
        estimator.t_ = 1.0
    return sgd_step_sizes(estimator, n_rows)


def _proximal_anchor(kind: str, estimator: Any) -> Params:
    params = extract_params(kind, estimator)
    params.pop("t_", None)
    return params


def _proximal_step(kind: str, estimator: Any, anchor: Params, shrink: float) -> None:
    """Move every parameter to ``anchor + shrink * (w - anchor)``, in place for MLPs."""
    if is_mlp(kind):
        # In place: the optimiser of this round holds references to these arrays.
        for i, coef in enumerate(estimator.coefs_):
            centre = anchor[f"coefs_{i}"]
            coef[...] = centre + shrink * (coef - centre)
        for i, intercept in enumerate(estimator.intercepts_):
            centre = anchor[f"intercepts_{i}"]
            intercept[...] = centre + shrink * (intercept - centre)
        return
    coef = np.asarray(estimator.coef_, dtype=np.float64)
    centre = anchor["coef_"].reshape(coef.shape)
    estimator.coef_ = np.ascontiguousarray(centre + shrink * (coef - centre))
    intercept = np.atleast_1d(np.asarray(estimator.intercept_, dtype=np.float64))
    estimator.intercept_ = anchor["intercept_"] + shrink * (
        intercept - anchor["intercept_"]
    )


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
