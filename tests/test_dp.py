"""Differential privacy: clipping, noise, adaptive clipping, accounting, GBDT noise."""

from __future__ import annotations

import logging
import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting import rdp as dp_rdp
from dp_accounting.pld import PLDAccountant
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.optimize import brentq
from scipy.stats import norm

from fedsilo.errors import InconsistentUpdatesError
from tasks.privacy import accountant
from tasks.privacy.dp import (
    AdaptiveClip,
    add_gaussian_noise,
    clip_by_l2,
    clip_gradients,
    clip_vote,
    dp_mean,
    histogram_sensitivity,
    l2_norm,
    noise_histograms,
    params_delta,
    update_clip,
    update_noise_multiplier,
)
from tasks.privacy.errors import PrivacyBudgetExceededError

VALUES = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False)


@pytest.fixture(autouse=True)
def _quiet_absl(caplog: pytest.LogCaptureFixture) -> None:
    """dp_accounting logs non-converging fractional RDP orders; not our concern."""
    caplog.set_level(logging.ERROR, logger="absl")


# --- clipping and noise ------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(
    coef=hnp.arrays(np.float64, (2, 3), elements=VALUES),
    bias=hnp.arrays(np.float64, (2,), elements=VALUES),
    clip=st.floats(1e-3, 1e3),
)
def test_clipping_bounds_the_norm_and_keeps_the_direction(
    coef: np.ndarray, bias: np.ndarray, clip: float
) -> None:
    update = {"coef_": coef, "intercept_": bias}

    clipped, norm = clip_by_l2(update, clip)

    assert norm == pytest.approx(math.sqrt((coef**2).sum() + (bias**2).sum()))
    assert l2_norm(clipped) <= clip * (1 + 1e-12)
    if norm <= clip:
        np.testing.assert_array_equal(clipped["coef_"], coef)
    else:
        assert l2_norm(clipped) == pytest.approx(clip)
        np.testing.assert_allclose(clipped["coef_"] * norm / clip, coef, atol=1e-9)


def test_clipping_refuses_non_finite_updates() -> None:
    with pytest.raises(InconsistentUpdatesError):
        clip_by_l2({"w": np.array([1.0, np.nan])}, 1.0)


def test_params_delta_is_new_minus_old() -> None:
    delta = params_delta({"w": np.array([3.0, 1.0])}, {"w": np.array([1.0, 1.0])})

    np.testing.assert_array_equal(delta["w"], [2.0, 0.0])
    with pytest.raises(InconsistentUpdatesError):
        params_delta({"w": np.zeros(2)}, {"v": np.zeros(2)})


def test_noise_std_is_noise_multiplier_times_clip() -> None:
    rng = np.random.default_rng(0)
    zeros = {"a": np.zeros((400, 250)), "b": np.zeros(50_000)}

    noisy = add_gaussian_noise(zeros, clip=2.0, noise_multiplier=1.5, rng=rng)

    for array in noisy.values():
        # std of a 1e5-sample std estimate is ~0.22 %; allow 1.5 %.
        assert array.std() == pytest.approx(3.0, rel=0.015)
        assert abs(array.mean()) < 0.05


def test_noise_shares_of_all_silos_add_up_to_the_full_noise() -> None:
    rng = np.random.default_rng(1)
    zeros = {"w": np.zeros(100_000)}
    m = 5

    shares = [
        add_gaussian_noise(zeros, 1.0, 2.0, rng, n_shares=m)["w"] for _ in range(m)
    ]

    assert shares[0].std() == pytest.approx(2.0 / math.sqrt(m), rel=0.015)
    assert np.sum(shares, axis=0).std() == pytest.approx(2.0, rel=0.015)


def test_dp_mean_divides_by_the_expected_count() -> None:
    mean = dp_mean({"w": np.array([10.0, -4.0])}, expected_silos=4)

    np.testing.assert_array_equal(mean["w"], [2.5, -1.0])


# --- adaptive clipping -------------------------------------------------------


