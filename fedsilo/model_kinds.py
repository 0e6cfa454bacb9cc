"""What a spec knows of each model kind: the task it serves, and FedProx's limits.

A kind is registered here with :func:`register_model_kind` so that the spec
accepts it and checks it before any silo is read; how the kind trains lives
with its family (``tasks/averaging/`` adapters, ``tasks/boosting/``),
registered under the same name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from fedsilo.registry import Registry

Task = Literal["classification", "regression"]

#: Learning-rate schedules of SGD estimators that have a step size per batch.
SGD_RATES = frozenset({"constant", "optimal", "invscaling", "adaptive"})


@dataclass(frozen=True)
class ModelKind:
    """A model kind as the spec checks it.

    ``task`` None means the kind serves either task (its parameters decide).
    """

    kind: str
    task: Task | None = None

    def proximal_refusal(self, params: Mapping[str, Any]) -> str | None:
        """Return why FedProx cannot train this model, or None if it can.

        The proximal step needs the step size the estimator used on each
        mini-batch; docs/strategies.md gives the models and the reasons.
        """
        return None


@dataclass(frozen=True)
class SgdKind(ModelKind):
    """scikit-learn's SGD estimators: one step per sample, by a rate schedule."""

    default_rate: str = "optimal"

    def proximal_refusal(self, params: Mapping[str, Any]) -> str | None:
        """Refuse schedules without a step size, and averaged weights."""
        rate = params.get("learning_rate", self.default_rate)
        if rate not in SGD_RATES:
            return (
                f"local.proximal_mu: model.params.learning_rate {rate!r} has no "
                "step size to scale the proximal step by; use one of "
                f"{sorted(SGD_RATES)}"
            )
        if params.get("average"):
            return (
                "local.proximal_mu: model.params.average reports averaged weights, "
                "not the iterate the proximal step applies to; leave average off"
            )
        return None


@dataclass(frozen=True)
class MlpKind(ModelKind):
    """scikit-learn's multilayer perceptrons."""

    def proximal_refusal(self, params: Mapping[str, Any]) -> str | None:
        """Refuse solvers that do not train by mini-batches."""
        solver = params.get("solver", "adam")
        if solver in {"adam", "sgd"}:
            return None
        return (
            f"local.proximal_mu: model.params.solver {solver!r} "
            "cannot train by mini-batches; use 'adam' or 'sgd'"
        )


@dataclass(frozen=True)
class NoProximalKind(ModelKind):
    """A kind whose training has no place for the proximal step, and why."""

    reason: str = ""

    def proximal_refusal(self, params: Mapping[str, Any]) -> str | None:
        """Return the reason: this kind never trains with FedProx."""
        return f"local.proximal_mu: {self.reason}"


_KINDS: Registry[ModelKind] = Registry("model kind")


def register_model_kind(kind: ModelKind) -> ModelKind:
    """Make ``kind.kind`` a model kind the spec accepts."""
    return _KINDS.register(kind.kind, kind)


def model_kind(name: str) -> ModelKind:
    """Return the registered model kind ``name``; an unknown name is refused."""
    return _KINDS.get(name)


def model_kinds() -> list[str]:
    """Return the registered model kinds."""
    return _KINDS.kinds()


register_model_kind(SgdKind("sgd-logistic", "classification", "optimal"))
register_model_kind(SgdKind("sgd-regressor", "regression", "invscaling"))
register_model_kind(
    NoProximalKind(
        "logistic",
        "classification",
        "model kind 'logistic' trains with LogisticRegression.fit (full-batch "
        "L-BFGS), whose objective cannot be given a term pulling toward the "
        "global model; use sgd-logistic or mlp-classifier for FedProx, or set "
        "local.proximal_mu to 0",
    )
)
register_model_kind(MlpKind("mlp-classifier", "classification"))
register_model_kind(MlpKind("mlp-regressor", "regression"))
register_model_kind(
    NoProximalKind(
        "xgboost",
        None,
        "kind 'xgboost' does no local optimisation (the coordinator grows every "
        "tree from summed histograms); set it to 0",
    )
)
