"""Multilayer perceptron kinds: scikit-learn's MLPClassifier and MLPRegressor.

Their state is ``coefs_<i>`` and ``intercepts_<i>`` per layer; a fresh model
is scikit-learn's own (seeded) Glorot initialisation.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils import check_random_state

from tasks.averaging.model_adapters import (
    ModelAdapter,
    Params,
    StartingPoint,
    register_model,
)


class MlpModel(ModelAdapter):
    """A multilayer perceptron, trained by ``partial_fit`` with adam or sgd."""

    def set_state(self, estimator: Any, start: StartingPoint) -> None:
        """Initialise the layers as scikit-learn does, then copy ``params`` in."""
        _initialise(estimator, start.n_features, self.labels(start), start.seed)
        if start.params is None:
            return
        for name, array in _layers(estimator):
            array[...] = start.params[name]

    def extract(self, estimator: Any) -> Params:
        """Return every layer's weights and intercepts."""
        return {name: np.array(array) for name, array in _layers(estimator)}

    def step_sizes(self, estimator: Any, n_rows: int) -> np.ndarray:
        """Return the steps ``partial_fit`` takes (:func:`mlp_step_sizes`)."""
        return mlp_step_sizes(estimator, n_rows)

    def proximal_step(self, estimator: Any, anchor: Params, shrink: float) -> None:
        """Move every layer toward ``anchor``, in place.

        In place: the optimiser of this round holds references to these arrays.
        """
        for name, array in _layers(estimator):
            centre = anchor[name]
            array[...] = centre + shrink * (array - centre)


def _layers(estimator: Any) -> Iterator[tuple[str, np.ndarray]]:
    """Yield the weights, then the intercepts, of every layer with its name."""
    for attribute in ("coefs_", "intercepts_"):
        for i, array in enumerate(getattr(estimator, attribute)):
            yield f"{attribute}{i}", array


def _initialise(
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


register_model(MlpModel("mlp-classifier", MLPClassifier, classifier=True))
register_model(MlpModel("mlp-regressor", MLPRegressor, classifier=False))
