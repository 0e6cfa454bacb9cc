"""Histogram kernels of the federated GBDT: numpy bincount versus numba.

Prints rows/s on 100k rows x 30 features (2% missing), 256 bins, depth 6:
- root: one histogram of every row (the kernel alone: numpy's bincount, or
  the silos' numba kernel over a node's rows);
- tree: one boosting round of binary:logistic on one silo (gradients, every
  level's histograms with subtraction, split finding, margin update).

Run: .venv/bin/python benchmarks/gbdt_kernels.py [--rows N] [--repeat R]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial

import numpy as np

from fedsilo.gbdt_params import TreeParams
from tasks.gbdt.binning import BinnedMatrix, bin_matrix
from tasks.gbdt.histogram import (
    Backend,
    NodeRows,
    build_histograms,
    gradient_exponent,
    numba_available,
)
from tasks.gbdt.learner import InMemoryFederation, federated_cuts, grow_round
from tasks.gbdt.objective import BinaryLogistic
from tasks.gbdt.silo_state import SiloTreeState, TreeRows


def timed(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm up (and compile numba)
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def root_rows(binned: BinnedMatrix, gh: np.ndarray) -> None:
    """Build the root histogram as a silo does (``NodeRows``, numba)."""
    sums = np.zeros((1, binned.n_features, binned.stride + 1, 2))
    NodeRows(binned.n_rows).add_histograms(
        binned, gh, np.array([0]), sums, np.zeros((1, 3))
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--features", type=int, default=30)
    parser.add_argument("--max-bin", type=int, default=256)
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    n, f = args.rows, args.features
    X = rng.normal(size=(n, f)).astype(np.float32)
    X[rng.random((n, f)) < 0.02] = np.nan
    logit = np.nan_to_num(X[:, 0]) + np.nan_to_num(X[:, 1]) * np.nan_to_num(X[:, 2])
    y = (logit + rng.logistic(size=n) > 0).astype(np.float64)
    cuts = federated_cuts([X], args.max_bin)
    binned = bin_matrix(X, cuts)
    g = rng.normal(size=n)
    h = rng.random(n)
    root = np.zeros(n, np.int32)
    params = TreeParams(max_depth=args.depth)
    objective = BinaryLogistic()
    data = TreeRows(X=X, y=y, feature_names=tuple(f"f{j}" for j in range(f)))
    zeros = np.zeros(1)
    exponent = gradient_exponent(n, 1.0)

    backends: list[Backend] = ["numpy", "numba"] if numba_available() else ["numpy"]
    print(
        f"{n} rows x {f} features, max_bin {args.max_bin}, depth {args.depth}, "
        f"median of {args.repeat}"
    )
    print(f"{'backend':8} {'kernel':6} {'seconds':>9} {'rows/s':>12}")
    for backend in backends:
        nodes = np.array([0])
        if backend == "numpy":
            root_fn = partial(build_histograms, binned, g, h, root, nodes, backend)
        else:  # the silos' kernel: a node's rows (here all of them) in order
            root_fn = partial(root_rows, binned, np.stack([g, h], axis=1))
        t_root = timed(root_fn, args.repeat)
        print(f"{backend:8} {'root':6} {t_root:9.4f} {n / t_root:12,.0f}")
        state = SiloTreeState.create("bench", data, cuts, objective, backend)
        state.set_intercept(objective.intercept(objective.label_stats(y), None))
        federation = InMemoryFederation([state])
        t_tree = timed(
            partial(grow_round, federation, cuts, params, zeros, exponent), args.repeat
        )
        print(f"{backend:8} {'tree':6} {t_tree:9.4f} {n / t_tree:12,.0f}")
        state.free()


if __name__ == "__main__":
    main()
