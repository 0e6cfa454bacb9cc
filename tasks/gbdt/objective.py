"""Objectives: gradients, hessians, intercepts from federated sums, losses.

Formulas follow XGBoost: logistic ``g = p - y, h = max(p(1-p), 1e-16)``; squared
error ``g = m - y, h = 1``; softmax ``g_k = p_k - [y = k], h_k = max(2 p_k (1 -
p_k), 1e-16)``. Margins have one column per output (``num_class`` for softmax).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

HESS_EPS = 1e-16
#: Multi-class models write this neutral ``base_score`` (softmax ignores shifts).
NEUTRAL_BASE_SCORE = 0.5
_PROB_CLIP = 1e-6


@dataclass(frozen=True, slots=True)
class Intercept:
    """Starting point of boosting.

    ``base_score`` is written to the model; every output's margin starts at
    ``base_margin + offsets[k]``; ``offsets`` (non-zero for multi-class) are folded
    into the first round's leaves at export.
    """

    base_score: np.float32
    base_margin: float
    offsets: np.ndarray  # (n_outputs,) float64


class Objective(ABC):
    """Loss being boosted; pure functions of labels and margins."""

    name: str
    metric: str
    n_outputs: int = 1

    @abstractmethod
    def label_problem(self, y: np.ndarray) -> str | None:
        """Return why labels are invalid, or None when they are fine."""

    @abstractmethod
    def label_stats(self, y: np.ndarray) -> np.ndarray:
        """Return the sums a silo shares to fit the intercept."""

    @abstractmethod
    def intercept(self, stats: np.ndarray, base_score: float | None) -> Intercept:
        """Return the intercept from the silos' summed ``label_stats``."""

    @abstractmethod
    def gradients(
        self, y: np.ndarray, margin: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return float64 gradients and hessians, shaped like ``margin`` (n, K)."""

    @abstractmethod
    def transform(self, margin: np.ndarray) -> np.ndarray:
        """Return predictions (probabilities or values) from margins (n, K)."""

    @abstractmethod
    def loss_sum(self, y: np.ndarray, margin: np.ndarray) -> float:
        """Return the summed training loss (the metric before averaging)."""

    def metric_value(self, loss_sum: float, n: int) -> float:
        """Return the metric from a federated loss sum and row count."""
        return loss_sum / n if n else float("nan")

    def n_rows(self, stats: np.ndarray) -> int:
        """Return the federated row count from summed ``label_stats``."""
        return int(stats[0])

    def label_bound(self, y: np.ndarray) -> float:
        """Return a silo's bound on labels the gradient bound needs (max over silos)."""
        return 1.0

    def gradient_bound(self, label_bound: float, margin_bound: float) -> float:
        """Return a bound on every |gradient| and hessian given margin bounds."""
        return 1.0

    def base_margin(self, base_score: np.float32) -> float:
        """Return the margin XGBoost starts from for a stored ``base_score``."""
        return float(base_score)


def _finite_problem(y: np.ndarray) -> str | None:
    if not np.issubdtype(y.dtype, np.number) and y.dtype != np.bool_:
        return f"labels have dtype {y.dtype}; they must be numeric"
    if not np.all(np.isfinite(y.astype(np.float64))):
        return "labels must be finite (no NaN or infinity)"
    return None


def _sigmoid(m: np.ndarray) -> np.ndarray:
    out: np.ndarray = 0.5 * (1.0 + np.tanh(0.5 * m))
    return out


class BinaryLogistic(Objective):
    """``binary:logistic``: labels in [0, 1], margin is the log-odds."""

    name = "binary:logistic"
    metric = "logloss"

    def label_problem(self, y: np.ndarray) -> str | None:
        """Return why labels are invalid, or None."""
        problem = _finite_problem(y)
        if problem is None and (np.any(y < 0) or np.any(y > 1)):
            return "labels must lie in [0, 1] for binary:logistic"
        return problem

    def label_stats(self, y: np.ndarray) -> np.ndarray:
        """Return ``[n, sum(y)]``."""
        return np.array([y.shape[0], np.sum(y, dtype=np.float64)])

    def intercept(self, stats: np.ndarray, base_score: float | None) -> Intercept:
        """Return sigmoid(margin) of the label mean as base score."""
        if base_score is None:
            n, total = float(stats[0]), float(stats[1])
            base_score = min(max(total / n, _PROB_CLIP), 1.0 - _PROB_CLIP)
        bs = np.float32(base_score)
        if not 0.0 < bs < 1.0:
            raise ValueError("base_score must lie in (0, 1) for binary:logistic")
        return Intercept(bs, self.base_margin(bs), offsets=np.zeros(1))

    def base_margin(self, base_score: np.float32) -> float:
        """Return the log-odds of ``base_score``, in float32 as XGBoost does."""
        one = np.float32(1.0)
        return float(np.float32(-np.log(one / np.float32(base_score) - one)))

    def gradients(
        self, y: np.ndarray, margin: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return ``p - y`` and ``max(p (1 - p), eps)``."""
        p = _sigmoid(margin[:, 0])
        g = p - y
        h = np.maximum(p * (1.0 - p), HESS_EPS)
        return g[:, None], h[:, None]

    def transform(self, margin: np.ndarray) -> np.ndarray:
        """Return probabilities of the positive class, shape (n,)."""
        return _sigmoid(margin[:, 0])

    def loss_sum(self, y: np.ndarray, margin: np.ndarray) -> float:
        """Return the summed log-loss."""
        m = margin[:, 0]
        # log(1 + e^m) - y m, stably; cheaper than np.logaddexp(0, m)
        # (docs/benchmarks.md, "Kernel choices in the GBDT code").
        return float(np.sum(np.maximum(m, 0.0) - y * m + np.log1p(np.exp(-np.abs(m)))))


class SquaredError(Objective):
    """``reg:squarederror``: margin is the prediction."""

    name = "reg:squarederror"
    metric = "rmse"

    def label_problem(self, y: np.ndarray) -> str | None:
        """Return why labels are invalid, or None."""
        return _finite_problem(y)

    def label_stats(self, y: np.ndarray) -> np.ndarray:
        """Return ``[n, sum(y)]``."""
        return np.array([y.shape[0], np.sum(y, dtype=np.float64)])

    def intercept(self, stats: np.ndarray, base_score: float | None) -> Intercept:
        """Return the label mean as base score."""
        if base_score is None:
            base_score = float(stats[1]) / float(stats[0])
        bs = np.float32(base_score)
        return Intercept(base_score=bs, base_margin=float(bs), offsets=np.zeros(1))

    def gradients(
        self, y: np.ndarray, margin: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return ``m - y`` and ones."""
        g = margin[:, 0] - y
        return g[:, None], np.ones_like(g)[:, None]

    def transform(self, margin: np.ndarray) -> np.ndarray:
        """Return the predicted values, shape (n,)."""
        return margin[:, 0].copy()

    def loss_sum(self, y: np.ndarray, margin: np.ndarray) -> float:
        """Return the summed squared error."""
        return float(np.sum((margin[:, 0] - y) ** 2))

    def metric_value(self, loss_sum: float, n: int) -> float:
        """Return the root mean squared error."""
        return float(np.sqrt(loss_sum / n)) if n else float("nan")

    def label_bound(self, y: np.ndarray) -> float:
        """Return the largest |label| (the coordinator takes the max over silos)."""
        return float(np.max(np.abs(y), initial=0.0))

    def gradient_bound(self, label_bound: float, margin_bound: float) -> float:
        """Return ``max(1, |y|max + |m|max)``: ``|m - y|`` and the unit hessian."""
        return max(1.0, label_bound + margin_bound)


def _softmax(m: np.ndarray) -> np.ndarray:
    z = np.exp(m - m.max(axis=1, keepdims=True))
    out: np.ndarray = z / z.sum(axis=1, keepdims=True)
    return out


class SoftmaxMulti(Objective):
    """``multi:softprob``: integer labels in [0, num_class), one margin per class."""

    name = "multi:softprob"
    metric = "mlogloss"

    def __init__(self, num_class: int) -> None:
        if num_class < 2:
            raise ValueError("multi:softprob needs num_class >= 2")
        self.n_outputs = num_class

    def label_problem(self, y: np.ndarray) -> str | None:
        """Return why labels are invalid, or None."""
        problem = _finite_problem(y)
        if problem is not None:
            return problem
        k = self.n_outputs
        if np.any(y < 0) or np.any(y >= k) or np.any(y != np.floor(y)):
            return f"labels must be integers in [0, {k}) for multi:softprob"
        return None

    def n_rows(self, stats: np.ndarray) -> int:
        """Return the federated row count from summed class counts."""
        return int(stats.sum())

    def label_stats(self, y: np.ndarray) -> np.ndarray:
        """Return the row count of every class."""
        return np.bincount(y.astype(np.int64), minlength=self.n_outputs).astype(
            np.float64
        )

    def intercept(self, stats: np.ndarray, base_score: float | None) -> Intercept:
        """Return a neutral base score and centred log class priors as offsets."""
        if base_score is not None:
            bs = np.float32(base_score)
            return Intercept(bs, float(bs), np.zeros(self.n_outputs))
        prior = np.maximum(stats / stats.sum(), _PROB_CLIP)
        log_prior = np.log(prior)
        offsets = log_prior - log_prior.mean()
        bs = np.float32(NEUTRAL_BASE_SCORE)
        return Intercept(base_score=bs, base_margin=float(bs), offsets=offsets)

    def gradients(
        self, y: np.ndarray, margin: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return ``p_k - [y = k]`` and ``max(2 p_k (1 - p_k), eps)``."""
        p = _softmax(margin)
        g = p.copy()
        g[np.arange(y.shape[0]), y.astype(np.int64)] -= 1.0
        h = np.maximum(2.0 * p * (1.0 - p), HESS_EPS)
        return g, h

    def transform(self, margin: np.ndarray) -> np.ndarray:
        """Return class probabilities, shape (n, num_class)."""
        return _softmax(margin)

    def loss_sum(self, y: np.ndarray, margin: np.ndarray) -> float:
        """Return the summed multi-class log-loss."""
        top = margin.max(axis=1)
        lse = top + np.log(np.exp(margin - top[:, None]).sum(axis=1))
        picked = margin[np.arange(y.shape[0]), y.astype(np.int64)]
        return float(np.sum(lse - picked))


def make_objective(name: str, num_class: int = 0) -> Objective:
    """Return the objective called ``name`` (XGBoost's names)."""
    if name == "binary:logistic":
        return BinaryLogistic()
    if name == "reg:squarederror":
        return SquaredError()
    if name == "multi:softprob":
        return SoftmaxMulti(num_class)
    raise ValueError(
        f"unsupported objective {name!r}; use binary:logistic, "
        "reg:squarederror or multi:softprob"
    )
