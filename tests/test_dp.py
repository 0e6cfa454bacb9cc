"""Differential privacy: clipping, noise, adaptive clipping, accounting, GBDT noise."""

from __future__ import annotations

import logging
import math
import pickle

import dp_accounting
import numpy as np
import pytest
from dp_accounting import rdp as dp_rdp
from dp_accounting.pld import PLDAccountant
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.optimize import brentq
from scipy.stats import kstest, norm

from fedsilo.errors import InconsistentUpdatesError
from fedsilo.spec import DPSpec, StrategySpec
from tasks.averaging.combine import combine
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
from tasks.privacy.secagg import KeyPair, MaskContext, generate_keypair, unmask_sum
from tasks.privacy.secure_random import SecureRandom
from tasks.privacy.silo_protect import protect, with_noise_share
from tasks.protocol.messages import LocalUpdate, PrivacyRequest

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


# --- the CSPRNG --------------------------------------------------------------


def test_secure_random_draws_normals_and_uniforms() -> None:
    draw = SecureRandom()

    x = draw.normal(0.0, 3.0, (200_000,))
    u = draw.random(100_000)

    # The std estimate's own std is 0.16 %, the mean's 0.0067: both bounds are
    # over 10 of those; the KS bound of 0.01 at n = 2e5 fails with p ~ 2e-17.
    assert x.std() == pytest.approx(3.0, rel=0.02)
    assert abs(x.mean()) < 0.07
    assert kstest(x / 3.0, "norm").statistic < 0.01
    assert u.min() >= 0.0 and u.max() < 1.0 and abs(u.mean() - 0.5) < 0.01
    assert isinstance(draw.normal(), float) and draw.normal(1.0, 0.0) == 1.0
    assert draw.normal(0.0, 1.0, (2, 3)).shape == (2, 3)
    sample = draw.sample(10, 4)
    assert sample == sorted(set(sample)) and len(sample) == 4


def test_secure_random_holds_nothing_to_record_or_replay() -> None:
    a, b = SecureRandom(), SecureRandom()

    # No seed, key or state: every instance pickles to the same bytes ...
    assert pickle.dumps(a) == pickle.dumps(b)
    # ... and yet no two draws repeat.
    assert not np.array_equal(a.normal(0.0, 1.0, 64), a.normal(0.0, 1.0, 64))
    assert not np.array_equal(a.normal(0.0, 1.0, 64), b.normal(0.0, 1.0, 64))


# --- distributed noise -------------------------------------------------------

DISTRIBUTED = DPSpec(clip=1.0, noise_multiplier=0.8, noise="distributed")


def _keys(indices: tuple[int, ...]) -> dict[int, KeyPair]:
    return {i: generate_keypair() for i in indices}


def _request(
    i: int,
    roster: tuple[int, ...],
    keys: dict[int, KeyPair],
    context: MaskContext,
    dp: DPSpec,
    clip: float,
) -> PrivacyRequest:
    """What the coordinator asks of silo ``i`` (round_tasks.privacy_request)."""
    request = PrivacyRequest(
        clip=clip,
        vote=dp.adaptive is not None,
        silo_index=i,
        peers_public={j: keys[j].public for j in roster if j != i},
        context=context,
    )
    return with_noise_share(request, dp, len(roster))


@pytest.mark.parametrize(
    ("roster", "attempt"),
    [((0, 1, 2, 3), 0), ((0, 1, 3), 1)],  # a full round; its retry without silo 2
)
def test_distributed_noise_shares_give_the_full_variance_for_any_roster(
    roster: tuple[int, ...], attempt: int
) -> None:
    d = 60_000
    rng = np.random.default_rng(11)
    keys = _keys(roster)
    context = MaskContext("run", 1, attempt)
    start = {"w": np.zeros(d)}
    clean = np.zeros(d)
    masked = []
    for i in roster:
        local = {"w": rng.normal(0.0, 1e-3, d)}  # norm ~0.25: within the clip
        clean += local["w"]
        request = _request(i, roster, keys, context, DISTRIBUTED, 1.0)
        sent, update, _ = protect(local, start, 100, request, keys[i])
        assert sent == {} and update is not None
        assert request.noise_shares == len(roster)
        masked.append(update)

    noise = unmask_sum(masked) - clean  # all that the coordinator can decode

    # sigma = z * clip = 0.8 whatever the roster; the std estimate's own std is
    # 0.29 %, the mean's 0.0033: the bounds are ten of those.
    assert noise.std() == pytest.approx(0.8, rel=0.03)
    assert abs(noise.mean()) < 0.033


