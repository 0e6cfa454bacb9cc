"""Privacy of the histogram exchanges: pairwise masking and Gaussian noise.

Secure aggregation. A silo's histograms of one exchange (gradient and hessian
sums per node, feature and bin, and the node totals: gradient, hessian, rows)
are laid end to end in one float64 vector (``histogram_vector``), encoded in
fixed point and masked with the pairwise masks of ``privacy.secagg`` for a
context unique to the run, Prefect round, attempt, tree and level
(``mask_histograms``). The node ids stay in the clear: the coordinator asked
for them. The coordinator sums the masked vectors modulo ``2**64`` and decodes
only the sum (``unmask_histograms``).

Exactness: silos already round gradients and hessians to multiples of
``2**-Q`` with ``Q = histogram.gradient_exponent(n_rows, bound)``, so every
histogram cell and its sum over silos is an integer number of grid steps below
``2**52``. ``FixedPoint.exact(Q)`` encodes such values without rounding: the
unmasked sum is bitwise the plain sum, the trees are the same trees, and
histogram subtraction (done on the unmasked sums) is unchanged.

Differential privacy (row level). ``NoisyFederation`` wraps any
``learner.Federation``: every histogram release (a tree's root, then one per
level) gets Gaussian noise of standard deviation ``noise_multiplier *
histogram_sensitivity(...)`` on every gradient, hessian and total, after the
sum; negative hessian sums and row counts are then set to zero
(post-processing). The silos clip each row's gradient to ``[-G, G]`` and
hessian to ``[0, H]`` (``gradient_bounds``) before summing, which is what
bounds the sensitivity. ``releases`` counts the mechanisms for the accountant.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fedsilo.errors import EmptyAggregationError, InconsistentUpdatesError
from tasks.gbdt.histogram import NodeHistograms
from tasks.gbdt.learner import Federation
from tasks.gbdt.model import Tree
from tasks.gbdt.silo_state import LossSum, NodeSplit
from tasks.privacy.dp import histogram_sensitivity, noise_histograms
from tasks.privacy.encoding import FixedPoint
from tasks.privacy.secagg import (
    MaskContext,
    MaskedUpdate,
    mask_update,
    unmask_sum,
)
from tasks.privacy.secure_random import NoiseSource

#: Largest per-row hessian of each objective (the hessian clip under DP).
HESSIAN_BOUNDS = {
    "binary:logistic": 0.25,  # p (1 - p)
    "multi:softprob": 0.5,  # 2 p (1 - p)
    "reg:squarederror": 1.0,
}
#: Largest per-row |gradient| of the classification objectives (|p - y| <= 1).
NATURAL_GRADIENT_BOUNDS = {"binary:logistic": 1.0, "multi:softprob": 1.0}


@dataclass(frozen=True, slots=True)
class MaskedHistograms:
    """A silo's histograms of one exchange, masked: only node ids in the clear."""

    nodes: np.ndarray  # (m, 2) int64, as in NodeHistograms
    n_features: int
    width: int  # stride + 1
    exponent: int  # the gradient grid 2**-exponent = the fixed-point step
    masked: MaskedUpdate

    @property
    def nbytes(self) -> int:
        """Return the payload size in bytes (masked words and node ids)."""
        return int(self.nodes.nbytes + self.masked.values.nbytes)


def histogram_vector(histograms: NodeHistograms) -> np.ndarray:
    """Return gradients, hessians and totals of all nodes as one float64 vector."""
    return np.concatenate(
        [
            histograms.grad.ravel(),
            histograms.hess.ravel(),
            histograms.totals.ravel(),
        ]
    ).astype(np.float64, copy=False)


def histograms_from_vector(
    nodes: np.ndarray, vector: np.ndarray, n_features: int, width: int
) -> NodeHistograms:
    """Return the histograms laid out in ``vector`` by ``histogram_vector``."""
    m = int(np.asarray(nodes).shape[0])
    cells = m * n_features * width
    if vector.shape != (2 * cells + 3 * m,):
        raise InconsistentUpdatesError(
            f"a vector of {vector.shape[0]} values does not hold {m} nodes of "
            f"{n_features} features x {width} bins"
        )
    shape = (m, n_features, width)
    return NodeHistograms.from_parts(
        nodes=np.asarray(nodes, np.int64),
        grad=vector[:cells].reshape(shape),
        hess=vector[cells : 2 * cells].reshape(shape),
        totals=vector[2 * cells :].reshape(m, 3).copy(),
    )


def mask_histograms(
    histograms: NodeHistograms,
    silo_index: int,
    my_private: bytes,
    peers_public: Mapping[int, bytes],
    *,
    context: MaskContext,
    exponent: int,
) -> MaskedHistograms:
    """Return the silo's histograms in fixed point ``2**-exponent`` plus masks."""
    _, n_features, width = histograms.grad.shape
    masked = mask_update(
        silo_index,
        my_private,
        peers_public,
        histogram_vector(histograms),
        context=context,
        fixed_point=FixedPoint.exact(exponent),
    )
    return MaskedHistograms(
        nodes=np.asarray(histograms.nodes, np.int64),
        n_features=int(n_features),
        width=int(width),
        exponent=exponent,
        masked=masked,
    )


