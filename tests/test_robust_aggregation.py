"""Robust aggregation: hypothesis properties, validation, and a poisoning experiment."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.special import expit

from fedsilo.errors import EmptyAggregationError, InconsistentUpdatesError
from fedsilo.spec import StrategySpec
from tasks.averaging.strategies import Update, strategy_for
from tasks.averaging.weighted import weighted_average
from tasks.robust.aggregation import (
    coordinate_median,
    krum,
    krum_scores,
    krum_select,
    multi_krum,
    trimmed_mean,
)
from tasks.robust.validation import Rejection, shapes_of, validate_updates

Params = dict[str, np.ndarray]
SHAPES = {"coef_": (2, 3), "intercept_": (2,)}
VALUES = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=64)
WEIGHTS = st.floats(1e-3, 1e4, allow_nan=False, allow_infinity=False)


@st.composite
def updates(draw: st.DrawFn, min_size: int = 1, max_size: int = 7) -> list[Params]:
    """Draw updates sharing names and shapes."""
    n = draw(st.integers(min_size, max_size))
    return [
        {
            name: draw(hnp.arrays(np.float64, shape, elements=VALUES))
            for name, shape in SHAPES.items()
        }
        for _ in range(n)
    ]


def _close(a: Params, b: Params) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-9, atol=1e-9)


def _in_range(result: Params, inputs: list[Params]) -> None:
    for name, value in result.items():
        stacked = np.stack([u[name] for u in inputs])
        assert np.all(value >= stacked.min(axis=0))
        assert np.all(value <= stacked.max(axis=0))


AGGREGATORS: dict[str, Callable[[list[Params], list[float] | None], Params]] = {
    "median": lambda u, w: coordinate_median(u, w),
    "trimmed-mean": lambda u, w: trimmed_mean(u, 0.2, w),
    "multi-krum": lambda u, w: multi_krum(u, f=0, m=len(u), weights=w),
}


# --- properties --------------------------------------------------------------


@pytest.mark.parametrize("method", sorted(AGGREGATORS))
@settings(max_examples=40, deadline=None)
@given(
    batch=updates(min_size=3),
    weights=st.lists(WEIGHTS, min_size=7, max_size=7),
    data=st.data(),
)
def test_order_of_updates_does_not_matter(
    method: str, batch: list[Params], weights: list[float], data: st.DataObject
) -> None:
    aggregate = AGGREGATORS[method]
    w = weights[: len(batch)]
    order = data.draw(st.permutations(range(len(batch))))

    shuffled = aggregate([batch[i] for i in order], [w[i] for i in order])

    _close(shuffled, aggregate(batch, w))


@pytest.mark.parametrize("method", sorted(AGGREGATORS))
@settings(max_examples=40, deadline=None)
@given(
    batch=updates(min_size=3),
    weights=st.lists(WEIGHTS, min_size=7, max_size=7),
    factor=st.floats(1e-3, 1e3),
)
def test_scaling_every_weight_changes_nothing(
    method: str, batch: list[Params], weights: list[float], factor: float
) -> None:
    aggregate = AGGREGATORS[method]
    w = weights[: len(batch)]

    _close(aggregate(batch, [x * factor for x in w]), aggregate(batch, w))


@pytest.mark.parametrize("method", [*sorted(AGGREGATORS), "krum"])
@settings(max_examples=40, deadline=None)
@given(batch=updates(min_size=1, max_size=1), copies=st.integers(3, 7))
def test_identical_updates_return_that_update(
    method: str, batch: list[Params], copies: int
) -> None:
    same = batch * copies

    result = krum(same, f=0) if method == "krum" else AGGREGATORS[method](same, None)

    for name, value in batch[0].items():
        np.testing.assert_array_equal(result[name], value)


@pytest.mark.parametrize("method", sorted(AGGREGATORS))
@settings(max_examples=40, deadline=None)
@given(batch=updates(min_size=3), weights=st.lists(WEIGHTS, min_size=7, max_size=7))
def test_each_coordinate_stays_within_the_inputs(
    method: str, batch: list[Params], weights: list[float]
) -> None:
    _in_range(AGGREGATORS[method](batch, weights[: len(batch)]), batch)
    _in_range(AGGREGATORS[method](batch, None), batch)


@settings(max_examples=40, deadline=None)
@given(batch=updates(min_size=3))
def test_equal_weights_give_the_plain_median(batch: list[Params]) -> None:
    weighted = coordinate_median(batch, [2.5] * len(batch))

    for name in SHAPES:
        expected = np.median(np.stack([u[name] for u in batch]), axis=0)
        np.testing.assert_allclose(weighted[name], expected, rtol=1e-12, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(batch=updates(min_size=5), data=st.data())
def test_krum_returns_an_input_independent_of_order(
    batch: list[Params], data: st.DataObject
) -> None:
    scores = krum_scores(batch, f=1)
    assume(np.sum(scores == scores.min()) == 1)
    order = data.draw(st.permutations(range(len(batch))))

    chosen = krum(batch, f=1)

    assert any(all(np.array_equal(chosen[k], u[k]) for k in SHAPES) for u in batch)
    _close(krum([batch[i] for i in order], f=1), chosen)


def test_weighted_median_follows_the_weight() -> None:
    batch = [{"w": np.array([v])} for v in (1.0, 2.0, 10.0)]

    assert coordinate_median(batch, [1, 1, 5])["w"][0] == 10.0
    assert coordinate_median(batch, [5, 1, 1])["w"][0] == 1.0
    assert coordinate_median(batch, [1, 0, 1])["w"][0] == 5.5  # an exact tie


def test_trimmed_mean_drops_the_extremes() -> None:
    batch = [{"w": np.array([v])} for v in (-1e9, 1.0, 2.0, 3.0, 1e9)]

    assert trimmed_mean(batch, 0.2)["w"][0] == 2.0
    assert trimmed_mean(batch, 0.0)["w"][0] == pytest.approx(1.2)


def test_krum_needs_enough_updates_and_multi_krum_a_sensible_m() -> None:
    batch = [{"w": np.array([float(v)])} for v in range(4)]

    with pytest.raises(InconsistentUpdatesError, match="at least 5"):
        krum(batch, f=1)
    with pytest.raises(InconsistentUpdatesError, match="n - f"):
        krum_select(batch, f=0, m=5)
    with pytest.raises(EmptyAggregationError):
        coordinate_median([])
    with pytest.raises(EmptyAggregationError):
        coordinate_median(batch, [0, 0, 0, 0])
    with pytest.raises(InconsistentUpdatesError):
        coordinate_median([{"w": np.zeros(1)}, {"w": np.full(1, np.nan)}])


def test_multi_krum_leaves_out_the_outlier() -> None:
    batch = [{"w": np.array([v])} for v in (1.0, 1.1, 0.9, 1.05, 500.0)]

    assert 4 not in krum_select(batch, f=1, m=4)
    assert multi_krum(batch, f=1, m=4)["w"][0] == pytest.approx(1.0125)


# --- validation --------------------------------------------------------------


def test_validation_records_every_rejected_silo_with_its_reason() -> None:
    good = {"coef_": np.zeros((2, 3)), "intercept_": np.zeros(2)}
    updates_by_silo: dict[str, Params] = {
        "a": good,
        "b": {"coef_": np.zeros((3, 2)), "intercept_": np.zeros(2)},
        "c": {"coef_": np.full((2, 3), np.nan), "intercept_": np.zeros(2)},
        "d": {"coef_": np.zeros((2, 3))},
        "e": {"coef_": np.full((2, 3), 1e6), "intercept_": np.zeros(2)},
        "f": {"coef_": np.array([["x"] * 3] * 2), "intercept_": np.zeros(2)},
    }

    valid, rejected = validate_updates(
        updates_by_silo, shapes_of(good), norm_bound=10.0, center=good
    )

    assert list(valid) == ["a"]
    reasons = {r.silo: r.reason for r in rejected}
    assert "shape (3, 2), expected (2, 3)" in reasons["b"]
    assert "6 non-finite values" in reasons["c"]
    assert "missing ['intercept_']" in reasons["d"]
    assert "exceeds the bound 10" in reasons["e"]
    assert "not numeric" in reasons["f"]


def test_validation_measures_the_norm_of_the_change_and_refuses_duplicates() -> None:
    center = {"w": np.full(4, 100.0)}
    near = {"w": np.full(4, 101.0)}  # norm of the change: 2

    valid, rejected = validate_updates(
        [("a", near), ("a", near)], shapes_of(center), norm_bound=3.0, center=center
    )

    assert list(valid) == ["a"]
    assert rejected == [Rejection("a", "a second update from the same silo")]
    _, far = validate_updates({"b": near}, shapes_of(center), norm_bound=3.0)
    assert far and "L2 norm 202" in far[0].reason


# --- the poisoning experiment ------------------------------------------------


def _federation() -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    n, d = 6000, 20
    true_w = rng.normal(size=d)
    X = rng.normal(size=(n, d))
    y = (X @ true_w + rng.logistic(size=n) > 0).astype(np.float64)
    train, test = slice(0, 5000), slice(5000, n)
    parts = np.array_split(rng.permutation(5000), 5)
    return [(X[train][p], y[train][p]) for p in parts], X[test], y[test]


def _local_fit(global_params: Params, X: np.ndarray, y: np.ndarray) -> Params:
    w, b = global_params["coef_"][0].copy(), float(global_params["intercept_"][0])
    for _ in range(5):  # full-batch gradient descent on the logistic loss
        p = expit(X @ w + b)
        w -= 0.5 * X.T @ (p - y) / len(y)
        b -= 0.5 * float(np.mean(p - y))
    return {"coef_": w[None, :], "intercept_": np.array([b])}


def _accuracy(params: Params, X: np.ndarray, y: np.ndarray) -> float:
    margin = X @ params["coef_"][0] + params["intercept_"][0]
    return float(np.mean((margin > 0) == (y == 1)))


def _attack(kind: str, global_params: Params, honest: Params) -> Params:
    if kind == "nan":
        return {k: np.full_like(v, np.nan) for k, v in honest.items()}
    factor = {"scaled": 1e6, "sign-flip": -1.0}[kind]
    return {
        k: global_params[k] + factor * (honest[k] - global_params[k]) for k in honest
    }


def _run(method: str, attack: str | None, rounds: int = 20) -> tuple[float, list[str]]:
    silos, X_test, y_test = _federation()
    params: Params = {"coef_": np.zeros((1, 20)), "intercept_": np.zeros(1)}
    shapes = shapes_of(params)
    rejected_silos: list[str] = []
    for _ in range(rounds):
        replies = {
            f"silo-{i}": _local_fit(params, X, y) for i, (X, y) in enumerate(silos)
        }
        if attack is not None:
            replies["silo-4"] = _attack(attack, params, replies["silo-4"])
        valid, rejected = validate_updates(replies, shapes)
        rejected_silos += [r.silo for r in rejected]
        results = [(p, float(len(silos[int(s[-1])][1]))) for s, p in valid.items()]
        if method == "fedavg":
            params = weighted_average(results)
        else:
            # A rejected silo is one of the f faulty ones: fewer remain among the valid.
            strategy = strategy_for(StrategySpec(kind=method), rejected=len(rejected))
            pairs = zip(valid, results, strict=True)
            params = strategy.aggregate([Update(s, *pw) for s, pw in pairs], params)
    return _accuracy(params, X_test, y_test), rejected_silos


@pytest.fixture(scope="module")
def honest_accuracy() -> float:
    accuracy, rejected = _run("fedavg", None)
    assert not rejected and accuracy > 0.85
    return accuracy


@pytest.mark.parametrize("attack", ["nan", "scaled", "sign-flip"])
@pytest.mark.parametrize("method", ["median", "krum"])
def test_median_and_krum_survive_one_poisoning_silo_of_five(
    method: str, attack: str, honest_accuracy: float
) -> None:
    accuracy, rejected = _run(method, attack)

    assert accuracy >= honest_accuracy - 0.02
    assert rejected == (["silo-4"] * 20 if attack == "nan" else [])


def test_plain_fedavg_does_not_survive_the_scaled_update(
    honest_accuracy: float,
) -> None:
    accuracy, _ = _run("fedavg", "scaled")

    # The control: the attack that median and Krum absorb costs FedAvg more
    # than the 2 points they keep to.
    assert accuracy < honest_accuracy - 0.02


def test_trimmed_mean_breaks_ties_by_weight_not_arrival_order() -> None:
    """Equal values of different weight: the trimmed one must not depend on order."""
    ones, zeros = {"x": np.array([1.0])}, {"x": np.array([0.0])}
    batch = [ones, zeros, zeros, zeros, ones]
    weights = [1.0, 1.0, 2.0, 1.0, 1.0]
    order = [0, 2, 1, 3, 4]

    a = trimmed_mean(batch, 0.2, weights)
    b = trimmed_mean([batch[i] for i in order], 0.2, [weights[i] for i in order])

    np.testing.assert_array_equal(a["x"], b["x"])


# --- weighting: a silo's reported row count is its own word ------------------

HONEST = [{"x": np.array([1.0])}, {"x": np.array([1.1])}, {"x": np.array([0.9])}]
LIAR = {"x": np.array([-5.0])}


def _claims(liar_rows: float) -> list[Update]:
    honest = [Update(f"silo-{i}", p, 100.0) for i, p in enumerate(HONEST)]
    return [*honest, Update("liar", LIAR, liar_rows)]


@pytest.mark.parametrize(
    "strategy",
    [
        {"kind": "median"},
        {"kind": "trimmed-mean", "beta": 0.25},
        {"kind": "multi-krum", "byzantine": 0, "multi_krum_m": 2},
        {"kind": "krum", "byzantine": 0},
    ],
)
def test_a_silo_claiming_more_rows_gains_nothing_by_default(
    strategy: dict[str, object],
) -> None:
    chosen = strategy_for(StrategySpec.model_validate(strategy))
    glob = {"x": np.zeros(1)}

    truthful = chosen.aggregate(_claims(100.0), glob)
    boasting = chosen.aggregate(_claims(100.0 * 20), glob)

    _close(truthful, boasting)
    assert 0.9 <= float(boasting["x"][0]) <= 1.1


@pytest.mark.parametrize("kind", ["median", "trimmed-mean", "multi-krum"])
def test_weighting_by_rows_lets_the_boasting_silo_win_and_max_rows_caps_it(
    kind: str,
) -> None:
    extra = {"byzantine": 0, "multi_krum_m": 4} if kind == "multi-krum" else {}
    rows = strategy_for(StrategySpec(kind=kind, weighting="rows", **extra))
    capped = strategy_for(
        StrategySpec(kind=kind, weighting="rows", max_rows=100, **extra)
    )
    glob = {"x": np.zeros(1)}

    # 20x its rows: over half the weight, the lie decides the median.
    won = float(rows.aggregate(_claims(100.0 * 20), glob)["x"][0])
    held = float(capped.aggregate(_claims(100.0 * 20), glob)["x"][0])

    assert won < 0.0
    assert held > won
    if kind == "median":
        assert 0.9 <= held <= 1.1


def test_max_rows_needs_row_weighting_and_krum_takes_no_weighting() -> None:
    with pytest.raises(ValueError, match="give it with weighting: rows"):
        StrategySpec(kind="median", max_rows=100)
    with pytest.raises(ValueError, match="weighting"):
        StrategySpec(kind="krum", weighting="rows")
    assert StrategySpec(kind="trimmed-mean").weighting == "uniform"  # type: ignore[attr-defined]


def test_a_spec_recorded_before_weighting_existed_resumes_as_the_same_spec() -> None:
    from fedsilo.spec import parse_recorded_spec, parse_spec

    spec = {
        "name": "fed",
        "task": "classification",
        "target": "label",
        "rounds": 3,
        "silos": [{"name": f"s{i}", "train": f"/data/{i}.parquet"} for i in range(3)],
    }
    # What a checkpoint of a median run recorded: every kind's old fields, no
    # weighting (resume.check_same_federation compares public_dict()s).
    old = {"kind": "median", "beta": 0.1, "byzantine": 1, "multi_krum_m": None}

    back = parse_recorded_spec({**spec, "strategy": old}, "checkpoint")
    today = parse_spec({**spec, "strategy": {"kind": "median"}})

    assert back.strategy.weighting == "uniform"  # type: ignore[attr-defined]
    assert back.public_dict() == today.public_dict()