def test_a_silo_clips_then_adds_its_share_then_masks() -> None:
    dp = DPSpec(
        clip=0.5,
        noise_multiplier=1.0,
        noise="distributed",
        adaptive={"count_stddev": 2.0},
    )
    keys = _keys((0, 1))
    context = MaskContext("run", 3)
    zeros = {"w": np.zeros(2)}
    request = _request(0, (0, 1), keys, context, dp, 0.5)
    quiet = PrivacyRequest(  # silo 1 sends a zero change and its vote, no noise
        clip=0.5,
        vote=True,
        silo_index=1,
        peers_public={0: keys[0].public},
        context=context,
    )

    _, mine, _ = protect(
        {"w": np.array([3.0, 4.0])},
        zeros,
        10,
        request,
        keys[0],
        np.random.default_rng(9),
    )
    _, other, _ = protect(zeros, zeros, 10, quiet, keys[1])
    total = unmask_sum([mine, other])

    z = update_noise_multiplier(1.0, 2.0)
    replay = np.random.default_rng(9)
    clipped = {"w": np.array([0.3, 0.4])}  # [3, 4] has norm 5, clipped to 0.5
    noised = add_gaussian_noise(clipped, 0.5, z, replay, n_shares=2)["w"]
    vote = -0.5 + replay.normal(0.0, 2.0 / math.sqrt(2))  # over the clip: -1/2
    assert request.noise_multiplier == pytest.approx(z)
    assert request.vote_stddev == pytest.approx(2.0 / math.sqrt(2))
    np.testing.assert_allclose(total, [*noised, vote + 0.5], atol=1e-6)


def test_a_noise_share_is_refused_without_masking() -> None:
    request = with_noise_share(PrivacyRequest(clip=1.0), DISTRIBUTED, 3)

    with pytest.raises(ValueError, match="secure aggregation"):
        protect({"w": np.ones(2)}, {"w": np.zeros(2)}, 5, request, None)
    assert with_noise_share(PrivacyRequest(clip=1.0), None, 3) == PrivacyRequest(
        clip=1.0
    )


def test_the_coordinator_adds_no_noise_under_distributed_dp() -> None:
    roster = (0, 1, 2)
    keys = _keys(roster)
    context = MaskContext("run", 1)
    start = {"coef_": np.zeros((1, 3)), "intercept_": np.zeros(1), "t_": np.ones(())}
    updates = []
    rng = np.random.default_rng(5)
    for i in roster:
        local = {
            "coef_": rng.normal(0.0, 0.1, (1, 3)),
            "intercept_": rng.normal(0.0, 0.1, 1),
            "t_": np.array(9.0),
        }
        request = _request(i, roster, keys, context, DISTRIBUTED, 1.0)
        _, masked, _ = protect(local, start, 10, request, keys[i])
        updates.append(LocalUpdate(f"s{i}", 1, "w", {}, 10, 0.0, 0, 0, masked=masked))
    total = unmask_sum([u.masked for u in updates])  # coef_ then intercept_
    central = DISTRIBUTED.model_copy(update={"noise": "central"})

    new = combine(
        updates, start, StrategySpec(), dp=DISTRIBUTED, clip=1.0, expected_silos=3
    ).params
    noised = combine(
        updates, start, StrategySpec(), dp=central, clip=1.0, expected_silos=3
    ).params

    np.testing.assert_allclose(new["coef_"].ravel(), total[:3] / 3, atol=1e-12)
    np.testing.assert_allclose(new["intercept_"], total[3:] / 3, atol=1e-12)
    assert new["t_"] == 1.0  # a state counter keeps the global value
    # Central noise (std 0.8 / 3 per value) on the same sum: never this close.
    assert np.linalg.norm(noised["coef_"] - new["coef_"]) > 1e-3


def test_the_run_records_epsilon_against_whoever_knows_the_sample() -> None:
    z, delta = 1.2, 1e-5

    known = accountant.fedavg_epsilon(z, 20, delta)
    sampled = accountant.sampled_fedavg_epsilon(z, 5, 20, 20, delta)

    assert known == accountant.epsilon_spent(z, 1.0, 20, delta)
    assert sampled == accountant.epsilon_spent(
        z, 0.25, 20, delta, sampling="fixed", population=20
    )
    assert accountant.sampled_fedavg_epsilon(z, 20, 20, 20, delta) is None
