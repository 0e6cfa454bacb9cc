"""Server optimisers on the pseudo-gradient (Reddi et al. 2021) and FedProx maths."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedsilo.errors import InconsistentUpdatesError
from tasks.averaging.server_optimizers import (
    OPTIMIZERS,
    FedAdagrad,
    FedAdam,
    FedAvgM,
    FedYogi,
    make_server_optimizer,
)

VALUES = st.floats(-100, 100, allow_nan=False, allow_infinity=False)


def _params(w: list[float], b: float = 0.0) -> dict[str, np.ndarray]:
    return {"coef_": np.array([w]), "intercept_": np.array([b])}


@settings(max_examples=50, deadline=None)
@given(
    current=hnp.arrays(np.float64, 4, elements=VALUES),
    aggregated=hnp.arrays(np.float64, 4, elements=VALUES),
)
def test_fedavgm_without_momentum_at_rate_one_is_fedavg(
    current: np.ndarray, aggregated: np.ndarray
) -> None:
    optimizer = FedAvgM({"w": current}, learning_rate=1.0, momentum=0.0)

    new = optimizer.step({"w": current}, {"w": aggregated})

    np.testing.assert_allclose(new["w"], aggregated, atol=1e-12)


def test_fedavgm_accumulates_momentum() -> None:
    optimizer = FedAvgM({"w": np.zeros(1)}, learning_rate=1.0, momentum=0.5)

    first = optimizer.step({"w": np.array([0.0])}, {"w": np.array([1.0])})
    second = optimizer.step(first, {"w": first["w"] + 1.0})

    assert first["w"][0] == 1.0  # v = 1
    assert second["w"][0] == 2.5  # v = 0.5 * 1 + 1


@pytest.mark.parametrize(
    ("cls", "expected_v"),
    [
        (FedAdagrad, 1e-6 + 4.0),
        (FedAdam, 0.99 * 1e-6 + 0.01 * 4.0),
        (FedYogi, 1e-6 - 0.01 * 4.0 * np.sign(1e-6 - 4.0)),
    ],
)
def test_adaptive_first_step_follows_reddi_et_al(cls: type, expected_v: float) -> None:
    optimizer = cls(
        {"w": np.zeros(1)}, learning_rate=0.1, beta1=0.9, beta2=0.99, tau=1e-3
    )

    new = optimizer.step({"w": np.array([1.0])}, {"w": np.array([3.0])})  # delta = 2

    m = 0.1 * 2.0
    expected = 1.0 + 0.1 * m / (np.sqrt(expected_v) + 1e-3)
    assert new["w"][0] == pytest.approx(expected)
    assert optimizer.state["v"]["w"][0] == pytest.approx(expected_v)
    assert optimizer.state["m"]["w"][0] == pytest.approx(m)


@pytest.mark.parametrize("kind", sorted(OPTIMIZERS))
def test_every_optimiser_moves_along_the_silos_change(kind: str) -> None:
    # Sign convention: delta = aggregated - current; the pseudo-gradient is -delta.
    optimizer = make_server_optimizer(kind, _params([0.0, 0.0]))  # type: ignore[arg-type]
    current = _params([1.0, -1.0], 0.5)
    aggregated = _params([2.0, -3.0], 0.5)

    new = optimizer.step(current, aggregated)

    assert np.all(np.sign(new["coef_"] - current["coef_"]) == [[1.0, -1.0]])
    assert new["intercept_"][0] == 0.5


@pytest.mark.parametrize("kind", sorted(OPTIMIZERS))
def test_server_optimisers_converge_on_a_quadratic(kind: str) -> None:
    # Silos each take one gradient step on ||w - target||^2 / 2 from the global w.
    target = np.array([3.0, -2.0, 0.5])
    w = {"w": np.zeros(3)}
    rates = {"fedavgm": 0.5, "fedadagrad": 0.5, "fedadam": 0.05, "fedyogi": 0.05}
    optimizer = make_server_optimizer(kind, w, learning_rate=rates[kind])  # type: ignore[arg-type]

    for _ in range(400):
        aggregated = {"w": w["w"] - 0.1 * (w["w"] - target)}
        w = optimizer.step(w, aggregated)

    np.testing.assert_allclose(w["w"], target, atol=0.05)


@pytest.mark.parametrize("kind", sorted(OPTIMIZERS))
def test_state_round_trips_and_resume_is_exact(kind: str) -> None:
    rng = np.random.default_rng(0)
    initial = _params([0.0, 0.0, 0.0])
    steps = [
        (_params(list(rng.normal(size=3))), _params(list(rng.normal(size=3))))
        for _ in range(6)
    ]
    straight = make_server_optimizer(kind, initial)  # type: ignore[arg-type]
    first = make_server_optimizer(kind, initial)  # type: ignore[arg-type]

    outputs = [straight.step(c, a) for c, a in steps]
    for c, a in steps[:3]:
        first.step(c, a)
    saved = first.state_dict()
    resumed = make_server_optimizer(kind, initial)  # type: ignore[arg-type]
    resumed.load_state_dict(saved)
    tail = [resumed.step(c, a) for c, a in steps[3:]]

    assert int(saved["rounds"]) == 3 and resumed.rounds == 6
    assert all(isinstance(v, np.ndarray) for v in saved.values())
    for got, want in zip(tail, outputs[3:], strict=True):
        for name in want:
            np.testing.assert_array_equal(got[name], want[name])


def test_excluded_tensors_pass_through_like_fedavg() -> None:
    initial = {"coef_": np.zeros((1, 2)), "t_": np.array(1.0)}
    optimizer = FedAdam(initial, exclude={"t_"})

    new = optimizer.step(initial, {"coef_": np.ones((1, 2)), "t_": np.array(501.0)})

    assert float(new["t_"]) == 501.0
    assert "m/t_" not in optimizer.state_dict()


def test_mismatched_models_and_states_are_named_errors() -> None:
    optimizer = FedYogi(_params([0.0]))

    with pytest.raises(InconsistentUpdatesError, match="tensors"):
        optimizer.step({"coef_": np.zeros((1, 1))}, _params([1.0]))
    with pytest.raises(InconsistentUpdatesError, match="shape"):
        optimizer.step(_params([0.0, 0.0]), _params([1.0, 1.0]))
    with pytest.raises(InconsistentUpdatesError, match="state"):
        optimizer.load_state_dict({"rounds": np.array(1)})
    with pytest.raises(ValueError, match="unknown server optimiser"):
        make_server_optimizer("sgd", _params([0.0]))  # type: ignore[arg-type]
