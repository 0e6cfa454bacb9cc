"""Evaluation maths: per-silo scores with sums that make global metrics exact."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from scipy.stats import rankdata

from tasks.protocol.messages import Evaluation

CLASSIFICATION = ("accuracy", "log_loss", "roc_auc")
REGRESSION = ("rmse", "mae", "r2")


def classification_scores(
    y: np.ndarray, proba: np.ndarray, classes: np.ndarray
) -> tuple[dict[str, float], dict[str, float]]:
    """Return (metrics, sums) of one silo's predicted probabilities."""
    n = len(y)
    if n == 0:
        nan = float("nan")
        return {"accuracy": nan, "log_loss": nan}, {
            "n": 0.0,
            "correct": 0.0,
            "log_loss_sum": 0.0,
        }
    index = np.searchsorted(classes, y)
    known = index < len(classes)
    if not known.all() or not np.array_equal(classes[index], y):
        unknown = y[~known] if not known.all() else y[classes[index] != y]
        raise ValueError(f"label {unknown[0]!r} is not one of the classes")
    predicted = classes[np.argmax(proba, axis=1)]
    correct = float(np.sum(predicted == y))
    loss = _log_loss(proba, index)
    metrics = {"accuracy": correct / n, "log_loss": loss}
    positive = y == classes[-1]
    n_positive = int(positive.sum())
    if len(classes) == 2 and 0 < n_positive < n:
        metrics["roc_auc"] = _roc_auc(proba[:, 1], positive, n_positive)
    sums = {"n": float(n), "correct": correct, "log_loss_sum": loss * n}
    return metrics, sums


def _log_loss(proba: np.ndarray, index: np.ndarray) -> float:
    """Mean negative log probability of the true class (scikit-learn's clipping).

    The formulas of ``sklearn.metrics.log_loss`` without its input validation,
    which costs milliseconds per call (benchmarks/metrics_cost.py).
    """
    eps = np.finfo(proba.dtype).eps
    clipped = np.clip(proba, eps, 1 - eps)
    clipped = clipped / clipped.sum(axis=1, keepdims=True)
    return float(-np.mean(np.log(clipped[np.arange(len(index)), index])))


def _roc_auc(score: np.ndarray, positive: np.ndarray, n_positive: int) -> float:
    """ROC AUC as the Mann-Whitney statistic; average ranks make ties count half."""
    ranks = rankdata(score)
    u = ranks[positive].sum() - n_positive * (n_positive + 1) / 2
    return float(u / (n_positive * (len(score) - n_positive)))


def regression_scores(
    y: np.ndarray, predicted: np.ndarray
) -> tuple[dict[str, float], dict[str, float]]:
    """Return (metrics, sums) of one silo's predictions."""
    y = np.asarray(y, dtype=np.float64)
    n = len(y)
    if n == 0:
        nan = float("nan")
        zero = {"n": 0.0, "sse": 0.0, "sae": 0.0, "mean_y": 0.0, "m2_y": 0.0}
        return {"rmse": nan, "mae": nan, "r2": nan}, zero
    error = predicted - y
    sse = float(np.sum(error**2))
    sae = float(np.sum(np.abs(error)))
    sst = float(np.sum((y - y.mean()) ** 2))
    metrics = {
        "rmse": float(np.sqrt(sse / n)),
        "mae": sae / n,
        "r2": 1.0 - sse / sst if sst > 0 else float("nan"),
    }
    sums = {
        "n": float(n),
        "sse": sse,
        "sae": sae,
        # Mean and squared deviations merge without cancellation (Chan et al.).
        "mean_y": float(y.mean()),
        "m2_y": sst,
    }
    return metrics, sums


def scores(
    task: str, y: np.ndarray, predicted: np.ndarray, classes: np.ndarray
) -> tuple[dict[str, float], dict[str, float]]:
    """Return (metrics, sums) of one split's predictions for ``task``.

    For classification ``predicted`` holds each class's probability, or for two
    classes may hold the second one's alone; ``classes`` is ignored otherwise.
    """
    if task != "classification":
        return regression_scores(y, predicted)
    if predicted.ndim == 1:
        predicted = np.column_stack([1.0 - predicted, predicted])
    return classification_scores(y, predicted, classes)


def evaluations(
    silo: str,
    round_number: int,
    worker: str,
    task: str,
    classes: np.ndarray,
    predictions: Iterable[tuple[str, np.ndarray, np.ndarray]],
) -> list[Evaluation]:
    """Return the silo's evaluation of each ``(split, y, predicted)``: its scores."""
    out = []
    for split, y, predicted in predictions:
        metrics, sums = scores(task, y, predicted, classes)
        out.append(
            Evaluation(
                silo=silo,
                round=round_number,
                worker=worker,
                split=split,
                n_samples=len(y),
                metrics=metrics,
                sums=sums,
            )
        )
    return out


def global_metrics(evaluations: Sequence[Evaluation], task: str) -> dict[str, float]:
    """Combine silos' sums into metrics over all their rows.

    Accuracy, log loss, RMSE, MAE and R2 equal the pooled values exactly; ROC AUC
    is the mean of the silos' AUCs weighted by their rows (a pooled AUC would
    need the scores themselves).
    """
    if not evaluations:
        return {}
    total = {key: sum(e.sums[key] for e in evaluations) for key in evaluations[0].sums}
    n = total["n"]
    if n == 0:
        return {}
    if task == "classification":
        out = {"accuracy": total["correct"] / n, "log_loss": total["log_loss_sum"] / n}
        with_auc = [e for e in evaluations if "roc_auc" in e.metrics]
        if with_auc:
            weights = np.array([e.n_samples for e in with_auc], dtype=np.float64)
            aucs = np.array([e.metrics["roc_auc"] for e in with_auc])
            out["roc_auc"] = float(np.dot(weights, aucs) / weights.sum())
        return out
    sst = _pooled_m2(
        [(e.sums["n"], e.sums["mean_y"], e.sums["m2_y"]) for e in evaluations]
    )
    return {
        "rmse": float(np.sqrt(total["sse"] / n)),
        "mae": total["sae"] / n,
        "r2": 1.0 - total["sse"] / sst if sst > 0 else float("nan"),
    }


def _pooled_m2(parts: Sequence[tuple[float, float, float]]) -> float:
    """Merge (count, mean, m2) triples into the pooled sum of squared deviations."""
    count, mean, m2 = 0.0, 0.0, 0.0
    for n, part_mean, part_m2 in parts:
        total = count + n
        if total == 0:
            continue
        delta = part_mean - mean
        mean += delta * n / total
        m2 += part_m2 + delta**2 * count * n / total
        count = total
    return m2
