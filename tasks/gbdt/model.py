"""Trees and boosted models as arrays, and a pure numpy predictor.

Nodes are numbered breadth-first with the right child at ``left + 1``, as
XGBoost JSON needs. A row goes left iff ``float32(x) < threshold``; NaN follows
``default_left``. Leaf values include the learning rate (and, for multi-class,
the class intercept in the first round's trees).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tasks.gbdt.binning import BinnedMatrix, kernel_missing
from tasks.gbdt.jit import kernels
from tasks.gbdt.objective import Objective, make_objective

ROOT_PARENT = 2_147_483_647


@dataclass(frozen=True, slots=True)
class Tree:
    """One regression tree; per-node arrays indexed by node id."""

    left: np.ndarray  # int32, -1 at leaves
    right: np.ndarray  # int32, -1 at leaves
    parent: np.ndarray  # int32, ROOT_PARENT at the root
    feature: np.ndarray  # int32, 0 at leaves
    split_bin: np.ndarray  # int32, -1 at leaves
    threshold: np.ndarray  # float32, 0 at leaves
    default_left: np.ndarray  # bool
    value: np.ndarray  # float32: leaf value, or the node's weight if internal
    gain: np.ndarray  # float32 loss change, 0 at leaves
    cover: np.ndarray  # float32 sum of hessians

    @property
    def n_nodes(self) -> int:
        """Return the number of nodes."""
        return int(self.left.shape[0])

    @property
    def is_leaf(self) -> np.ndarray:
        """Return a boolean mask of the leaves."""
        out: np.ndarray = self.left < 0
        return out

    def depth(self) -> int:
        """Return the largest depth of a leaf (a lone root has depth 0)."""
        # Breadth-first numbering: a node's children come after it.
        d = np.zeros(self.n_nodes, np.int64)
        inner = np.flatnonzero(self.left >= 0)
        for i in inner:
            d[self.left[i]] = d[self.right[i]] = d[i] + 1
        return int(d.max(initial=0))

    def leaves(self, X32: np.ndarray, backend: str = "auto") -> np.ndarray:
        """Return the leaf id reached by every row of a float32 matrix."""
        jit = None if backend == "numpy" else kernels()
        if jit is not None and X32.dtype == np.float32:
            out = np.empty(X32.shape[0], np.int64)
            jit.leaves(
                X32,
                self.left,
                self.right,
                self.feature,
                self.threshold,
                self.default_left,
                self.depth(),
                out,
            )
            return out
        node = np.zeros(X32.shape[0], np.int64)
        rows = np.arange(X32.shape[0])
        for _ in range(self.depth()):
            left = self.left[node]
            inner = left >= 0
            if not inner.any():
                break
            x = X32[rows, self.feature[node]]
            go_left = np.where(
                np.isnan(x), self.default_left[node], x < self.threshold[node]
            )
            node = np.where(inner, np.where(go_left, left, self.right[node]), node)
        return node

    def descend_binned(
        self, binned: BinnedMatrix, node: np.ndarray, backend: str = "auto"
    ) -> np.ndarray:
        """Return leaf ids of binned rows starting from nodes ``node``."""
        jit = None if backend == "numpy" else kernels()
        if jit is not None:
            start = np.ascontiguousarray(node, dtype=np.int64)
            out = np.empty(binned.n_rows, np.int64)
            jit.descend(
                binned.bins,
                *kernel_missing(binned.missing),
                start,
                self.left,
                self.right,
                self.feature,
                self.split_bin,
                self.default_left,
                out,
            )
            return out
        node = node.astype(np.int64, copy=True)
        rows = np.arange(binned.n_rows)
        for _ in range(self.depth() + 1):
            left = self.left[node]
            inner = left >= 0
            if not inner.any():
                break
            f = self.feature[node]
            go_left = binned.bins[rows, f] <= self.split_bin[node]
            if binned.missing is not None:
                go_left = np.where(
                    binned.missing[rows, f], self.default_left[node], go_left
                )
            node = np.where(inner, np.where(go_left, left, self.right[node]), node)
        return node


@dataclass(frozen=True, slots=True)
class GBDTModel:
    """A boosted model: trees in order, class of each tree, base score, cuts."""

    objective: str
    num_class: int  # 0 for single-output objectives, as XGBoost writes it
    num_feature: int
    base_score: np.float32
    trees: tuple[Tree, ...]
    tree_info: tuple[int, ...]
    cuts: tuple[np.ndarray, ...]
    feature_names: tuple[str, ...] | None = None

    @property
    def n_outputs(self) -> int:
        """Return the number of margins per row."""
        return max(self.num_class, 1)

    @property
    def n_rounds(self) -> int:
        """Return the number of boosting rounds."""
        return len(self.trees) // self.n_outputs

    def make_objective(self) -> Objective:
        """Return the model's objective."""
        return make_objective(self.objective, self.num_class)


def predict_margin(model: GBDTModel, X: np.ndarray) -> np.ndarray:
    """Return float32 margins (n, outputs), summed in float32 tree by tree."""
    X32 = np.asarray(X, dtype=np.float32)
    if X32.ndim != 2 or X32.shape[1] != model.num_feature:
        raise ValueError(f"X has shape {X32.shape}, expected (n, {model.num_feature})")
    base = np.float32(model.make_objective().base_margin(model.base_score))
    margin = np.full((X32.shape[0], model.n_outputs), base, dtype=np.float32)
    for tree, k in zip(model.trees, model.tree_info, strict=True):
        margin[:, k] += tree.value[tree.leaves(X32)]
    return margin


def predict(model: GBDTModel, X: np.ndarray, output_margin: bool = False) -> np.ndarray:
    """Return probabilities or values (n,) or (n, num_class), or raw margins."""
    margin = predict_margin(model, X)
    if output_margin:
        return margin[:, 0] if model.num_class == 0 else margin
    return model.make_objective().transform(margin.astype(np.float64))
