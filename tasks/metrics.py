"""Evaluation maths: per-silo scores with sums that make global metrics exact."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import log_loss, roc_auc_score

from fedsilo.tasks.messages import Evaluation

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
    predicted = classes[np.argmax(proba, axis=1)]
    correct = float(np.sum(predicted == y))
    loss = float(log_loss(y, proba, labels=classes))
    metrics = {"accuracy": correct / n, "log_loss": loss}
    if len(classes) == 2 and len(np.unique(y)) == 2:
        metrics["roc_auc"] = float(roc_auc_score(y == classes[1], proba[:, 1]))
    sums = {"n": float(n), "correct": correct, "log_loss_sum": loss * n}
    return metrics, sums


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
