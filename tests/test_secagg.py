"""Secure aggregation: masks cancel only in the full sum, dropouts force a retry."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedsilo.errors import EmptyAggregationError, InconsistentUpdatesError
from tasks.averaging.weighted import weighted_average
from tasks.privacy.encoding import FixedPoint, flatten, layout_of, unflatten
from tasks.privacy.errors import (
    FixedPointRangeError,
    SecureAggregationError,
    SiloDropoutError,
)
from tasks.privacy.secagg import (
    KeyPair,
    MaskContext,
    MaskedUpdate,
    generate_keypair,
    mask_stream,
    mask_update,
    mask_weighted_update,
    missing_silos,
    modular_sum,
    shared_seed,
    unmask_sum,
    unmask_weighted_average,
)

FP = FixedPoint()


def _keys(indices: list[int]) -> dict[int, KeyPair]:
    return {i: generate_keypair() for i in indices}


def _mask_all(
    keys: dict[int, KeyPair],
    vectors: dict[int, np.ndarray],
    context: MaskContext,
    fixed_point: FixedPoint = FP,
) -> list[MaskedUpdate]:
    publics = {i: pair.public for i, pair in keys.items()}
    return [
        mask_update(
            i,
            keys[i].private,
            publics,
            vectors[i],
            context=context,
            fixed_point=fixed_point,
        )
        for i in sorted(vectors)
    ]


# --- key agreement and mask streams ------------------------------------------


def test_both_silos_of_a_pair_derive_the_same_seed() -> None:
    a, b = generate_keypair(), generate_keypair()
    context = MaskContext("run-1", 3)

    seed_ab = shared_seed(
        a.private, b.public, context=context, pair=(0, 4), roster=[0, 4]
    )
    seed_ba = shared_seed(
        b.private, a.public, context=context, pair=(4, 0), roster=[4, 0]
    )

    assert seed_ab == seed_ba
    assert len(seed_ab) == 32 and len(a.public) == 32 and len(a.private) == 32


def test_seeds_change_with_round_attempt_step_and_roster() -> None:
    a, b = generate_keypair(), generate_keypair()
    base = MaskContext("run-1", 3)
    variants = [
        (base, [0, 1]),
        (MaskContext("run-2", 3), [0, 1]),
        (MaskContext("run-1", 4), [0, 1]),
        (base.next_attempt(), [0, 1]),
        (MaskContext("run-1", 3, step="tree0-level1"), [0, 1]),
        (base, [0, 1, 2]),
    ]

    seeds = {
        shared_seed(a.private, b.public, context=c, pair=(0, 1), roster=r)
        for c, r in variants
    }

    assert len(seeds) == len(variants)


def test_a_bad_public_key_is_a_named_error() -> None:
    a = generate_keypair()

    with pytest.raises(SecureAggregationError):
        shared_seed(
            a.private,
            b"\x00" * 31,
            context=MaskContext("r", 1),
            pair=(0, 1),
            roster=[0, 1],
        )


def test_mask_stream_is_deterministic_and_looks_uniform() -> None:
    seed = bytes(range(32))

    stream = mask_stream(seed, 100_000)

    np.testing.assert_array_equal(stream, mask_stream(seed, 100_000))
    np.testing.assert_array_equal(stream[:10], mask_stream(seed, 10))
    assert stream.dtype == np.uint64
    # Top byte of each word: a chi-square test of uniformity over 256 cells.
    counts = np.bincount((stream >> np.uint64(56)).astype(np.int64), minlength=256)
    expected = stream.size / 256
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 350  # 255 dof: p(chi2 > 350) < 1e-4


# --- fixed point and layouts -------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(
    values=st.lists(
        hnp.arrays(np.float64, 7, elements=st.floats(-1e6, 1e6, allow_nan=False)),
        min_size=1,
        max_size=8,
    )
)
def test_fixed_point_sum_is_within_tolerance(values: list[np.ndarray]) -> None:
    total = FP.decode(modular_sum([FP.encode(v) for v in values]))

    np.testing.assert_allclose(
        total, np.sum(values, axis=0), rtol=0, atol=FP.tolerance(len(values))
    )


def test_fixed_point_refuses_out_of_range_and_non_finite_values() -> None:
    small = FixedPoint(frac_bits=16, bound=10.0)

    with pytest.raises(FixedPointRangeError, match="bound"):
        small.encode(np.array([1.0, 11.0]))
    with pytest.raises(FixedPointRangeError, match="finite"):
        small.encode(np.array([np.nan]))
    with pytest.raises(FixedPointRangeError, match="silos"):
        FixedPoint(frac_bits=40, bound=2.0**20).check_capacity(10)


def test_default_fixed_point_capacity_is_documented() -> None:
    assert FP.max_silos == 255
    assert FP.step == 2.0**-24


def test_exact_fixed_point_sums_quantised_histograms_bitwise() -> None:
    exponent = 40
    rng = np.random.default_rng(0)
    parts = [
        np.ldexp(np.rint(np.ldexp(rng.normal(size=50), exponent)), -exponent)
        for _ in range(5)
    ]
    exact = FixedPoint.exact(exponent)

    total = exact.decode(modular_sum([exact.encode(p) for p in parts]))

    np.testing.assert_array_equal(total, np.sum(parts, axis=0))


def test_flatten_round_trips_named_arrays_in_sorted_order() -> None:
    params = {
        "intercept_": np.array([0.5, -1.0]),
        "coef_": np.arange(6, dtype=np.float32).reshape(2, 3),
        "t_": np.array(7.0),
    }

    vector, layout = flatten(params)
    back = unflatten(vector, layout)

    assert layout.names == ("coef_", "intercept_", "t_")
    assert vector.shape == (9,)
    for name, array in params.items():
        assert back[name].dtype == array.dtype
        np.testing.assert_array_equal(back[name], array)
    with pytest.raises(InconsistentUpdatesError):
        flatten({"coef_": np.zeros((3, 2))}, layout_of(params))


# --- the three properties --------------------------------------------


def test_aggregate_equals_plain_sum_within_fixed_point_tolerance() -> None:
    rng = np.random.default_rng(1)
    indices = [0, 2, 5, 7, 9]
    keys = _keys(indices)
    vectors = {i: rng.normal(0, 10, size=1_000) for i in indices}

    masked = _mask_all(keys, vectors, MaskContext("run", 1))
    total = unmask_sum(masked)

    np.testing.assert_allclose(
        total, sum(vectors.values()), rtol=0, atol=FP.tolerance(len(indices))
    )


def test_weighted_average_of_named_arrays_matches_fedavg() -> None:
    rng = np.random.default_rng(2)
    indices = [0, 1, 2, 3]
    keys = _keys(indices)
    publics = {i: k.public for i, k in keys.items()}
    updates = {
        i: {"coef_": rng.normal(size=(2, 3)), "intercept_": rng.normal(size=2)}
        for i in indices
    }
    weights = {0: 120.0, 1: 30.0, 2: 999.0, 3: 1.0}
    layout = layout_of(updates[0])
    context = MaskContext("run", 5)

    masked = [
        mask_weighted_update(
            i,
            keys[i].private,
            publics,
            flatten(updates[i], layout)[0],
            weights[i],
            context=context,
        )
        for i in indices
    ]
    mean, total_weight = unmask_weighted_average(masked)
    averaged = unflatten(mean, layout)

    expected = weighted_average([(updates[i], weights[i]) for i in indices])
    assert total_weight == sum(weights.values())
    for name in expected:
        np.testing.assert_allclose(averaged[name], expected[name], atol=1e-6)


def test_a_masked_update_does_not_correlate_with_the_true_update() -> None:
    rng = np.random.default_rng(3)
    n = 20_000
    keys = _keys([0, 1, 2])
    true = np.linspace(-100, 100, n) + rng.normal(
        0, 1, n
    )  # a strongly structured update
    vectors = {0: true, 1: rng.normal(size=n), 2: rng.normal(size=n)}

    first = _mask_all(keys, vectors, MaskContext("run", 1))[0].values
    again = _mask_all(keys, vectors, MaskContext("run", 2))[0].values

    as_unit = first.astype(np.float64) / 2.0**64
    r = np.corrcoef(as_unit, true)[0, 1]
    assert abs(r) < 0.05  # |r| ~ 1/sqrt(n) = 0.007 for independent vectors
    assert abs(as_unit.mean() - 0.5) < 0.01
    # The encoding alone is far from uniform: masking is what hides it.
    assert (
        abs(np.corrcoef(FP.encode(true).view(np.int64).astype(float), true)[0, 1])
        > 0.99
    )
    # The same update masked in another round shares nothing with the first.
    assert np.count_nonzero(first == again) < 5
    r_rounds = np.corrcoef(as_unit, again.astype(np.float64) / 2.0**64)[0, 1]
    assert abs(r_rounds) < 0.05


def test_a_dropped_silo_is_refused_and_the_retry_gives_the_right_sum() -> None:
    rng = np.random.default_rng(4)
    indices = [0, 1, 2, 3]
    keys = _keys(indices)
    vectors = {i: rng.normal(size=200) for i in indices}
    context = MaskContext("run", 7)
    masked = _mask_all(keys, vectors, context)
    survivors = [m for m in masked if m.silo_index != 2]  # silo 2 dropped after masking

    # The sum of what arrived is garbage: silo 2's masks do not cancel.
    garbage = FP.decode(modular_sum([m.values for m in survivors]))
    honest = sum(vectors[i] for i in (0, 1, 3))
    assert np.abs(garbage - honest).min() > 1.0
    # So unmasking refuses, naming the silo that is missing.
    assert missing_silos(survivors) == (2,)
    with pytest.raises(SiloDropoutError) as refused:
        unmask_sum(survivors)
    assert refused.value.missing == (2,)

    retry = context.next_attempt()
    roster = tuple(i for i in refused.value.roster if i not in refused.value.missing)
    retried_keys = {i: keys[i] for i in roster}
    retried = _mask_all(retried_keys, {i: vectors[i] for i in roster}, retry)

    assert roster == (0, 1, 3) and retry.attempt == 1
    np.testing.assert_allclose(unmask_sum(retried), honest, atol=FP.tolerance(3))


def test_inconsistent_masked_updates_are_refused() -> None:
    keys = _keys([0, 1, 2])
    vectors = {i: np.ones(4) for i in keys}
    round_one = _mask_all(keys, vectors, MaskContext("run", 1))
    round_two = _mask_all(keys, vectors, MaskContext("run", 2))

    with pytest.raises(SecureAggregationError, match="masked for"):
        unmask_sum([round_one[0], round_one[1], round_two[2]])
    with pytest.raises(SecureAggregationError, match="twice"):
        unmask_sum([round_one[0], round_one[0], round_one[1], round_one[2]])
    with pytest.raises(EmptyAggregationError):
        unmask_sum([])
    with pytest.raises(SecureAggregationError, match="without weights"):
        unmask_weighted_average(round_one)


def test_a_lone_silo_is_never_masked_in_the_clear() -> None:
    pair = generate_keypair()

    with pytest.raises(SecureAggregationError, match="at least two"):
        mask_update(
            0, pair.private, {0: pair.public}, np.ones(3), context=MaskContext("run", 1)
        )


def test_gbdt_histograms_sum_exactly_through_secure_aggregation() -> None:
    exponent = 38
    exact = FixedPoint.exact(exponent)
    rng = np.random.default_rng(5)
    keys = _keys([0, 1, 2])
    histograms = {
        i: {
            "grad": np.ldexp(
                np.rint(np.ldexp(rng.normal(size=(2, 3, 5)), exponent)), -exponent
            ),
            "hess": np.ldexp(
                np.rint(np.ldexp(rng.random((2, 3, 5)), exponent)), -exponent
            ),
        }
        for i in keys
    }
    layout = layout_of(histograms[0])
    vectors = {i: flatten(h, layout)[0] for i, h in histograms.items()}

    masked = _mask_all(keys, vectors, MaskContext("run", 1, step="tree0-level0"), exact)
    summed = unflatten(unmask_sum(masked, exact), layout)

    for name in ("grad", "hess"):
        np.testing.assert_array_equal(
            summed[name], sum(h[name] for h in histograms.values())
        )