def test_adaptive_clip_moves_geometrically_toward_the_target_quantile() -> None:
    rng = np.random.default_rng(2)
    state = AdaptiveClip(clip=0.01, target_quantile=0.5, learning_rate=0.2)
    silos = 100

    for _ in range(300):
        norms = rng.lognormal(mean=0.0, sigma=0.5, size=silos)  # median 1.0
        votes = sum(clip_vote(n, state.clip) for n in norms)
        state = update_clip(state, votes, expected_silos=silos, rng=rng)

    assert state.clip == pytest.approx(1.0, rel=0.15)


def test_adaptive_clip_step_matches_the_paper_formula() -> None:
    state = AdaptiveClip(clip=2.0, target_quantile=0.8, learning_rate=0.2)
    votes = 0.5 * 6 - 0.5 * 4  # 6 of 10 silos within the clip

    new = update_clip(state, votes, expected_silos=10, rng=np.random.default_rng())

    assert new.clip == pytest.approx(2.0 * math.exp(-0.2 * (0.6 - 0.8)))


def test_noisy_clip_votes_keep_the_total_noise_multiplier() -> None:
    z, count_stddev = 1.0, 5.0

    z_update = update_noise_multiplier(z, count_stddev)

    assert z_update**-2 + (2 * count_stddev) ** -2 == pytest.approx(z**-2)
    assert z_update > z
    with pytest.raises(ValueError):
        update_noise_multiplier(1.0, 0.4)


# --- accounting --------------------------------------------------------------


def test_epsilon_matches_dp_accounting_directly() -> None:
    z, q, rounds, delta = 1.1, 0.1, 50, 1e-5
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), rounds
    )
    rdp = dp_rdp.RdpAccountant()
    rdp.compose(event)
    pld = PLDAccountant()
    pld.compose(event)

    assert accountant.epsilon_spent(z, q, rounds, delta) == pytest.approx(
        rdp.get_epsilon(delta), rel=1e-9
    )
    assert accountant.epsilon_spent(
        z, q, rounds, delta, accountant="pld"
    ) == pytest.approx(pld.get_epsilon(delta), rel=1e-9)


def test_known_reference_value_of_the_gaussian_mechanism() -> None:
    # One Gaussian mechanism with sigma = sensitivity = 1. The exact curve
    # (Balle & Wang 2018, Theorem 8) is delta(eps) = Phi(1/2 - eps) -
    # e**eps * Phi(-1/2 - eps); at delta = 1e-5 it gives eps = 4.3772.
    def exact_delta(eps: float) -> float:
        return float(norm.cdf(0.5 - eps) - math.exp(eps) * norm.cdf(-0.5 - eps))

    reference = brentq(lambda e: exact_delta(e) - 1e-5, 0.1, 20.0)

    assert reference == pytest.approx(4.3772, abs=1e-4)
    pld = accountant.epsilon_spent(1.0, 1.0, 1, 1e-5, accountant="pld")
    assert pld == pytest.approx(reference, rel=1e-4)
    assert accountant.epsilon_spent(1.0, 1.0, 1, 1e-5) >= reference  # RDP bounds it


def test_fixed_size_sampling_uses_replace_one_with_double_sensitivity() -> None:
    z, population, rounds, delta = 2.0, 20, 50, 1e-5
    rdp = dp_rdp.RdpAccountant(
        neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE
    )
    rdp.compose(
        dp_accounting.SampledWithoutReplacementDpEvent(
            population, 5, dp_accounting.GaussianDpEvent(z / 2)
        ),
        rounds,
    )

    eps = accountant.epsilon_spent(
        z, 0.25, rounds, delta, sampling="fixed", population=population
    )

    assert eps == pytest.approx(rdp.get_epsilon(delta), rel=1e-9)


def test_epsilon_grows_with_rounds_and_shrinks_with_noise() -> None:
    by_rounds = [
        accountant.epsilon_spent(1.0, 0.1, r, 1e-5) for r in (1, 10, 100, 1000)
    ]
    by_noise = [
        accountant.epsilon_spent(z, 0.1, 100, 1e-5) for z in (0.7, 1.0, 2.0, 4.0)
    ]

    assert by_rounds == sorted(by_rounds) and len(set(by_rounds)) == 4
    assert by_noise == sorted(by_noise, reverse=True) and len(set(by_noise)) == 4
    assert accountant.epsilon_spent(1.0, 0.1, 0, 1e-5) == 0.0
    assert accountant.epsilon_spent(0.0, 0.1, 1, 1e-5) == math.inf


