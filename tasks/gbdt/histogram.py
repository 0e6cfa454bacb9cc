"""Gradient/hessian histograms per tree node, their federated sum and subtraction.

A histogram of a node holds, for every feature and bin, the float64 sums of the
gradients and hessians of the node's rows in that bin, side by side (the last
axis: gradient, hessian; one cache line serves both when a row is added);
slot ``stride`` (one past the largest bin) holds the sums of the rows whose
value is missing. Sums are accumulated in row order by both kernels (numpy
``bincount`` and numba), so the two give bitwise equal results. The kernels
add into the caller's arrays, so the histograms of silos sharing a worker are
accumulated in one buffer (exact, see below).

Histogram subtraction: a parent's histogram minus the histogram of its smaller
child is the histogram of the other child, so only half the children are built.

Exact sums: silos round gradients and hessians to multiples of ``2**-exponent``
(``quantize``), with the exponent chosen from the federated row count and a
bound on the gradients (``gradient_exponent``) so that every partial sum is an
integer multiple below ``2**53`` ulps. Float64 accumulation is then exact: the
histograms, their sums over silos and their differences do not depend on how
rows are split over silos or on summation order, and the same trees grow from
one silo or many. (Fixed-point values are also what secure aggregation masks.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from fedsilo.errors import EmptyAggregationError, InconsistentUpdatesError
from tasks.gbdt.binning import BinnedMatrix, kernel_missing
from tasks.gbdt.jit import kernels
from tasks.gbdt.model import Tree

Backend = Literal["auto", "numpy", "numba"]


@dataclass(frozen=True, slots=True)
class NodeHistograms:
    """Histograms of a set of nodes, identified by (tree, node id) pairs."""

    nodes: np.ndarray  # (m, 2) int64: tree index within the round, node id
    sums: np.ndarray  # (m, n_features, stride + 1, 2) float64: gradients, hessians
    totals: np.ndarray  # (m, 3) float64: sum of gradients, of hessians, rows

    @classmethod
    def from_parts(
        cls, nodes: np.ndarray, grad: np.ndarray, hess: np.ndarray, totals: np.ndarray
    ) -> NodeHistograms:
        """Return histograms from separate gradient and hessian sums (m, F, W)."""
        return cls(nodes=nodes, sums=np.stack([grad, hess], axis=-1), totals=totals)

    @property
    def grad(self) -> np.ndarray:
        """Return the gradient sums (m, n_features, stride + 1), a view."""
        return self.sums[..., 0]

    @property
    def hess(self) -> np.ndarray:
        """Return the hessian sums (m, n_features, stride + 1), a view."""
        return self.sums[..., 1]

    @property
    def n_nodes(self) -> int:
        """Return the number of nodes."""
        return int(self.nodes.shape[0])

    @property
    def nbytes(self) -> int:
        """Return the payload size in bytes."""
        return int(self.nodes.nbytes + self.sums.nbytes + self.totals.nbytes)

    def index(self) -> dict[tuple[int, int], int]:
        """Return the position of every (tree, node) pair."""
        return {(int(t), int(n)): i for i, (t, n) in enumerate(self.nodes)}


def gradient_exponent(n_rows: int, bound: float) -> int:
    """Return the gradient grid exponent Q for exact float64 sums.

    ``n_rows`` values of magnitude at most ``bound``, rounded to multiples of
    ``2**-Q``, have every partial sum below ``2**52`` grid steps.
    """
    total = max(float(n_rows) * float(bound), 1.0)
    return 52 - math.ceil(math.log2(total))


def quantize(values: np.ndarray, exponent: int) -> np.ndarray:
    """Round float64 values to the nearest multiple of ``2**-exponent`` (ties even)."""
    out: np.ndarray = np.ldexp(np.rint(np.ldexp(values, exponent)), -exponent)
    return out


def zero_histograms(nodes: np.ndarray, n_features: int, stride: int) -> NodeHistograms:
    """Return all-zero histograms of ``nodes`` ((m, 2) pairs), to add rows to."""
    m = int(nodes.shape[0])
    return NodeHistograms(
        nodes=np.asarray(nodes, np.int64).reshape(m, 2),
        sums=np.zeros((m, n_features, stride + 1, 2)),
        totals=np.zeros((m, 3)),
    )


def numba_available() -> bool:
    """Return whether the numba kernels can be used."""
    return kernels() is not None


def _select(positions: np.ndarray, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the rows in ``nodes`` and each row's slot (index into ``nodes``)."""
    size = int(max(positions.max(initial=0), nodes.max(initial=0))) + 1
    lut = np.full(size, -1, dtype=np.int64)
    lut[nodes] = np.arange(nodes.shape[0])
    slot = lut[positions]
    rows = np.flatnonzero(slot >= 0)
    return rows, slot[rows]


