"""Privacy accounting for DP-FedAvg and DP histograms with Google's dp_accounting.

One round of DP-FedAvg is a sampled Gaussian mechanism: silos take part with
probability ``sampling_rate`` (q) and the sum of their clipped updates gets
Gaussian noise of ``noise_multiplier`` (z) times the clip. ``rounds`` rounds
compose. ``epsilon_spent`` gives the epsilon of the whole run at ``delta``.

Accountants: ``"rdp"`` (Renyi DP, dp_accounting's default orders; fast, since
the RDP of k rounds is k times that of one, it is computed once per (z, q)) or
``"pld"`` (privacy loss distributions: tighter, often 10-15 % lower epsilon,
and seconds per evaluation). dp_accounting logs a warning for fractional RDP
orders near 1 whose series does not converge and leaves them out; that only
loosens very large epsilons.

Sampling: ``"poisson"`` (each silo independently with probability q; the
analysis of McMahan et al., neighbouring = add or remove one silo) or
``"fixed"`` (exactly ``round(q * population)`` silos without replacement, as
``tasks.averaging.sampling.sample_silos`` does; RDP only, neighbouring = replace
one silo, whose L2 sensitivity of the clipped sum is ``2 * clip``, so the
mechanism's multiplier is z / 2). With q = 1 (every silo every round) both are
plain composition of Gaussian mechanisms.

The stop rule: before round ``r`` starts, ``would_exceed(..., rounds_done=r-1)``
is true if the run would spend more than its budget after ``r`` rounds; or ask
``rounds_within_budget`` once at the start.

What a run records (``fedavg_epsilon``, ``sampled_fedavg_epsilon``):
amplification by sampling protects a silo only from whoever does not learn
the sample. The coordinator picks it, and a checkpoint's ``metrics.parquet``
names it (``selected`` rows, each trained silo's traffic rows), so a run's
``epsilon`` and its budget use no amplification: ``rounds`` Gaussian mechanisms
of multiplier z, neighbouring = add or remove one silo (its clipped change in
the sum or not: sensitivity ``clip``), as if a silo took part in every round.
With ``strategy.fraction < 1`` the amplified figure (fixed-size sampling,
replace one silo) is recorded as ``epsilon_sampled``: it holds against a reader
of the models alone, who never learns the sample.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Literal, ParamSpec, TypedDict, Unpack

import dp_accounting
import numpy as np
from dp_accounting import rdp as dp_rdp
from dp_accounting.pld import PLDAccountant

from tasks.privacy.errors import PrivacyBudgetExceededError

Accountant = Literal["rdp", "pld"]
Sampling = Literal["poisson", "fixed"]
P = ParamSpec("P")


class AccountingOptions(TypedDict, total=False):
    """How rounds are accounted: the keyword arguments of :func:`epsilon_spent`."""

    accountant: Accountant
    sampling: Sampling
    population: int | None


def round_event(
    noise_multiplier: float,
    sampling_rate: float,
    *,
    sampling: Sampling = "poisson",
    population: int | None = None,
) -> dp_accounting.DpEvent:
    """Return the dp_accounting event of one DP-FedAvg round."""
    if noise_multiplier < 0:
        raise ValueError(f"noise_multiplier must be >= 0, got {noise_multiplier}")
    if not 0.0 < sampling_rate <= 1.0:
        raise ValueError(f"sampling_rate must be in (0, 1], got {sampling_rate}")
    gaussian = dp_accounting.GaussianDpEvent(noise_multiplier)
    if sampling_rate == 1.0:
        return gaussian
    if sampling == "poisson":
        return dp_accounting.PoissonSampledDpEvent(sampling_rate, gaussian)
    if population is None or population < 1:
        raise ValueError("fixed-size sampling needs the population of silos")
    sample = max(1, round(sampling_rate * population))
    return dp_accounting.SampledWithoutReplacementDpEvent(
        population, sample, dp_accounting.GaussianDpEvent(noise_multiplier / 2)
    )


def _relation(
    sampling: Sampling, sampling_rate: float
) -> dp_accounting.NeighboringRelation:
    if sampling == "fixed" and sampling_rate < 1.0:
        return dp_accounting.NeighboringRelation.REPLACE_ONE
    return dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE


@functools.lru_cache(maxsize=256)
def _rdp_per_round(
    noise_multiplier: float,
    sampling_rate: float,
    sampling: Sampling,
    population: int | None,
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    accountant = dp_rdp.RdpAccountant(
        neighboring_relation=_relation(sampling, sampling_rate)
    )
    accountant.compose(
        round_event(
            noise_multiplier, sampling_rate, sampling=sampling, population=population
        )
    )
    return tuple(accountant.orders.tolist()), tuple(accountant.rdp.tolist())


def epsilon_spent(
    noise_multiplier: float,
    sampling_rate: float,
    rounds: int,
    delta: float,
    *,
    accountant: Accountant = "rdp",
    sampling: Sampling = "poisson",
    population: int | None = None,
) -> float:
    """Return the epsilon at ``delta`` after ``rounds`` DP-FedAvg rounds."""
    if rounds < 0:
        raise ValueError(f"rounds must be >= 0, got {rounds}")
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    if rounds == 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    if accountant == "rdp":
        orders, per_round = _rdp_per_round(
            noise_multiplier, sampling_rate, sampling, population
        )
        rdp = rounds * np.asarray(per_round)
        return float(dp_rdp.compute_epsilon(np.asarray(orders), rdp, delta)[0])
    if sampling == "fixed" and sampling_rate < 1.0:
        raise ValueError("the PLD accountant has no fixed-size sampling; use 'rdp'")
    pld = PLDAccountant()
    pld.compose(round_event(noise_multiplier, sampling_rate), rounds)
    return float(pld.get_epsilon(delta))


def rounds_within_budget(
    noise_multiplier: float,
    sampling_rate: float,
    delta: float,
    epsilon_budget: float,
    *,
    max_rounds: int = 1_000_000,
    **options: Unpack[AccountingOptions],
) -> int:
    """Return the most rounds whose epsilon stays within the budget (<= max_rounds)."""

    def spent(rounds: int) -> float:
        return epsilon_spent(noise_multiplier, sampling_rate, rounds, delta, **options)

    if spent(1) > epsilon_budget:
        return 0
    low, high = 1, 2  # spent(low) within budget; find high over it
    while high <= max_rounds and spent(high) <= epsilon_budget:
        low, high = high, high * 2
    high = min(high, max_rounds + 1)
    while high - low > 1:
        middle = (low + high) // 2
        if spent(middle) <= epsilon_budget:
            low = middle
        else:
            high = middle
    return min(low, max_rounds)


def check_budget(
    noise_multiplier: float,
    sampling_rate: float,
    rounds_done: int,
    delta: float,
    epsilon_budget: float,
    **options: Unpack[AccountingOptions],
) -> float:
    """Return the epsilon after one more round; raise if it exceeds the budget."""
    rounds = rounds_done + 1
    epsilon = epsilon_spent(noise_multiplier, sampling_rate, rounds, delta, **options)
    if epsilon > epsilon_budget:
        raise PrivacyBudgetExceededError(epsilon, epsilon_budget, rounds)
    return epsilon


def _exceeds(check: Callable[P, float], name: str, doc: str) -> Callable[P, bool]:
    """Return ``name``, a predicate with ``check``'s parameters: whether it raises."""

    def exceeds(*args: P.args, **kwargs: P.kwargs) -> bool:
        try:
            check(*args, **kwargs)
        except PrivacyBudgetExceededError:
            return True
        return False

    exceeds.__name__ = exceeds.__qualname__ = name
    exceeds.__doc__ = doc
    return exceeds


