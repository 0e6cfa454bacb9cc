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
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning

from fedsilo.errors import SpecError
from fedsilo.registry import Registry
from fedsilo.spec import proximal_refusal

Params = dict[str, np.ndarray]
Labels = Sequence[Any]


@dataclass(frozen=True)
class StartingPoint:
    """What a built estimator starts from: its shape and the global arrays.

    ``classes`` are the global labels (ignored by a regressor); ``params``
    None means a fresh state, seeded with ``seed``.
    """

    n_features: int
    classes: Labels
    seed: int
    params: Mapping[str, np.ndarray] | None = None


@dataclass(frozen=True)
class LocalTraining:
    """How a silo trains the global model for one round.

    ``batch_size`` None is one batch of all rows; ``proximal_mu`` > 0 is
    FedProx (:meth:`ModelAdapter.train`).
    """

    classes: Labels
    epochs: int
    batch_size: int | None
    rng: np.random.Generator
    proximal_mu: float = 0.0


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

    def materialise(self, model_params: Mapping[str, Any], start: StartingPoint) -> Any:
        """Return an estimator ready to predict and to continue training."""
        estimator = self.build(model_params, start.seed)
        estimator.n_features_in_ = start.n_features
        self.set_state(estimator, start)
        return estimator

    def labels(self, start: StartingPoint) -> np.ndarray | None:
        """Return the classes as an array, or None for a regressor."""
        return np.asarray(start.classes) if self.classifier else None

    @abstractmethod
    def set_state(self, estimator: Any, start: StartingPoint) -> None:
        """Give a built estimator ``start.params`` (or a fresh state if None)."""

    @abstractmethod
    def extract(self, estimator: Any) -> Params:
        """Return the estimator's learned state as named float arrays."""

    def train(
        self, estimator: Any, X: np.ndarray, y: np.ndarray, plan: LocalTraining
    ) -> None:
        """Train ``estimator`` in place on one silo's rows for one round.

        With ``plan.proximal_mu`` > 0 this is FedProx (Li et al. 2020): after
        every mini-batch the parameters take the proximal step of
        ``mu/2 * ||w - w_global||**2`` toward the model the round started from
        (:func:`proximal_shrink`). ``proximal_mu`` 0 leaves training untouched.
        """
        if plan.proximal_mu > 0:
            refusal = proximal_refusal(self.kind, estimator.get_params())
            if refusal is not None:
                raise SpecError(refusal)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.fit(estimator, X, y, plan)

    def fit(
        self, estimator: Any, X: np.ndarray, y: np.ndarray, plan: LocalTraining
    ) -> None:
        """Run ``plan.epochs`` of shuffled mini-batches of ``partial_fit``."""
        mu = plan.proximal_mu
        anchor = self.anchor(estimator) if mu > 0 else None
        fit_args = {"classes": np.asarray(plan.classes)} if self.classifier else {}
        size = len(X) if plan.batch_size is None else plan.batch_size
        for _ in range(plan.epochs):
            order = plan.rng.permutation(len(X))
            for start in range(0, len(X), size):
                rows = order[start : start + size]
                if anchor is None:
                    estimator.partial_fit(X[rows], y[rows], **fit_args)
                    continue
                steps = self.step_sizes(estimator, len(rows))
                estimator.partial_fit(X[rows], y[rows], **fit_args)
                self.proximal_step(estimator, anchor, proximal_shrink(steps, mu))

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
