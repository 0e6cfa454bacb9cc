"""Cost of scoring one silo split: fedsilo's metrics vs the same maths in numpy.

``fedsilo.tasks.metrics.classification_scores`` calls scikit-learn's
``log_loss`` and ``roc_auc_score``, whose parameter and input validation costs
tens of milliseconds per call whatever the size; every silo scores its train
and test rows every round. This script times it against a numpy version of the
same formulas (log loss with scikit-learn's clipping, AUC as the Mann-Whitney
statistic with average ranks for ties, which equals scikit-learn's
trapezoidal AUC) and checks that both give the same numbers.

Run from the repository root::

    .venv/bin/python benchmarks/metrics_cost.py [--sizes 10 40 4000 16000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import timeit

import numpy as np
from scipy.stats import rankdata

from fedsilo.tasks.metrics import classification_scores


def numpy_scores(
    y: np.ndarray, proba: np.ndarray, classes: np.ndarray
) -> dict[str, float]:
    """Accuracy, log loss and (binary) ROC AUC without scikit-learn's checks."""
    n = len(y)
    index = np.searchsorted(classes, y)
    predicted = classes[np.argmax(proba, axis=1)]
    eps = np.finfo(proba.dtype).eps
    clipped = np.clip(proba, eps, 1 - eps)
    clipped = clipped / clipped.sum(axis=1, keepdims=True)
    out = {
        "accuracy": float(np.sum(predicted == y)) / n,
        "log_loss": float(-np.mean(np.log(clipped[np.arange(n), index]))),
    }
    positive = y == classes[-1]
    n_pos = int(positive.sum())
    if len(classes) == 2 and 0 < n_pos < n:
        ranks = rankdata(proba[:, 1])
        u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2
        out["roc_auc"] = float(u / (n_pos * (n - n_pos)))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 40, 4000, 16000])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    classes = np.array([0, 1])
    print(f"{'rows':>6}  {'fedsilo (sklearn)':>18}  {'numpy':>9}  max |difference|")
    for n in args.sizes:
        y = rng.integers(0, 2, n)
        p = rng.random(n)
        proba = np.c_[1 - p, p]

        def current(y: np.ndarray = y, proba: np.ndarray = proba) -> object:
            return classification_scores(y, proba, classes)

        def proposed(y: np.ndarray = y, proba: np.ndarray = proba) -> object:
            return numpy_scores(y, proba, classes)

        number = 20
        slow = statistics.median(
            timeit.repeat(current, number=number, repeat=args.repeat)
        )
        fast = statistics.median(
            timeit.repeat(proposed, number=number, repeat=args.repeat)
        )
        reference, _ = classification_scores(y, proba, classes)
        mine = numpy_scores(y, proba, classes)
        diff = max(abs(reference[k] - mine[k]) for k in reference)
        print(
            f"{n:>6}  {slow / number * 1000:>15.2f} ms  "
            f"{fast / number * 1000:>6.3f} ms  {diff:.1e}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
