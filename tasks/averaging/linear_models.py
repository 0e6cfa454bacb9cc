"""Linear model kinds: SGD classifier and regressor, and L-BFGS logistic regression.

Their state is ``coef_`` and ``intercept_`` (plus the SGD step counter ``t_``);
a fresh model is all zeros.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression, SGDClassifier, SGDRegressor

from fedsilo.errors import SpecError
from tasks.averaging.model_adapters import (
    LocalTraining,
    ModelAdapter,
    Params,
    StartingPoint,
    register_model,
)


class LinearModel(ModelAdapter):
    """A linear model: one coefficient row per class (one for two), an intercept."""

    def set_state(self, estimator: Any, start: StartingPoint) -> None:
        """Set ``coef_``, ``intercept_`` and ``classes_`` (zeros if no params)."""
        classes = self.labels(start)
        n_rows = 1 if classes is None or len(classes) <= 2 else len(classes)
        if start.params is None:
            coef = np.zeros((n_rows, start.n_features))
            intercept = np.zeros(n_rows)
        else:
            coef = np.array(start.params["coef_"], dtype=np.float64)
            intercept = np.array(start.params["intercept_"], dtype=np.float64)
        estimator.coef_ = coef if self.classifier else coef.reshape(-1)
        estimator.intercept_ = intercept
        if classes is not None:
            estimator.classes_ = classes

    def extract(self, estimator: Any) -> Params:
        """Return ``coef_`` and ``intercept_`` as float arrays."""
        return {
            "coef_": np.array(estimator.coef_, dtype=np.float64),
            "intercept_": np.atleast_1d(
                np.array(estimator.intercept_, dtype=np.float64)
            ),
        }

    def proximal_step(self, estimator: Any, anchor: Params, shrink: float) -> None:
        """Move ``coef_`` and ``intercept_`` to ``anchor + shrink * (w - anchor)``."""
        coef = np.asarray(estimator.coef_, dtype=np.float64)
        centre = anchor["coef_"].reshape(coef.shape)
        estimator.coef_ = np.ascontiguousarray(centre + shrink * (coef - centre))
        intercept = np.atleast_1d(np.asarray(estimator.intercept_, dtype=np.float64))
        estimator.intercept_ = anchor["intercept_"] + shrink * (
            intercept - anchor["intercept_"]
        )


class SgdModel(LinearModel):
    """scikit-learn's SGD estimators, which also carry their step counter ``t_``."""

    def set_state(self, estimator: Any, start: StartingPoint) -> None:
        """Set the linear state and ``t_`` (1 if fresh)."""
        super().set_state(estimator, start)
        params = start.params
        t = np.array(1.0) if params is None else params.get("t_", np.array(1.0))
        estimator.t_ = float(np.asarray(t))

    def extract(self, estimator: Any) -> Params:
        """Return the linear state and ``t_``."""
        return {**super().extract(estimator), "t_": np.array(float(estimator.t_))}

    def anchor(self, estimator: Any) -> Params:
        """Return the linear state without ``t_``, which the proximal step leaves."""
        params = self.extract(estimator)
        params.pop("t_")
        return params

    def step_sizes(self, estimator: Any, n_rows: int) -> np.ndarray:
        """Return the steps of the next ``n_rows`` samples (:func:`sgd_step_sizes`)."""
        if not hasattr(estimator, "t_"):
            estimator.t_ = 1.0
        return sgd_step_sizes(estimator, n_rows)


class LogisticModel(LinearModel):
    """Logistic regression by L-BFGS, warm-started from the global model."""

    def fit(
        self, estimator: Any, X: np.ndarray, y: np.ndarray, plan: LocalTraining
    ) -> None:
        """Run ``plan.epochs`` L-BFGS iterations, with every global class known.

        A silo that lacks a class gets one zero-weight row of it, so the
        estimator keeps the global shape while the missing class adds nothing
        to the loss.
        """
        missing = np.setdiff1d(np.asarray(plan.classes), np.unique(y))
        weights = np.ones(len(y))
        if len(missing):
            X = np.vstack([X, np.zeros((len(missing), X.shape[1]))])
            y = np.concatenate([y, missing.astype(y.dtype)])
            weights = np.concatenate([weights, np.zeros(len(missing))])
        estimator.set_params(max_iter=plan.epochs)
        estimator.fit(X, y, sample_weight=weights)


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


register_model(
    SgdModel(
        "sgd-logistic", SGDClassifier, classifier=True, forced={"loss": "log_loss"}
    )
)
register_model(SgdModel("sgd-regressor", SGDRegressor, classifier=False))
register_model(
    LogisticModel(
        "logistic", LogisticRegression, classifier=True, forced={"warm_start": True}
    )
)
