"""Tests of evaluation maths: global metrics from per-silo sums equal pooled ones."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import (
    accuracy_score,
    log_loss,
    mean_absolute_error,
    mean_squared_error,
    r2_score,
    roc_auc_score,
)

from tasks.metrics import (
    classification_scores,
    global_metrics,
    regression_scores,
)
from tasks.protocol.messages import Evaluation

SIZES = [1, 7, 23, 40]  # includes a one-row silo


def _cuts(sizes: list[int]) -> list[slice]:
    ends = np.cumsum(sizes)
    return [slice(int(e - s), int(e)) for s, e in zip(sizes, ends, strict=True)]


def _evaluation(silo: str, n: int, scores: tuple[dict, dict]) -> Evaluation:
    metrics, sums = scores
    return Evaluation(
        silo=silo,
        round=1,
        worker=f"worker-{silo}",
        split="test",
        n_samples=n,
        metrics=metrics,
        sums=sums,
    )


def _classification_case(
    n_classes: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    classes = np.arange(n_classes)
    y = rng.integers(0, n_classes, sum(SIZES))
    y[SIZES[0] : SIZES[0] + SIZES[1]] = 0  # one silo sees a single class
    logits = rng.normal(size=(len(y), n_classes))
    logits[np.arange(len(y)), y] += 1.0
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, proba, classes


# --- classification ----------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n_classes", [2, 3])
def test_global_classification_equals_pooled(n_classes: int, seed: int) -> None:
    y, proba, classes = _classification_case(n_classes, seed)
    evaluations = [
        _evaluation(
            f"s{i}", len(y[rows]), classification_scores(y[rows], proba[rows], classes)
        )
        for i, rows in enumerate(_cuts(SIZES))
    ]

    out = global_metrics(evaluations, "classification")

    assert out["accuracy"] == pytest.approx(
        accuracy_score(y, classes[proba.argmax(axis=1)]), rel=1e-12
    )
    assert out["log_loss"] == pytest.approx(
        log_loss(y, proba, labels=classes), rel=1e-10
    )


def test_classification_scores_of_one_silo() -> None:
    classes = np.array([0, 1])
    y = np.array([0, 1, 1, 0])
    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])

    metrics, sums = classification_scores(y, proba, classes)

    assert metrics["accuracy"] == 0.5
    assert metrics["log_loss"] == pytest.approx(log_loss(y, proba))
    assert metrics["roc_auc"] == pytest.approx(roc_auc_score(y, proba[:, 1]))
    assert sums["n"] == 4.0
    assert sums["correct"] == 2.0
    assert sums["log_loss_sum"] == pytest.approx(4 * log_loss(y, proba))


def test_classification_scores_string_labels() -> None:
    classes = np.array(["cat", "dog"])
    y = np.array(["dog", "dog", "cat"])
    proba = np.array([[0.1, 0.9], [0.7, 0.3], [0.8, 0.2]])

    metrics, _ = classification_scores(y, proba, classes)

    assert metrics["accuracy"] == pytest.approx(2 / 3)
    assert metrics["roc_auc"] == pytest.approx(roc_auc_score(y == "dog", proba[:, 1]))


def test_roc_auc_present_for_binary_with_both_classes() -> None:
    y, proba, classes = _classification_case(2, 0)

    metrics, _ = classification_scores(y, proba, classes)

    assert metrics["roc_auc"] == pytest.approx(roc_auc_score(y, proba[:, 1]))


def test_roc_auc_absent_for_binary_with_one_class() -> None:
    classes = np.array([0, 1])
    y = np.array([1, 1, 1])
    proba = np.array([[0.2, 0.8], [0.6, 0.4], [0.1, 0.9]])

    metrics, _ = classification_scores(y, proba, classes)

    assert "roc_auc" not in metrics
    assert metrics["accuracy"] == pytest.approx(2 / 3)


def test_roc_auc_absent_for_multiclass() -> None:
    y, proba, classes = _classification_case(3, 0)

    metrics, _ = classification_scores(y, proba, classes)

    assert "roc_auc" not in metrics
    assert set(metrics) == {"accuracy", "log_loss"}


def test_global_roc_auc_only_from_silos_that_have_it() -> None:
    y, proba, classes = _classification_case(2, 3)
    cuts = _cuts(SIZES)
    evaluations = [
        _evaluation(
            f"s{i}", len(y[rows]), classification_scores(y[rows], proba[rows], classes)
        )
        for i, rows in enumerate(cuts)
    ]
    with_auc = [e for e in evaluations if "roc_auc" in e.metrics]

    out = global_metrics(evaluations, "classification")

    assert len(with_auc) == 2  # the one-row and the single-class silo have none
    expected = np.average(
        [e.metrics["roc_auc"] for e in with_auc],
        weights=[e.n_samples for e in with_auc],
    )
    assert out["roc_auc"] == pytest.approx(expected)


def test_global_roc_auc_absent_when_no_silo_has_it() -> None:
    y, proba, classes = _classification_case(3, 0)
    evaluations = [
        _evaluation(
            f"s{i}", len(y[rows]), classification_scores(y[rows], proba[rows], classes)
        )
        for i, rows in enumerate(_cuts(SIZES))
    ]

    out = global_metrics(evaluations, "classification")

    assert set(out) == {"accuracy", "log_loss"}


def test_classification_scores_of_an_empty_split() -> None:
    classes = np.array([0, 1])

    metrics, sums = classification_scores(
        np.array([], dtype=int), np.empty((0, 2)), classes
    )

    assert sums["n"] == 0.0
    assert np.isnan(metrics["accuracy"])


# --- regression --------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_global_regression_equals_pooled(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.normal(50.0, 10.0, sum(SIZES))
    predicted = y + rng.normal(0.0, 4.0, len(y))
    evaluations = [
        _evaluation(f"s{i}", len(y[rows]), regression_scores(y[rows], predicted[rows]))
        for i, rows in enumerate(_cuts(SIZES))
    ]

    out = global_metrics(evaluations, "regression")

    assert set(out) == {"rmse", "mae", "r2"}
    assert out["rmse"] == pytest.approx(
        np.sqrt(mean_squared_error(y, predicted)), rel=1e-10
    )
    assert out["mae"] == pytest.approx(mean_absolute_error(y, predicted), rel=1e-10)
    assert out["r2"] == pytest.approx(r2_score(y, predicted), rel=1e-9)


def test_regression_scores_of_one_silo() -> None:
    y = np.array([1.0, 2.0, 3.0, 4.0])
    predicted = np.array([1.5, 2.0, 2.0, 5.0])

    metrics, sums = regression_scores(y, predicted)

    assert metrics["rmse"] == pytest.approx(np.sqrt(mean_squared_error(y, predicted)))
    assert metrics["mae"] == pytest.approx(mean_absolute_error(y, predicted))
    assert metrics["r2"] == pytest.approx(r2_score(y, predicted))
    assert sums == {"n": 4.0, "sse": 2.25, "sae": 2.5, "mean_y": 2.5, "m2_y": 5.0}


def test_regression_r2_nan_for_constant_target() -> None:
    metrics, _ = regression_scores(np.array([2.0, 2.0]), np.array([1.0, 3.0]))

    assert np.isnan(metrics["r2"])
    assert metrics["rmse"] == pytest.approx(1.0)


def test_global_r2_with_large_target_offset() -> None:
    rng = np.random.default_rng(0)
    y = 1e7 + rng.normal(0.0, 1.0, sum(SIZES))
    predicted = y + rng.normal(0.0, 0.5, len(y))
    evaluations = [
        _evaluation(f"s{i}", len(y[rows]), regression_scores(y[rows], predicted[rows]))
        for i, rows in enumerate(_cuts(SIZES))
    ]

    out = global_metrics(evaluations, "regression")

    assert out["r2"] == pytest.approx(r2_score(y, predicted), rel=1e-6)


# --- edge cases --------------------------------------------------------------


def test_global_metrics_of_nothing() -> None:
    assert global_metrics([], "classification") == {}


def test_global_metrics_zero_rows() -> None:
    sums = {"n": 0.0, "correct": 0.0, "log_loss_sum": 0.0}
    empty = Evaluation(
        silo="a", round=1, worker="w", split="test", n_samples=0, metrics={}, sums=sums
    )

    assert global_metrics([empty], "classification") == {}


# --- the numpy formulas against scikit-learn's validated ones ----------------


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(2, 60),
    n_classes=st.integers(2, 4),
    rounding=st.sampled_from([None, 1, 2]),
    seed=st.integers(0, 2**31 - 1),
)
def test_scores_equal_scikit_learn(
    n: int, n_classes: int, rounding: int | None, seed: int
) -> None:
    """Log loss and AUC (ties included, via rounded scores) match scikit-learn."""
    rng = np.random.default_rng(seed)
    classes = np.array([f"c{i}" for i in range(n_classes)])
    y = classes[rng.integers(0, n_classes, n)]
    proba = rng.dirichlet(np.ones(n_classes), n)
    if rounding is not None:
        proba = np.round(proba, rounding) + 0.01  # equal rows: tied scores
        proba /= proba.sum(axis=1, keepdims=True)
    metrics, _ = classification_scores(y, proba, classes)
    assert metrics["log_loss"] == pytest.approx(
        log_loss(y, proba, labels=classes), rel=1e-9, abs=1e-12
    )
    assert metrics["accuracy"] == accuracy_score(y, classes[proba.argmax(axis=1)])
    if n_classes == 2 and len(set(y)) == 2:
        expected = roc_auc_score(y == classes[1], proba[:, 1])
        assert metrics["roc_auc"] == pytest.approx(expected, abs=1e-12)
    else:
        assert "roc_auc" not in metrics


def test_label_outside_the_classes_is_named() -> None:
    """A label the federation does not know is an error naming it."""
    with pytest.raises(ValueError, match="'z'"):
        classification_scores(
            np.array(["a", "z"]), np.full((2, 2), 0.5), np.array(["a", "b"])
        )
