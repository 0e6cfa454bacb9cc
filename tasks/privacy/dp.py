"""Differential privacy maths: DP-FedAvg clipping and noise, adaptive clipping, GBDT.

Client-level DP-FedAvg (McMahan et al. 2018), one round:

1. Silo: ``delta = params_delta(local, global)``; ``clipped, norm =
   clip_by_l2(delta, clip)``. Clipping bounds what one silo can change the sum
   by (its L2 sensitivity) to ``clip``.
2. Coordinator (or secure aggregation): the sum of the clipped deltas, every
   silo weighted 1. Sample-count weighting would let a large silo move the sum
   by more than ``clip``, so it is off under DP.
3. Coordinator: ``add_gaussian_noise(sum, clip, noise_multiplier, rng)`` adds
   N(0, (noise_multiplier * clip)**2) to every coordinate, then
   ``dp_mean(noisy, expected_silos)`` divides by the expected number of silos
   per round (the fixed denominator of McMahan et al., which keeps the
   sensitivity of the mean at ``clip / expected_silos``).
4. ``global + mean`` (or a server optimiser step: post-processing, free).

The privacy spent is computed in ``accountant`` from ``noise_multiplier``, the
sampling rate and the number of rounds.

Distributed noise (``privacy.dp.noise: distributed``, secure aggregation only):
step 3's noise is added by the silos instead. Each of the ``m`` silos of the
round's roster adds ``add_gaussian_noise(..., n_shares=m)``, variance ``1/m`` of
the total, to its clipped change before masking it
(``tasks.privacy.silo_protect.protect``), so the coordinator only ever decodes
the noisy sum and adds nothing. A secure round that loses a silo is masked
again among the ``m' < m`` silos left, and they draw their shares again for
``m'``: the sum always carries the full variance. Fixed-point rounding after
noising is post-processing; fedsilo does not use the discrete Gaussian, whose
guarantee would survive a finite ring exactly.

Noise comes from a ``NoiseSource``: ``tasks.privacy.secure_random.SecureRandom``
(the OS's CSPRNG, nothing recorded) in every run; a seeded numpy ``Generator``
only where a test needs the same draws twice.

Adaptive clipping (Andrew et al. 2021): the clip follows a target quantile of
the silos' update norms. Each silo sends only ``clip_vote(norm, clip)``, +1/2
if its norm was within the clip, -1/2 otherwise; the coordinator adds
N(0, count_stddev**2) to their sum and updates the clip geometrically
(``update_clip``). The vote sum has sensitivity 1/2, so the two Gaussian
mechanisms together cost as much as one with noise multiplier ``z`` when the
update noise uses ``update_noise_multiplier(z, count_stddev)``; account with
``z``. The paper's defaults: target quantile 0.5, learning rate 0.2,
``count_stddev = expected_silos / 20``.

GBDT histograms (optional, row-level DP: the unit protected is one training
row, not one silo): gradients are clipped to ``[-G, G]`` and hessians to
``[0, H]`` (``clip_gradients``; binary logistic already has G = 1, H = 1/4). A
row lies in exactly one slot (bins plus missing) per feature of exactly one
node per tree at a given level, and in that node's totals (gradient, hessian,
count 1). Adding or removing a row therefore changes one level's release by at
most ``sqrt(T * ((F + 1) * (G**2 + H**2) + 1))`` in L2 for ``F`` features and
``T`` trees grown together (``histogram_sensitivity``). ``noise_histograms``
adds N(0, (z * sensitivity)**2) to every gradient, hessian and total of the
summed histograms. Split finding, sibling histograms by subtraction and leaf
values computed from noised sums are post-processing. Accounting: one Gaussian
mechanism with multiplier ``z`` per level release, composed over ``max_depth``
levels per round of trees, over all rounds, plus one for the base score if it
is computed from the data (``accountant.gbdt_epsilon``). The quantile sketch
that fixes the bin cuts is not covered: use public or separately privatised
cut points when DP matters.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from fedsilo.errors import InconsistentUpdatesError
from tasks.privacy.secure_random import NoiseSource

if TYPE_CHECKING:  # no runtime import: the GBDT package pulls in numba
    from tasks.gbdt.histogram import NodeHistograms

Params = Mapping[str, np.ndarray]


def params_delta(new: Params, old: Params) -> dict[str, np.ndarray]:
    """Return ``new - old`` tensor by tensor (a silo's update as a change)."""
    if sorted(new) != sorted(old):
        raise InconsistentUpdatesError(
            f"tensors {sorted(new)} do not match {sorted(old)}"
        )
    return {
        name: np.asarray(new[name], dtype=np.float64)
        - np.asarray(old[name], dtype=np.float64)
        for name in new
    }


def l2_norm(update: Params) -> float:
    """Return the L2 norm of all tensors together."""
    return math.sqrt(
        sum(
            float(np.sum(np.square(np.asarray(a, np.float64)))) for a in update.values()
        )
    )


def clip_by_l2(update: Params, clip: float) -> tuple[dict[str, np.ndarray], float]:
    """Return the update scaled to L2 norm at most ``clip``, and its norm before."""
    if not (math.isfinite(clip) and clip > 0):
        raise ValueError(f"clip must be finite and > 0, got {clip}")
    norm = l2_norm(update)
    if not math.isfinite(norm):
        raise InconsistentUpdatesError("the update has non-finite values")
    scale = min(1.0, clip / norm) if norm > 0 else 1.0
    clipped = {
        name: np.asarray(a, dtype=np.float64) * scale for name, a in update.items()
    }
    return clipped, norm


def noise_stddev(clip: float, noise_multiplier: float, n_shares: int = 1) -> float:
    """Return the noise std, ``noise_multiplier * clip / sqrt(n_shares)``."""
    if clip <= 0 or noise_multiplier < 0 or n_shares < 1:
        raise ValueError(
            f"need clip > 0, noise_multiplier >= 0, n_shares >= 1; got {clip}, "
            f"{noise_multiplier}, {n_shares}"
        )
    return noise_multiplier * clip / math.sqrt(n_shares)


def add_gaussian_noise(
    total: Params,
    clip: float,
    noise_multiplier: float,
    rng: NoiseSource,
    *,
    n_shares: int = 1,
) -> dict[str, np.ndarray]:
    """Return ``total`` plus Gaussian noise of std ``noise_multiplier * clip``.

    With ``n_shares = m`` the std is divided by ``sqrt(m)``: each of ``m`` silos
    adds one share before secure aggregation.
    """
    std = noise_stddev(clip, noise_multiplier, n_shares)
    return {
        name: np.asarray(a, dtype=np.float64) + rng.normal(0.0, std, np.shape(a))
        for name, a in sorted(total.items())
    }


def dp_mean(noisy_sum: Params, expected_silos: float) -> dict[str, np.ndarray]:
    """Return the noisy sum over the expected number of silos (fixed denominator)."""
    if not expected_silos > 0:
        raise ValueError(f"expected_silos must be > 0, got {expected_silos}")
    return {
        name: np.asarray(a, dtype=np.float64) / expected_silos
        for name, a in noisy_sum.items()
    }


@dataclass(frozen=True, slots=True)
class AdaptiveClip:
    """State of adaptive clipping (Andrew et al. 2021): the clip and its rule."""

    clip: float
    target_quantile: float = 0.5
    learning_rate: float = 0.2
    count_stddev: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise ValueError(f"clip must be finite and > 0, got {self.clip}")
        if not 0.0 < self.target_quantile < 1.0:
            raise ValueError(
                f"target_quantile must be in (0, 1): {self.target_quantile}"
            )
        if self.learning_rate < 0 or self.count_stddev < 0:
            raise ValueError("learning_rate and count_stddev must be >= 0")


def clip_vote(norm: float, clip: float) -> float:
    """Return a silo's vote: +1/2 if its update norm is within the clip, else -1/2."""
    return 0.5 if norm <= clip else -0.5


def update_clip(
    state: AdaptiveClip,
    vote_sum: float,
    expected_silos: float,
    rng: NoiseSource,
) -> AdaptiveClip:
    """Return the state with the clip moved geometrically toward the target quantile.

    ``vote_sum`` is the sum of ``clip_vote`` over the round's silos. The noisy
    fraction of unclipped silos is ``(vote_sum + N(0, count_stddev**2)) /
    expected_silos + 1/2`` and the clip becomes ``clip * exp(-learning_rate *
    (fraction - target_quantile))``.
    """
    if not expected_silos > 0:
        raise ValueError(f"expected_silos must be > 0, got {expected_silos}")
    noise = rng.normal(0.0, state.count_stddev) if state.count_stddev > 0 else 0.0
    fraction = (vote_sum + noise) / expected_silos + 0.5
    factor = math.exp(-state.learning_rate * (fraction - state.target_quantile))
    return replace(state, clip=state.clip * factor)


def update_noise_multiplier(noise_multiplier: float, count_stddev: float) -> float:
    """Return the update noise multiplier that keeps the total at ``noise_multiplier``.

    ``z_update = (z**-2 - (2 * count_stddev)**-2) ** -1/2`` (Andrew et al. 2021).
    """
    if count_stddev <= 0:
        return noise_multiplier
    if noise_multiplier <= 0 or 2 * count_stddev <= noise_multiplier:
        raise ValueError(
            f"count_stddev={count_stddev} must exceed noise_multiplier/2="
            f"{noise_multiplier / 2} for the clip votes to fit in the budget"
        )
    return float((noise_multiplier**-2 - (2 * count_stddev) ** -2) ** -0.5)


def clip_gradients(
    grad: np.ndarray, hess: np.ndarray, grad_bound: float, hess_bound: float
) -> tuple[np.ndarray, np.ndarray]:
    """Return gradients clipped to +-grad_bound and hessians to [0, hess_bound]."""
    return (
        np.clip(np.asarray(grad, np.float64), -grad_bound, grad_bound),
        np.clip(np.asarray(hess, np.float64), 0.0, hess_bound),
    )


def histogram_sensitivity(
    n_features: int, grad_bound: float, hess_bound: float, n_trees: int = 1
) -> float:
    """Return the L2 sensitivity of one level's histograms and totals to one row."""
    per_tree = (n_features + 1) * (grad_bound**2 + hess_bound**2) + 1.0
    return math.sqrt(n_trees * per_tree)


def noise_histograms(
    histograms: NodeHistograms,
    *,
    sensitivity: float,
    noise_multiplier: float,
    rng: NoiseSource,
) -> NodeHistograms:
    """Return summed histograms plus N(0, (noise_multiplier * sensitivity)**2)."""
    std = noise_multiplier * sensitivity
    return type(histograms).from_parts(
        nodes=histograms.nodes,
        grad=histograms.grad + rng.normal(0.0, std, histograms.grad.shape),
        hess=histograms.hess + rng.normal(0.0, std, histograms.hess.shape),
        totals=histograms.totals + rng.normal(0.0, std, histograms.totals.shape),
    )
