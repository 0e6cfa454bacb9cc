"""Cost of scoring one silo split: scikit-learn's metric functions vs fedsilo's.

Every silo scores its train and test rows every round. scikit-learn's
``log_loss`` and ``roc_auc_score`` validate their inputs at a cost of
milliseconds per call whatever the size; ``tasks.metrics`` computes the
same formulas in numpy (log loss with scikit-learn's clipping, AUC as the
Mann-Whitney statistic with average ranks for ties). This script times both and
checks that they give the same numbers.

Run from the repository root::

    .venv/bin/python benchmarks/metrics_cost.py [--sizes 10 40 4000 16000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import timeit

import numpy as np
from sklearn.metrics import log_loss, roc_auc_score

from tasks.metrics import classification_scores


def sklearn_scores(
    y: np.ndarray, proba: np.ndarray, classes: np.ndarray
) -> dict[str, float]:
    """Accuracy, log loss and binary ROC AUC through scikit-learn's functions."""
    predicted = classes[np.argmax(proba, axis=1)]
    return {
        "accuracy": float(np.mean(predicted == y)),
        "log_loss": float(log_loss(y, proba, labels=classes)),
        "roc_auc": float(roc_auc_score(y == classes[1], proba[:, 1])),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 40, 4000, 16000])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    classes = np.array([0, 1])
    print(f"{'rows':>6}  {'scikit-learn':>18}  {'fedsilo':>9}  max |difference|")
    for n in args.sizes:
        y = rng.integers(0, 2, n)
        p = rng.random(n)
        proba = np.c_[1 - p, p]

        def current(y: np.ndarray = y, proba: np.ndarray = proba) -> object:
            return sklearn_scores(y, proba, classes)

        def proposed(y: np.ndarray = y, proba: np.ndarray = proba) -> object:
            return classification_scores(y, proba, classes)

        number = 20
        slow = statistics.median(
            timeit.repeat(current, number=number, repeat=args.repeat)
        )
        fast = statistics.median(
            timeit.repeat(proposed, number=number, repeat=args.repeat)
        )
        reference = sklearn_scores(y, proba, classes)
        mine, _ = classification_scores(y, proba, classes)
        diff = max(abs(reference[k] - mine[k]) for k in reference)
        print(
            f"{n:>6}  {slow / number * 1000:>15.2f} ms  "
            f"{fast / number * 1000:>6.3f} ms  {diff:.1e}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