def unmask_histograms(parts: Sequence[MaskedHistograms]) -> NodeHistograms:
    """Return the sum of the silos' masked histograms; refuse a dropout.

    Raises ``SiloDropoutError`` when a silo of the roster sent nothing and
    ``SecureAggregationError`` (or ``InconsistentUpdatesError``) when the parts
    disagree on context, roster, nodes or layout.
    """
    if not parts:
        raise EmptyAggregationError("no masked histograms to sum")
    first = parts[0]
    for p in parts[1:]:
        if not np.array_equal(p.nodes, first.nodes):
            raise InconsistentUpdatesError("masked histograms describe different nodes")
        if (p.n_features, p.width, p.exponent) != (
            first.n_features,
            first.width,
            first.exponent,
        ):
            raise InconsistentUpdatesError("masked histograms differ in layout")
    total = unmask_sum([p.masked for p in parts], FixedPoint.exact(first.exponent))
    return histograms_from_vector(first.nodes, total, first.n_features, first.width)


def gradient_bounds(objective: str, clip: float) -> tuple[float, float]:
    """Return the per-row (gradient, hessian) bounds DP clips to.

    ``clip`` bounds |gradient|; classification objectives already have
    ``|g| <= 1`` so their bound is ``min(clip, 1)``. The hessian bound is the
    objective's own largest hessian (``HESSIAN_BOUNDS``).
    """
    if not (math.isfinite(clip) and clip > 0):
        raise ValueError(f"clip must be finite and > 0, got {clip}")
    if objective not in HESSIAN_BOUNDS:
        raise ValueError(f"no DP gradient bounds for objective {objective!r}")
    grad = min(clip, NATURAL_GRADIENT_BOUNDS.get(objective, math.inf))
    return grad, HESSIAN_BOUNDS[objective]


@dataclass(frozen=True, slots=True)
class HistogramDP:
    """Row-level DP of the histogram releases: per-row bounds and noise."""

    grad_bound: float
    hess_bound: float
    noise_multiplier: float

    def sensitivity(self, n_features: int, n_trees: int) -> float:
        """Return the L2 sensitivity of one release of ``n_trees`` trees' nodes."""
        return histogram_sensitivity(
            n_features, self.grad_bound, self.hess_bound, n_trees
        )

    def stddev(self, n_features: int, n_trees: int) -> float:
        """Return the noise standard deviation of one release."""
        return self.noise_multiplier * self.sensitivity(n_features, n_trees)


def noisy(
    histograms: NodeHistograms,
    dp: HistogramDP,
    n_trees: int,
    rng: NoiseSource,
) -> NodeHistograms:
    """Return summed histograms plus Gaussian noise, hessians and counts >= 0."""
    out = noise_histograms(
        histograms,
        sensitivity=dp.sensitivity(histograms.grad.shape[1], n_trees),
        noise_multiplier=dp.noise_multiplier,
        rng=rng,
    )
    np.maximum(out.hess, 0.0, out=out.hess)
    np.maximum(out.totals[:, 1:], 0.0, out=out.totals[:, 1:])
    return out


class NoisyFederation:
    """A ``learner.Federation`` whose histogram releases are Gaussian mechanisms.

    ``n_trees`` is the number of trees grown together per round (``num_class``
    for ``multi:softprob``, else 1): a row sits in one node of each. The noise
    comes from ``rng``, which must not be predictable by whoever reads the
    model: a run gives ``tasks.privacy.secure_random.SecureRandom`` (the OS's
    CSPRNG, no seed or state to record or recover).
    """

    def __init__(
        self,
        inner: Federation,
        dp: HistogramDP,
        n_trees: int,
        rng: NoiseSource,
        releases: int = 0,
    ) -> None:
        self.inner = inner
        self.dp = dp
        self.n_trees = n_trees
        self.rng = rng
        self.releases = releases

    def start_round(self, exponent: int) -> NodeHistograms:
        """Return the roots' summed histograms, noised (one release)."""
        out = noisy(self.inner.start_round(exponent), self.dp, self.n_trees, self.rng)
        self.releases += 1
        return out

    def level(
        self, splits: Sequence[NodeSplit], nodes: Sequence[tuple[int, int]]
    ) -> NodeHistograms:
        """Return the level's summed histograms, noised (one release)."""
        out = noisy(self.inner.level(splits, nodes), self.dp, self.n_trees, self.rng)
        self.releases += 1
        return out

    def finish_round(self, trees: Sequence[Tree], loss: bool = True) -> LossSum | None:
        """Pass the trees on; the loss sum is a training metric, not a release."""
        return self.inner.finish_round(trees, loss)


def noisy_label_stats(
    stats: np.ndarray, noise_multiplier: float, rng: NoiseSource
) -> np.ndarray:
    """Return label sums plus Gaussian noise for a DP intercept (one release).

    For ``binary:logistic`` the sums are ``[n, sum y]`` with ``y`` in [0, 1] and
    for ``multi:softprob`` class counts: one row moves them by at most
    ``sqrt(2)`` in L2. Counts are kept at least 1 (post-processing).
    """
    std = noise_multiplier * math.sqrt(2.0)
    out = np.asarray(stats, np.float64) + rng.normal(0.0, std, np.shape(stats))
    return np.maximum(out, 1.0)
