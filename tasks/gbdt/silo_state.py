"""One silo's side of federated boosting: its binned rows behind one small object.

Only aggregates leave a ``SiloTreeState``: label sums, histograms of nodes
(shaped by nodes, features and bins, never by rows), row counts per node and
loss sums. Everything is deterministic: the same rows give the same bytes.

What leaves a silo, and what it reveals
---------------------------------------
- at setup: per-column quantile summaries (see ``sketch``), the row count and
  the label sum (or class counts), and for regression the largest |label|;
- per tree level: for each requested node, the sums of gradients and hessians
  per feature and bin, the missing-value sums and the node's row count;
- per round: the summed training loss.
A node histogram is a sum over the node's rows, but a node holding one or a few
of a silo's rows discloses those rows' bins and gradients (and so, for
classification, their labels). With ``privacy.secure_aggregation`` the
histograms leave masked (``gbdt.privacy``) and the coordinator learns only
their sum over silos; with ``privacy.dp`` that sum is noised as well.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Real
from types import SimpleNamespace

import numpy as np
import pandas as pd

from fedsilo.errors import SiloDataError
from tasks.gbdt.binning import BinnedMatrix, bin_matrix
from tasks.gbdt.histogram import (
    Backend,
    NodeHistograms,
    NodeRows,
    build_histograms,
    quantize,
    zero_histograms,
)
from tasks.gbdt.jit import kernels
from tasks.gbdt.model import Tree
from tasks.gbdt.objective import (
    HESS_EPS,
    BinaryLogistic,
    Intercept,
    Objective,
    SquaredError,
)
from tasks.privacy.dp import clip_gradients


@dataclass(frozen=True, slots=True)
class NodeSplit:
    """A split for silos to apply: rows with bin <= ``bin`` go to ``left``."""

    tree: int  # index of the tree within the round (the output it fits)
    node: int
    feature: int
    bin: int
    default_left: bool
    left: int  # the right child is ``left + 1``


@dataclass(frozen=True, slots=True)
class LossSum:
    """Summed training loss and row count (add them across silos)."""

    loss_sum: float
    n_samples: int

    def __add__(self, other: LossSum) -> LossSum:
        return LossSum(self.loss_sum + other.loss_sum, self.n_samples + other.n_samples)


def sum_losses(losses: Sequence[LossSum | None]) -> LossSum | None:
    """Add silos' loss sums; None when any silo was not asked for one."""
    total = LossSum(0.0, 0)
    for loss in losses:
        if loss is None:
            return None
        total = total + loss
    return total


@dataclass(frozen=True, slots=True)
class TreeRows:
    """A silo's validated rows: float32 features and float64 labels."""

    X: np.ndarray
    y: np.ndarray
    feature_names: tuple[str, ...]


def _column_names(X: object, n: int) -> list[str]:
    columns = getattr(X, "columns", None)
    if columns is None:
        return [f"f{j}" for j in range(n)]
    return [str(c) for c in columns]


def _numeric_column(silo: str, name: str, col: object) -> np.ndarray:
    """Return a column as float32 (NaN for missing) or raise SiloDataError."""
    if isinstance(col, pd.Series):
        if pd.api.types.is_bool_dtype(col) or pd.api.types.is_numeric_dtype(col):
            out: np.ndarray = col.to_numpy(dtype=np.float32, na_value=np.nan)
            return out
        dtype = str(col.dtype)
    else:
        arr = np.asarray(col)
        if arr.dtype.kind in "biuf":
            return arr.astype(np.float32)
        if arr.dtype.kind == "O" and all(
            v is None or (isinstance(v, Real) and not isinstance(v, str)) for v in arr
        ):
            return np.array([np.nan if v is None else v for v in arr], np.float32)
        dtype = str(arr.dtype)
    raise SiloDataError(
        silo, f"feature has dtype {dtype}; features must be numeric", column=name
    )


