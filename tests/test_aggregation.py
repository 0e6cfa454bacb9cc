"""Tests of the aggregation maths: hypothesis properties and named errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedsilo.errors import EmptyAggregationError, InconsistentUpdatesError
from tasks.averaging.weighted import check_compatible, weighted_average

Update = tuple[dict[str, np.ndarray], float]

SHAPES = {"coef_": (2, 3), "intercept_": (2,), "t_": ()}
VALUES = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=64)
WEIGHTS = st.floats(1e-3, 1e4, allow_nan=False, allow_infinity=False)


@st.composite
def updates(draw: st.DrawFn, min_size: int = 1, max_size: int = 6) -> list[Update]:
    """Draw updates sharing names and shapes, each with a positive weight."""
    n = draw(st.integers(min_size, max_size))
    out = []
    for _ in range(n):
        params = {
            name: draw(hnp.arrays(np.float64, shape, elements=VALUES))
            for name, shape in SHAPES.items()
        }
        out.append((params, draw(WEIGHTS)))
    return out


def _close(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        assert np.shape(a[name]) == np.shape(b[name])
        np.testing.assert_allclose(a[name], b[name], rtol=1e-9, atol=1e-9)


def _params(**arrays: object) -> dict[str, np.ndarray]:
    return {name: np.asarray(value, dtype=np.float64) for name, value in arrays.items()}


# --- properties --------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(results=updates(min_size=2), data=st.data())
def test_order_of_updates_does_not_matter(
    results: list[Update], data: st.DataObject
) -> None:
    shuffled = data.draw(st.permutations(results))

    _close(weighted_average(shuffled), weighted_average(results))


@settings(max_examples=60, deadline=None)
@given(results=updates(), factor=st.floats(1e-3, 1e3))
def test_scaling_all_weights_changes_nothing(
    results: list[Update], factor: float
) -> None:
    scaled = [(params, weight * factor) for params, weight in results]

    _close(weighted_average(scaled), weighted_average(results))


@settings(max_examples=60, deadline=None)
@given(results=updates(min_size=1, max_size=1), weights=st.lists(WEIGHTS, max_size=5))
def test_identical_updates_return_that_update(
    results: list[Update], weights: list[float]
) -> None:
    params, weight = results[0]
    same = [(params, w) for w in [weight, *weights]]

    averaged = weighted_average(same)

    assert sorted(averaged) == sorted(params)
    for name, value in params.items():
        assert np.array_equal(averaged[name], value)  # exact, not approximate


@settings(max_examples=60, deadline=None)
@given(results=updates())
def test_each_coordinate_within_inputs_range(results: list[Update]) -> None:
    averaged = weighted_average(results)

    for name in SHAPES:
        stacked = np.stack([params[name] for params, _ in results])
        assert np.all(averaged[name] >= stacked.min(axis=0))
        assert np.all(averaged[name] <= stacked.max(axis=0))


@settings(max_examples=60, deadline=None)
@given(results=updates())
def test_equals_manual_weighted_mean(results: list[Update]) -> None:
    weights = np.array([w for _, w in results])
    expected = {
        name: np.average(
            np.stack([params[name] for params, _ in results]), axis=0, weights=weights
        )
        for name in SHAPES
    }

    _close(weighted_average(results), expected)


@settings(max_examples=30, deadline=None)
@given(results=updates(min_size=2))
def test_zero_weight_update_is_ignored(results: list[Update]) -> None:
    junk = {name: np.full(shape, 1e6) for name, shape in SHAPES.items()}

    with_junk = weighted_average([*results, (junk, 0.0)])

    _close(with_junk, weighted_average(results))


def test_fedavg_by_sample_count() -> None:
    a = _params(w=[0.0, 10.0], b=[1.0])
    b = _params(w=[4.0, 20.0], b=[3.0])

    averaged = weighted_average([(a, 1), (b, 3)])

    assert np.allclose(averaged["w"], [3.0, 17.5])
    assert np.allclose(averaged["b"], [2.5])


def test_result_keeps_first_update_dtype_and_is_new_array() -> None:
    a = {"w": np.array([1.0, 2.0], dtype=np.float32)}
    b = {"w": np.array([3.0, 4.0], dtype=np.float32)}

    averaged = weighted_average([(a, 1.0), (b, 1.0)])

    assert averaged["w"].dtype == np.float32
    assert np.array_equal(averaged["w"], np.array([2.0, 3.0], dtype=np.float32))
    assert averaged["w"] is not a["w"]


# --- errors ------------------------------------------------------------------


def test_empty_input_raises() -> None:
    with pytest.raises(EmptyAggregationError):
        weighted_average([])


def test_check_compatible_empty_raises() -> None:
    with pytest.raises(EmptyAggregationError):
        check_compatible([])


def test_zero_total_weight_raises() -> None:
    a = _params(w=[1.0])

    with pytest.raises(EmptyAggregationError, match="zero"):
        weighted_average([(a, 0.0), (a, 0)])


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), float("-inf")])
def test_invalid_weight_raises(bad: float) -> None:
    a = _params(w=[1.0])
    b = _params(w=[2.0])

    with pytest.raises(InconsistentUpdatesError, match="weights") as info:
        weighted_average([(a, 2.0), (b, bad)])

    assert not isinstance(info.value, EmptyAggregationError)


def test_mismatched_names_raise() -> None:
    a = _params(coef_=[1.0], intercept_=[0.0])
    b = _params(coef_=[1.0], bias=[0.0])

    with pytest.raises(InconsistentUpdatesError, match="update 1") as info:
        weighted_average([(a, 1.0), (b, 1.0)])

    assert "bias" in info.value.reason


def test_missing_tensor_raises() -> None:
    a = _params(coef_=[1.0], intercept_=[0.0])
    b = _params(coef_=[1.0])

    with pytest.raises(InconsistentUpdatesError):
        weighted_average([(a, 1.0), (b, 1.0)])


@pytest.mark.parametrize(
    "other",
    [[[1.0, 2.0, 3.0]], [[1.0, 2.0], [3.0, 4.0]], [1.0, 2.0], 1.0],
    ids=["wider", "taller", "flat", "scalar"],
)
def test_mismatched_shapes_raise(other: object) -> None:
    a = _params(coef_=[[1.0, 2.0]])
    b = _params(coef_=other)

    with pytest.raises(InconsistentUpdatesError, match="coef_") as info:
        weighted_average([(a, 1.0), (a, 1.0), (b, 1.0)])

    assert "update 2" in info.value.reason


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_parameters_raise(bad: float) -> None:
    good = _params(w=[1.0, 2.0])
    poisoned = _params(w=[bad, 2.0])

    with pytest.raises(InconsistentUpdatesError):
        weighted_average([(good, 1.0), (poisoned, 1.0)])