would_exceed = _exceeds(
    check_budget,
    "would_exceed",
    "Return whether one more round would spend more than ``epsilon_budget``.\n\n"
    "Takes the parameters of ``check_budget``.",
)


def gbdt_releases(
    rounds: int, max_depth: int, *, base_score_release: bool = True
) -> int:
    """Return how many noisy histogram releases a GBDT run makes.

    One per level (``max_depth`` per round of trees; the trees of one round are
    released together and counted in the sensitivity), plus one if the base
    score is computed from the data.
    """
    return rounds * max_depth + (1 if base_score_release else 0)


def gbdt_epsilon(
    noise_multiplier: float,
    releases: int,
    delta: float,
    *,
    accountant: Accountant = "rdp",
) -> float:
    """Return the row-level epsilon of ``releases`` noisy histogram releases."""
    return epsilon_spent(noise_multiplier, 1.0, releases, delta, accountant=accountant)


def fedavg_epsilon(
    noise_multiplier: float,
    rounds: int,
    delta: float,
    *,
    accountant: Accountant = "rdp",
) -> float:
    """Return the epsilon of ``rounds`` DP-FedAvg rounds to whoever knows the sample.

    No amplification by sampling (the coordinator and checkpoint readers learn
    which silos trained); add or remove one silo, which the worst case has in
    every round.
    """
    return epsilon_spent(noise_multiplier, 1.0, rounds, delta, accountant=accountant)


def sampled_fedavg_epsilon(
    noise_multiplier: float,
    sampled: int,
    population: int,
    rounds: int,
    delta: float,
) -> float | None:
    """Return the epsilon amplified by fixed-size sampling; None if all silos train.

    ``sampled`` of ``population`` silos a round, without replacement (replace
    one silo, RDP): the guarantee towards whoever sees the models but never
    learns which silos each round sampled.
    """
    if sampled >= population:
        return None
    return epsilon_spent(
        noise_multiplier,
        sampled / population,
        rounds,
        delta,
        sampling="fixed",
        population=population,
    )
