"""scikit-learn estimators as named arrays: build, materialise, train, extract.

The coordinator never sees rows, so a global model exists only as named arrays;
each silo turns them into a ready estimator, trains it on its own rows, and
hands back the arrays. Each function looks up the adapter registered for the
model kind (``tasks/averaging/model_adapters.py``); importing this module
registers the built-in kinds (linear models and MLPs).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from tasks.averaging.linear_models import sgd_step_sizes
from tasks.averaging.mlp_models import MlpModel, mlp_step_sizes
from tasks.averaging.model_adapters import (
    Labels,
    LocalTraining,
    Params,
    StartingPoint,
    adapter_kinds,
    model_adapter,
    proximal_shrink,
)

__all__ = [
    "build_estimator",
    "check_params",
    "extract_params",
    "init_params",
    "is_mlp",
    "materialise",
    "mlp_step_sizes",
    "proximal_shrink",
    "sgd_step_sizes",
    "train_local",
]


def build_estimator(kind: str, params: Mapping[str, Any], seed: int) -> Any:
    """Return an unfitted estimator of ``kind`` with the spec's parameters."""
    return model_adapter(kind).build(params, seed)


def check_params(kind: str, params: Mapping[str, Any]) -> None:
    """Raise ``SpecError`` naming ``model.params`` if scikit-learn refuses them.

    Scikit-learn checks parameter values only when an estimator first fits,
    which would be at every silo, as a silo failure; this checks them once,
    before any silo is read.
    """
    model_adapter(kind).check_params(params)


def is_mlp(kind: str) -> bool:
    """Return whether ``kind`` is a multilayer perceptron."""
    return kind in adapter_kinds() and isinstance(model_adapter(kind), MlpModel)


def extract_params(kind: str, estimator: Any) -> Params:
    """Return the estimator's learned state as named float arrays."""
    return model_adapter(kind).extract(estimator)


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
    start = StartingPoint(n_features, classes, seed, params)
    return model_adapter(kind).materialise(model_params, start)


def init_params(
    kind: str,
    model_params: Mapping[str, Any],
    *,
    n_features: int,
    classes: Labels,
    seed: int,
) -> Params:
    """Return the global model's initial arrays, the same for a given seed."""
    adapter = model_adapter(kind)
    start = StartingPoint(n_features, classes, seed)
    return adapter.extract(adapter.materialise(model_params, start))


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

    With ``proximal_mu`` > 0 this is FedProx (Li et al. 2020); see
    :meth:`~tasks.averaging.model_adapters.ModelAdapter.train`.
    """
    plan = LocalTraining(classes, epochs, batch_size, rng, proximal_mu)
    model_adapter(kind).train(estimator, X, y, plan)