def test_rounds_within_budget_is_the_last_round_under_it() -> None:
    z, q, delta, budget = 1.0, 0.1, 1e-5, 3.0

    rounds = accountant.rounds_within_budget(z, q, delta, budget)

    assert rounds > 1
    assert accountant.epsilon_spent(z, q, rounds, delta) <= budget
    assert accountant.epsilon_spent(z, q, rounds + 1, delta) > budget
    assert accountant.rounds_within_budget(0.3, 1.0, delta, 0.5) == 0
    assert (
        accountant.rounds_within_budget(50.0, 0.01, delta, 10.0, max_rounds=500) == 500
    )


def test_a_run_stops_before_it_would_exceed_its_budget() -> None:
    z, q, delta, budget = 1.0, 0.2, 1e-5, 2.0
    done = 0

    while not accountant.would_exceed(z, q, done, delta, budget):
        done += 1  # ... run round done + 1 ...

    assert done == accountant.rounds_within_budget(z, q, delta, budget)
    assert accountant.epsilon_spent(z, q, done, delta) <= budget
    with pytest.raises(PrivacyBudgetExceededError) as stopped:
        accountant.check_budget(z, q, done, delta, budget)
    assert stopped.value.rounds == done + 1 and stopped.value.epsilon > budget


# --- GBDT histograms ---------------------------------------------------------


def test_histogram_sensitivity_is_the_largest_change_one_row_makes() -> None:
    from tasks.gbdt.binning import bin_matrix
    from tasks.gbdt.histogram import build_histograms

    rng = np.random.default_rng(3)
    n, features, g_bound, h_bound = 300, 4, 1.0, 0.25
    X = rng.normal(size=(n, features))
    X[rng.random(X.shape) < 0.1] = np.nan
    cuts = [np.array([-1.0, 0.0, 1.0, 9.0], dtype=np.float32)] * features
    grad, hess = clip_gradients(
        rng.normal(0, 2, n), rng.random(n), grad_bound=g_bound, hess_bound=h_bound
    )
    grad[0], hess[0] = -g_bound, h_bound  # the row to remove is a worst case
    positions = rng.integers(1, 3, n)  # rows spread over nodes 1 and 2 (level 1)
    nodes = np.array([1, 2])

    def level(keep: np.ndarray) -> np.ndarray:
        out = build_histograms(
            bin_matrix(X[keep], cuts),
            grad[keep],
            hess[keep],
            positions[keep],
            nodes,
            backend="numpy",
        )
        return np.concatenate([part.ravel() for part in out])

    keep = np.ones(n, bool)
    without = keep.copy()
    without[0] = False
    change = np.linalg.norm(level(keep) - level(without))

    bound = histogram_sensitivity(features, g_bound, h_bound)
    assert change == pytest.approx(bound)
    assert np.all(np.abs(grad) <= g_bound) and np.all((hess >= 0) & (hess <= h_bound))


def test_noise_histograms_adds_noise_of_the_stated_std() -> None:
    from tasks.gbdt.histogram import NodeHistograms

    hist = NodeHistograms.from_parts(
        nodes=np.array([[0, 0]]),
        grad=np.zeros((1, 50, 257)),
        hess=np.zeros((1, 50, 257)),
        totals=np.zeros((1, 3)),
    )
    sensitivity = histogram_sensitivity(50, 1.0, 0.25)

    noisy = noise_histograms(
        hist,
        sensitivity=sensitivity,
        noise_multiplier=0.8,
        rng=np.random.default_rng(4),
    )

    np.testing.assert_array_equal(noisy.nodes, hist.nodes)
    assert noisy.grad.std() == pytest.approx(0.8 * sensitivity, rel=0.02)
    assert noisy.hess.std() == pytest.approx(0.8 * sensitivity, rel=0.02)


def test_gbdt_accounting_composes_one_gaussian_per_level() -> None:
    releases = accountant.gbdt_releases(rounds=10, max_depth=4)
    direct = dp_rdp.RdpAccountant()
    direct.compose(dp_accounting.GaussianDpEvent(5.0), 41)

    assert releases == 41
    assert accountant.gbdt_epsilon(5.0, releases, 1e-6) == pytest.approx(
        direct.get_epsilon(1e-6), rel=1e-9
    )