def prepare_silo_data(
    silo: str,
    X: object,
    y: object,
    objective: Objective,
    label: str = "label",
) -> TreeRows:
    """Validate a silo's features and labels; raise SiloDataError naming the fault.

    ``X`` is a 2-D array or a DataFrame of numeric or boolean columns; NaN (or a
    null) marks a missing value; infinities, non-numeric and entirely missing
    columns are refused.
    """
    shape = getattr(X, "shape", None)
    if shape is None or len(shape) != 2:
        raise SiloDataError(silo, "features must be a 2-D table")
    n_rows, n_cols = int(shape[0]), int(shape[1])
    names = _column_names(X, n_cols)
    if n_rows == 0:
        raise SiloDataError(silo, "has no training rows")
    columns: list[np.ndarray] = []
    for j, name in enumerate(names):
        raw = X.iloc[:, j] if isinstance(X, pd.DataFrame) else np.asarray(X)[:, j]
        col = _numeric_column(silo, name, raw)
        if np.isinf(col).any():
            raise SiloDataError(silo, "feature has infinite values", column=name)
        if np.isnan(col).all():
            raise SiloDataError(silo, "feature has no non-missing value", column=name)
        columns.append(col)
    X32 = np.column_stack(columns) if columns else np.empty((n_rows, 0), np.float32)
    labels = np.asarray(y)
    if labels.ndim != 1 or labels.shape[0] != n_rows:
        raise SiloDataError(
            silo,
            f"labels have shape {labels.shape}, expected ({n_rows},)",
            column=label,
        )
    problem = objective.label_problem(labels)
    if problem is not None:
        raise SiloDataError(silo, problem, column=label)
    return TreeRows(
        X=np.ascontiguousarray(X32),
        y=labels.astype(np.float64),
        feature_names=tuple(names),
    )