def _numpy_kernel(
    binned: BinnedMatrix,
    rows: np.ndarray,
    slots: np.ndarray,
    g: np.ndarray,
    h: np.ndarray,
    sums: np.ndarray,
) -> None:
    m, n_features, width, _ = sums.shape
    base = slots * width
    g_rows, h_rows = g[rows], h[rows]
    sub = binned.bins[rows]
    miss = None if binned.missing is None else binned.missing[rows]
    has_missing = np.zeros(n_features, bool) if miss is None else miss.any(axis=0)
    for f in range(n_features):
        idx = base + sub[:, f]
        if has_missing[f]:
            assert miss is not None
            idx[miss[:, f]] = (base + width - 1)[miss[:, f]]
        for k, values in ((0, g_rows), (1, h_rows)):
            added = np.bincount(idx, values, minlength=m * width).reshape(m, -1)
            sums[:, f, :, k] += added


def build_histograms(
    binned: BinnedMatrix,
    grad: np.ndarray,
    hess: np.ndarray,
    positions: np.ndarray,
    nodes: np.ndarray,
    backend: Backend = "auto",
    into: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Add the rows of one tree's ``nodes`` to (sums, totals) histograms; return them.

    ``positions`` holds every row's current node id; ``grad`` and ``hess`` are the
    rows' float64 gradients for this tree. ``into`` is ``(sums, totals)`` shaped
    (m, n_features, stride + 1, 2) and (m, 3) to add to (zeros if None).
    """
    nodes = np.asarray(nodes, dtype=np.int64)
    m, n_features, stride = nodes.shape[0], binned.n_features, binned.stride
    jit = None if backend == "numpy" else kernels()
    if jit is None and backend == "numba":
        raise RuntimeError("numba is not installed")
    if into is None:
        sums, totals = np.zeros((m, n_features, stride + 1, 2)), np.zeros((m, 3))
    else:
        sums, totals = into
        if sums.shape != (m, n_features, stride + 1, 2) or totals.shape != (m, 3):
            raise ValueError(f"histograms of shape {sums.shape} do not fit {m} nodes")
    rows, slots = _select(positions, nodes)
    if jit is None:
        totals[:, 0] += np.bincount(slots, grad[rows], minlength=m)
        totals[:, 1] += np.bincount(slots, hess[rows], minlength=m)
        totals[:, 2] += np.bincount(slots, minlength=m)
        _numpy_kernel(binned, rows, slots, grad, hess, sums)
        return sums, totals
    # The silos' kernel (``NodeRows``): the rows grouped by node, ascending
    # within a node, so each cell sums in the order of the numpy code.
    counts = np.bincount(slots, minlength=m)
    ends = np.cumsum(counts)
    _add_grouped(
        binned,
        np.stack([grad, hess], axis=1).astype(np.float64),
        rows[np.argsort(slots, kind="stable")].astype(np.int32),
        np.stack([ends - counts, ends], axis=1),
        sums,
        totals,
    )
    return sums, totals


def _add_grouped(
    binned: BinnedMatrix,
    gh: np.ndarray,
    order: np.ndarray,
    bounds: np.ndarray,
    sums: np.ndarray,
    totals: np.ndarray,
) -> None:
    """Add rows ``order[a:b]``, ``(a, b) = bounds[s]``, to histogram ``s``."""
    jit = kernels()
    assert jit is not None
    m = bounds.shape[0]
    if sums.shape != (m, binned.n_features, binned.stride + 1, 2):
        raise ValueError(f"histograms of shape {sums.shape} do not fit {m} nodes")
    if totals.shape != (m, 3) or not sums.flags.c_contiguous:
        raise ValueError("totals must be (m, 3) and sums C-contiguous")
    jit.histogram_rows(
        binned.bins,
        *kernel_missing(binned.missing),
        order,
        bounds,
        gh,
        binned.stride,
        sums,
        totals,
    )


class NodeRows:
    """One tree's rows grouped by node, for the numba kernels.

    ``order`` lists the rows node by node, ascending within a node; node n's
    rows are ``order[a:b]`` with ``(a, b) = bounds[n]`` (empty for a node never
    reached). Splitting a node reorders only its own segment, and a node's
    histogram visits only its rows, in the same order as a scan of every row's
    position would: below the root, where a level builds a fifth to a half of
    the rows, scanning every position cost more than the histograms built.
    ``split`` and ``add_leaf_values`` read the column-major copy of the binned
    rows (``BinnedMatrix.columns``, made on first use: one more byte per cell
    of ``bins`` and of ``missing``); the histograms read the row-major matrix.
    """

    def __init__(self, n_rows: int) -> None:
        self.order = np.arange(n_rows, dtype=np.int32)
        self.bounds = np.zeros((64, 2), np.int64)
        self.bounds[0, 1] = n_rows
        #: The nodes whose segments hold the rows (reached and not split).
        self.current = np.zeros(64, bool)
        self.current[0] = True

    def segments(self, nodes: np.ndarray) -> np.ndarray:
        """Return the (a, b) segments of ``nodes``, (0, 0) for unknown nodes."""
        out = np.zeros((nodes.shape[0], 2), np.int64)
        known = nodes < self.bounds.shape[0]
        out[known] = self.bounds[nodes[known]]
        return out

    def split(
        self,
        binned: BinnedMatrix,
        node: np.ndarray,
        feature: np.ndarray,
        split_bin: np.ndarray,
        default_left: np.ndarray,
        left: np.ndarray,
        scratch: np.ndarray,
    ) -> None:
        """Move the rows of ``node[j]`` to ``left[j]`` or ``left[j] + 1``.

        Rows with bin <= ``split_bin[j]`` of ``feature[j]`` (or missing, when
        ``default_left[j]``) go left. ``scratch`` is an int32 buffer of at least
        the tree's row count.
        """
        jit = kernels()
        assert jit is not None
        size = int(max(left.max(initial=-1) + 2, node.max(initial=-1) + 1))
        if size > self.bounds.shape[0]:
            capacity = max(size, 2 * self.bounds.shape[0])
            bounds = np.zeros((capacity, 2), np.int64)
            bounds[: self.bounds.shape[0]] = self.bounds
            current = np.zeros(capacity, bool)
            current[: self.current.shape[0]] = self.current
            self.bounds, self.current = bounds, current
        bins, missing = binned.columns()
        jit.partition(
            bins,
            *kernel_missing(missing),
            self.order,
            scratch,
            self.bounds,
            node,
            feature,
            split_bin,
            default_left,
            left,
        )
        self.current[node] = False
        self.current[left] = self.current[left + 1] = True

    def add_leaf_values(
        self, binned: BinnedMatrix, tree: Tree, margin: np.ndarray, column: int
    ) -> None:
        """Add to ``margin[:, column]`` each row's leaf value in ``tree``.

        The tree grows from the nodes split so far (its last level is not).
        """
        jit = kernels()
        assert jit is not None
        nodes = np.flatnonzero(self.current)
        bins, missing = binned.columns()
        jit.add_leaf_values(
            bins,
            *kernel_missing(missing),
            self.order,
            self.bounds[nodes],
            nodes,
            tree.left,
            tree.right,
            tree.feature,
            tree.split_bin,
            tree.default_left,
            tree.value,
            margin,
            column,
        )

    def add_histograms(
        self,
        binned: BinnedMatrix,
        gh: np.ndarray,
        nodes: np.ndarray,
        sums: np.ndarray,
        totals: np.ndarray,
    ) -> None:
        """Add the rows of ``nodes`` to (sums, totals), as ``build_histograms`` into.

        ``gh`` is (n_rows, 2) float64: each row's gradient and hessian.
        """
        _add_grouped(binned, gh, self.order, self.segments(nodes), sums, totals)


def sum_histograms(
    parts: Sequence[NodeHistograms], *, reuse_first: bool = False
) -> NodeHistograms:
    """Sum the silos' histograms of the same nodes, in the order given.

    With ``reuse_first`` the others are added into the first one's arrays (no
    copy; the caller owns them and nobody else reads them).
    """
    if not parts:
        raise EmptyAggregationError("no histograms to sum")
    first = parts[0]
    if reuse_first and first.sums.flags.writeable and first.totals.flags.writeable:
        sums, totals = first.sums, first.totals
    else:
        sums, totals = first.sums.copy(), first.totals.copy()
    for p in parts[1:]:
        if not np.array_equal(p.nodes, first.nodes):
            raise InconsistentUpdatesError("histograms describe different nodes")
        if p.sums.shape != first.sums.shape:
            raise InconsistentUpdatesError(
                f"histogram shapes differ: {p.sums.shape[:3]} != {first.sums.shape[:3]}"
            )
        sums += p.sums
        totals += p.totals
    return NodeHistograms(nodes=first.nodes, sums=sums, totals=totals)


def subtract(
    parent: np.ndarray, child: np.ndarray, out: np.ndarray | None = None
) -> np.ndarray:
    """Return the sibling's sums (or totals): parent minus the built child.

    ``out`` takes the result when given (the coordinator writes a level's
    siblings side by side into one array).
    """
    return np.subtract(parent, child, out=out)
