"""Model kinds of the averaged family as registered adapters.

An adapter turns the global model's named arrays into a ready scikit-learn
estimator at a silo, trains it on the silo's rows and hands back its arrays.
Each kind (or family of kinds) is one :class:`ModelAdapter` subclass whose
instance is registered under the kind with :func:`register_model`; the spec
accepts the kind once ``fedsilo/model_kinds.py`` declares it.
``tasks/averaging/sklearn_models.py`` imports the built-in adapters and looks
them up by kind.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning

from fedsilo.errors import SpecError
from fedsilo.registry import Registry
from fedsilo.spec import proximal_refusal

Params = dict[str, np.ndarray]
Labels = Sequence[Any]


class ModelAdapter(ABC):
    """One model kind: build, materialise, train and extract its estimator.

    ``estimator`` is the scikit-learn class, ``classifier`` whether the kind
    predicts classes, and ``forced`` the constructor parameters fedsilo sets
    whatever the spec says.
    """

    def __init__(
        self,
        kind: str,
        estimator: type[Any],
        *,
        classifier: bool,
        forced: Mapping[str, Any] | None = None,
    ) -> None:
        self.kind = kind
        self.estimator = estimator
        self.classifier = classifier
        self.forced = dict(forced or {})

    def build(self, params: Mapping[str, Any], seed: int) -> Any:
        """Return an unfitted estimator with the spec's parameters."""
        clash = {k for k in self.forced if k in params and params[k] != self.forced[k]}
        if clash:
            raise SpecError(
                f"model.params: {sorted(clash)} cannot be changed for {self.kind}"
            )
        try:
            estimator = self.estimator(**{**dict(params), **self.forced})
        except TypeError as error:
            raise SpecError(f"model.params: {error}") from None
        if "random_state" in estimator.get_params():
            estimator.set_params(random_state=seed)
        return estimator

    def check_params(self, params: Mapping[str, Any]) -> None:
        """Raise ``SpecError`` naming ``model.params`` if scikit-learn refuses them."""
        try:
            self.build(params, 0)._validate_params()
        except (ValueError, TypeError) as error:
            raise SpecError(f"model.params: {error}") from None

    def materialise(
        self,
        model_params: Mapping[str, Any],
        *,
        n_features: int,
        classes: Labels,
        seed: int,
        params: Mapping[str, np.ndarray] | None = None,
    ) -> Any:
        """Return an estimator ready to predict and to continue training.

        With ``params`` None the state is freshly initialised (seeded).
        """
        estimator = self.build(model_params, seed)
        estimator.n_features_in_ = n_features
        labels = np.asarray(classes) if self.classifier else None
        self.set_state(estimator, n_features, labels, seed, params)
        return estimator

    @abstractmethod
    def set_state(
        self,
        estimator: Any,
        n_features: int,
        classes: np.ndarray | None,
        seed: int,
        params: Mapping[str, np.ndarray] | None,
    ) -> None:
        """Give a built estimator ``params`` (or a fresh state if None)."""

    @abstractmethod
    def extract(self, estimator: Any) -> Params:
        """Return the estimator's learned state as named float arrays."""

    def train(
        self,
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
            refusal = proximal_refusal(self.kind, estimator.get_params())
            if refusal is not None:
                raise SpecError(refusal)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.fit(
                estimator,
                X,
                y,
                classes=np.asarray(classes),
                epochs=epochs,
                batch_size=batch_size,
                rng=rng,
                proximal_mu=proximal_mu,
            )

    def fit(
        self,
        estimator: Any,
        X: np.ndarray,
        y: np.ndarray,
        *,
        classes: np.ndarray,
        epochs: int,
        batch_size: int | None,
        rng: np.random.Generator,
        proximal_mu: float,
    ) -> None:
        """Run ``epochs`` of shuffled mini-batches of ``partial_fit``."""
        anchor = self.anchor(estimator) if proximal_mu > 0 else None
        fit_args = {"classes": classes} if self.classifier else {}
        size = len(X) if batch_size is None else batch_size
        for _ in range(epochs):
            order = rng.permutation(len(X))
            for start in range(0, len(X), size):
                rows = order[start : start + size]
                if anchor is None:
                    estimator.partial_fit(X[rows], y[rows], **fit_args)
                    continue
                steps = self.step_sizes(estimator, len(rows))
                estimator.partial_fit(X[rows], y[rows], **fit_args)
                shrink = proximal_shrink(steps, proximal_mu)
                self.proximal_step(estimator, anchor, shrink)

    def anchor(self, estimator: Any) -> Params:
        """Return the parameters the proximal step pulls toward (this round's start)."""
        return self.extract(estimator)

    def step_sizes(self, estimator: Any, n_rows: int) -> np.ndarray:
        """Return the step sizes ``partial_fit`` takes on its next ``n_rows``."""
        raise SpecError(f"local.proximal_mu: model kind {self.kind!r} has no steps")

    def proximal_step(self, estimator: Any, anchor: Params, shrink: float) -> None:
        """Move every parameter to ``anchor + shrink * (w - anchor)``."""
        raise SpecError(f"local.proximal_mu: model kind {self.kind!r} has no steps")


def proximal_shrink(step_sizes: np.ndarray, mu: float) -> float:
    """Return the factor by which consecutive proximal steps shrink ``w - w_global``.

    One proximal step of ``mu/2 * ||w - w_global||**2`` with step size ``eta`` is
    ``w <- (w + eta * mu * w_global) / (1 + eta * mu)``, i.e. ``w - w_global``
    times ``1 / (1 + eta * mu)``; steps in a row multiply.
    """
    return float(np.exp(-np.sum(np.log1p(mu * np.asarray(step_sizes)))))


_ADAPTERS: Registry[ModelAdapter] = Registry("model kind")


def register_model(adapter: ModelAdapter) -> ModelAdapter:
    """Register ``adapter`` under its kind; the averaged family then trains it."""
    return _ADAPTERS.register(adapter.kind, adapter)


def model_adapter(kind: str) -> ModelAdapter:
    """Return the adapter registered under ``kind``; an unknown kind is refused."""
    return _ADAPTERS.get(kind)


def adapter_kinds() -> list[str]:
    """Return the model kinds the averaged family can train."""
    return _ADAPTERS.kinds()