class SiloTreeState:
    """A silo's binned rows, labels, margins and node positions during training."""

    def __init__(
        self,
        name: str,
        binned: BinnedMatrix,
        y: np.ndarray,
        objective: Objective,
        backend: Backend = "auto",
    ) -> None:
        self.name = name
        self.objective = objective
        self.backend: Backend = backend
        self._binned: BinnedMatrix | None = binned
        self._y: np.ndarray | None = np.asarray(y, dtype=np.float64)
        k = objective.n_outputs
        self._margin: np.ndarray | None = np.zeros((binned.n_rows, k))
        self._offsets = np.zeros(k)
        #: (n_outputs, n_rows, 2): each row's quantized gradient and hessian.
        self._gh: np.ndarray | None = None
        #: Each tree's rows by node: grouped (numba) or every row's node (numpy).
        self._rows: list[NodeRows] | None = None
        self._positions: np.ndarray | None = None
        self._scratch: np.ndarray | None = None
        #: DP: every row's gradient is clipped to +-G and hessian to [0, H].
        self.gradient_clip: tuple[float, float] | None = None
        self._saved: tuple[np.ndarray, np.ndarray] | None = None

    @classmethod
    def create(
        cls,
        name: str,
        data: TreeRows,
        cuts: Sequence[np.ndarray],
        objective: Objective,
        backend: Backend = "auto",
    ) -> SiloTreeState:
        """Bin validated rows with the federation's cut points."""
        return cls(name, bin_matrix(data.X, cuts), data.y, objective, backend)

    # -- accessors that fail after free() ----------------------------------------
    def _data(self) -> tuple[BinnedMatrix, np.ndarray, np.ndarray]:
        if self._binned is None or self._y is None or self._margin is None:
            raise RuntimeError(f"silo {self.name!r}: state was freed")
        return self._binned, self._y, self._margin

    def _round(self) -> np.ndarray:
        if self._gh is None:
            raise RuntimeError(f"silo {self.name!r}: no round in progress")
        return self._gh

    def _end_round(self) -> None:
        self._gh = self._positions = self._rows = None

    @property
    def n_rows(self) -> int:
        """Return the silo's row count."""
        return self._data()[0].n_rows

    # -- protocol ---------------------------------------------------------------
    def label_stats(self) -> np.ndarray:
        """Return the label sums the coordinator needs for the intercept."""
        return self.objective.label_stats(self._data()[1])

    def label_bound(self) -> float:
        """Return the label bound the coordinator needs (take the max over silos)."""
        return self.objective.label_bound(self._data()[1])

    def set_intercept(self, intercept: Intercept) -> None:
        """Start every margin at the base margin; offsets apply to round one."""
        _, _, margin = self._data()
        margin[:] = intercept.base_margin
        self._offsets = np.asarray(intercept.offsets, dtype=np.float64).copy()

    def start_round(
        self, exponent: int, into: NodeHistograms | None = None
    ) -> NodeHistograms:
        """Compute gradients on the grid ``2**-exponent``, return root histograms.

        Every row starts at the root of each of the round's trees; ``into`` as
        for :meth:`histograms`.
        """
        _, y, margin = self._data()
        jit = None if self.backend == "numpy" else kernels()
        if jit is None and self.backend == "numba":
            raise RuntimeError("numba is not installed")
        n_rows, n_trees = margin.shape
        self._gh = np.empty((n_trees, n_rows, 2))
        if not (jit is not None and self._fused_gradients(jit, exponent, self._gh)):
            g, h = self.objective.gradients(y, margin + self._offsets)
            if self.gradient_clip is not None:
                g, h = clip_gradients(g, h, *self.gradient_clip)
            self._gh[..., 0] = quantize(g, exponent).T
            self._gh[..., 1] = quantize(h, exponent).T
        if jit is not None:
            self._rows = [NodeRows(n_rows) for _ in range(n_trees)]
            if self._scratch is None:
                self._scratch = np.empty(n_rows, np.int32)
        else:
            self._positions = np.zeros((n_trees, n_rows), dtype=np.int32)
        return self.histograms([(t, 0) for t in range(n_trees)], into)

    def _fused_gradients(
        self, jit: SimpleNamespace, exponent: int, gh: np.ndarray
    ) -> bool:
        """Write quantized gradients into ``gh`` in one pass; False if not handled.

        Covers binary:logistic and reg:squarederror without clipping, bitwise
        equal to ``objective.gradients`` then ``quantize`` (which cost three
        passes and as many temporary arrays more).
        """
        _, y, margin = self._data()
        if self.gradient_clip is not None or not 0 <= exponent <= 1022:
            return False
        scale = float(np.ldexp(1.0, exponent))
        offset = self._offsets[0]
        if type(self.objective) is BinaryLogistic:
            tanh_half = np.add(margin[:, 0], offset)
            np.tanh(np.multiply(tanh_half, 0.5, out=tanh_half), out=tanh_half)
            jit.logistic_gradients(tanh_half, y, scale, HESS_EPS, gh[0])
            return True
        if type(self.objective) is SquaredError:
            jit.squared_gradients(margin[:, 0], offset, y, scale, gh[0])
            return True
        return False

    def apply_splits(self, splits: Sequence[NodeSplit]) -> None:
        """Move the rows of every split node to its left or right child."""
        binned, _, _ = self._data()
        self._round()
        by_tree: dict[int, list[NodeSplit]] = {}
        for s in splits:
            by_tree.setdefault(s.tree, []).append(s)
        for t, tree_splits in by_tree.items():
            if self._rows is not None:
                assert self._scratch is not None
                self._rows[t].split(
                    binned,
                    np.array([s.node for s in tree_splits], np.int64),
                    np.array([s.feature for s in tree_splits], np.int64),
                    np.array([s.bin for s in tree_splits], np.int64),
                    np.array([s.default_left for s in tree_splits], bool),
                    np.array([s.left for s in tree_splits], np.int64),
                    self._scratch,
                )
                continue
            assert self._positions is not None
            pos = self._positions[t]
            size = max(max(s.node for s in tree_splits), int(pos.max(initial=0))) + 1
            split_at = np.zeros(size, bool)
            feature = np.zeros(size, np.int64)
            bin_ = np.zeros(size, np.int64)
            default_left = np.zeros(size, bool)
            left = np.zeros(size, np.int32)
            for s in tree_splits:
                split_at[s.node] = True
                feature[s.node] = s.feature
                bin_[s.node] = s.bin
                default_left[s.node] = s.default_left
                left[s.node] = s.left
            rows = np.flatnonzero(split_at[pos])
            node = pos[rows]
            cell = rows * binned.n_features + feature[node]
            go_left = binned.bins.ravel().take(cell) <= bin_[node]
            if binned.missing is not None:
                missing = binned.missing.ravel().take(cell)
                go_left = np.where(missing, default_left[node], go_left)
            pos[rows] = np.where(go_left, left[node], left[node] + 1)

    def histograms(
        self, nodes: Sequence[tuple[int, int]], into: NodeHistograms | None = None
    ) -> NodeHistograms:
        """Return gradient/hessian histograms of (tree, node) pairs, in that order.

        With ``into`` (histograms of the same pairs) the rows are added to it and
        it is returned: how silos sharing a worker sum their histograms.
        """
        binned, _, _ = self._data()
        gh = self._round()
        pairs = self._pairs(nodes, into)
        if into is None:
            into = zero_histograms(pairs, binned.n_features, binned.stride)
        for t in np.unique(pairs[:, 0]):
            sel = np.flatnonzero(pairs[:, 0] == t)
            a, b = int(sel[0]), int(sel[-1]) + 1
            if b - a == sel.size:  # the tree's nodes side by side: add in place
                sums, totals = into.sums[a:b], into.totals[a:b]
            else:
                sums = np.zeros((sel.size, *into.sums.shape[1:]))
                totals = np.zeros((sel.size, 3))
            if self._rows is not None:
                self._rows[t].add_histograms(binned, gh[t], pairs[sel, 1], sums, totals)
            else:
                assert self._positions is not None
                build_histograms(
                    binned,
                    gh[t, :, 0],
                    gh[t, :, 1],
                    self._positions[t],
                    pairs[sel, 1],
                    "numpy",
                    (sums, totals),
                )
            if b - a != sel.size:
                into.sums[sel] += sums
                into.totals[sel] += totals
        return into

    def level(
        self,
        splits: Sequence[NodeSplit],
        nodes: Sequence[tuple[int, int]],
        into: NodeHistograms | None = None,
    ) -> NodeHistograms:
        """Apply the splits just chosen, then return histograms of ``nodes``."""
        self._pairs(nodes, into)  # refuse a mismatched ``into`` before moving rows
        self.apply_splits(splits)
        return self.histograms(nodes, into)

    def _pairs(
        self, nodes: Sequence[tuple[int, int]], into: NodeHistograms | None
    ) -> np.ndarray:
        """Return ``nodes`` as (m, 2) pairs; raise if ``into`` holds other nodes."""
        pairs = np.asarray(nodes, dtype=np.int64).reshape(-1, 2)
        if into is not None and not np.array_equal(into.nodes, pairs):
            raise ValueError(f"silo {self.name!r}: histograms of other nodes given")
        return pairs

    def finish_round(self, trees: Sequence[Tree], loss: bool = True) -> LossSum | None:
        """Route rows to the round's leaves, add leaf values to margins, clear offsets.

        ``trees[t]`` fits output ``t``; its leaves already hold the offsets of the
        first round, which is why the offsets are cleared here. Returns the
        training loss at the new margins, or None without ``loss``.
        """
        binned, _, margin = self._data()
        self._round()
        if len(trees) != margin.shape[1]:
            raise ValueError(f"expected {margin.shape[1]} trees, got {len(trees)}")
        for t, tree in enumerate(trees):
            if self._rows is not None:
                self._rows[t].add_leaf_values(binned, tree, margin, t)
                continue
            assert self._positions is not None
            leaf = tree.descend_binned(binned, self._positions[t], self.backend)
            margin[:, t] += tree.value[leaf].astype(np.float64)
        self._offsets = np.zeros_like(self._offsets)
        self._end_round()
        return self.loss() if loss else None

    def save_margins(self) -> None:
        """Remember the margins, to undo a round of trees that is abandoned."""
        _, _, margin = self._data()
        self._saved = (margin.copy(), self._offsets.copy())

    def restore_margins(self) -> None:
        """Return to the margins of ``save_margins`` and drop the round's rows."""
        _, _, margin = self._data()
        if self._saved is None:
            raise RuntimeError(f"silo {self.name!r}: no margins were saved")
        margin[:] = self._saved[0]
        self._offsets = self._saved[1].copy()
        self._end_round()

    def replay(self, trees: Sequence[Tree], tree_info: Sequence[int]) -> None:
        """Add a saved model's trees to the margins (resume after ``set_intercept``).

        Margins end bitwise equal to those of an uninterrupted run, because the
        same float32 leaf values are added in the same order.
        """
        binned, _, margin = self._data()
        start = np.zeros(binned.n_rows, np.int64)
        for tree, k in zip(trees, tree_info, strict=True):
            margin[:, k] += tree.value[
                tree.descend_binned(binned, start, self.backend)
            ].astype(np.float64)
        if trees:
            self._offsets = np.zeros_like(self._offsets)

    def labels(self) -> np.ndarray:
        """Return the silo's labels (read them, do not change them)."""
        return self._data()[1]

    def predictions(self) -> np.ndarray:
        """Return the current model's predictions on the silo's rows."""
        _, _, margin = self._data()
        return self.objective.transform(margin + self._offsets)

    def loss(self) -> LossSum:
        """Return the summed training loss at the current margins."""
        _, y, margin = self._data()
        return LossSum(self.objective.loss_sum(y, margin + self._offsets), y.shape[0])

    def free(self) -> None:
        """Drop the rows and every per-row array; later calls raise RuntimeError."""
        self._binned = self._y = self._margin = None
        self._end_round()
        self._scratch = self._saved = None
