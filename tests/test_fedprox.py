"""FedProx: the proximal local step, its step sizes, the spec and a real round."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedsilo.errors import SpecError
from fedsilo.spec import FederationSpec, load_spec, parse_spec
from tasks import run_state
from tasks.averaging.sklearn_models import (
    extract_params,
    materialise,
    mlp_step_sizes,
    proximal_shrink,
    sgd_step_sizes,
    train_local,
)
from tasks.store.checkpoints import CheckpointStore

N_FEATURES = 4
MODELS: dict[str, dict[str, Any]] = {
    "sgd-logistic": {"alpha": 0.001},
    "sgd-regressor": {"alpha": 0.0001, "eta0": 0.01},
    "mlp-classifier": {"hidden_layer_sizes": [5]},
    "mlp-regressor": {"hidden_layer_sizes": [5], "solver": "sgd"},
}
CLASSIFIERS = {"sgd-logistic", "mlp-classifier"}


def _rows(kind: str, n: int = 240, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, N_FEATURES))
    if kind in CLASSIFIERS:
        y = (X[:, 0] - X[:, 1] + 0.3 * rng.normal(size=n) > 0).astype(np.int64)
    else:
        y = X @ np.array([1.0, -2.0, 0.5, 0.0]) + 0.1 * rng.normal(size=n)
    return X, y


def _start(kind: str, params: dict[str, Any] | None = None) -> Any:
    return materialise(
        kind,
        params if params is not None else MODELS[kind],
        n_features=N_FEATURES,
        classes=(0, 1),
        seed=0,
    )


def _flat(params: dict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([np.ravel(v) for k, v in sorted(params.items()) if k != "t_"])


def _local(kind: str, mu: float, *, epochs: int = 3, batch_size: int = 16) -> Any:
    X, y = _rows(kind)
    estimator = _start(kind)
    train_local(
        kind,
        estimator,
        X,
        y,
        classes=(0, 1),
        epochs=epochs,
        batch_size=batch_size,
        rng=np.random.default_rng(1),
        proximal_mu=mu,
    )
    return estimator


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_zero_mu_is_plain_minibatch_training_bit_for_bit(kind: str) -> None:
    X, y = _rows(kind)
    reference = _start(kind)
    rng = np.random.default_rng(1)
    for _ in range(3):  # the local loop as it was before FedProx existed
        order = rng.permutation(len(X))
        for start in range(0, len(X), 16):
            rows = order[start : start + 16]
            if kind in CLASSIFIERS:
                reference.partial_fit(X[rows], y[rows], classes=np.array([0, 1]))
            else:
                reference.partial_fit(X[rows], y[rows])

    trained = _local(kind, 0.0)

    got, expected = extract_params(kind, trained), extract_params(kind, reference)
    assert got.keys() == expected.keys()
    for name in got:
        assert np.array_equal(got[name], expected[name]), name


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_distance_to_the_global_model_shrinks_as_mu_grows(kind: str) -> None:
    start = _flat(extract_params(kind, _start(kind)))
    mus = [0.0, 0.01, 0.1, 1.0, 10.0, 100.0]

    distances = [
        float(np.linalg.norm(_flat(extract_params(kind, _local(kind, mu))) - start))
        for mu in mus
    ]

    assert all(a > b for a, b in itertools.pairwise(distances))
    assert distances[-1] < 0.3 * distances[0]


@pytest.mark.parametrize(
    ("kind", "params", "dloss"),
    [
        ("sgd-regressor", {"learning_rate": "invscaling", "eta0": 0.05}, None),
        ("sgd-regressor", {"learning_rate": "optimal", "alpha": 0.01}, None),
        ("sgd-regressor", {"learning_rate": "constant", "eta0": 0.05}, None),
        ("sgd-regressor", {"learning_rate": "adaptive", "eta0": 0.05}, None),
        ("sgd-logistic", {"learning_rate": "optimal", "alpha": 0.01}, "log"),
        ("sgd-logistic", {"learning_rate": "invscaling", "eta0": 0.3}, "log"),
    ],
)
def test_sgd_step_sizes_are_the_ones_scikit_learn_takes(
    kind: str, params: dict[str, Any], dloss: str | None
) -> None:
    # With all-zero rows only the intercept moves: b <- b - eta_t * dloss(y, b).
    estimator = _start(kind, {**params, "shuffle": False})
    estimator.t_ = 7.0
    n = 6
    etas = sgd_step_sizes(estimator, n)
    intercept = 0.0
    for eta in etas:
        gradient = 1 / (1 + np.exp(-intercept)) - 1 if dloss else intercept - 1
        intercept -= eta * gradient

    X, y = np.zeros((n, N_FEATURES)), np.ones(n, dtype=np.int64)
    if kind in CLASSIFIERS:
        estimator.partial_fit(X, y, classes=np.array([0, 1]))
    else:
        estimator.partial_fit(X, y.astype(np.float64))

    assert estimator.intercept_[0] == pytest.approx(intercept, rel=1e-12)
    assert len(set(etas.tolist())) == (
        1 if params["learning_rate"] in {"constant", "adaptive"} else n
    )


def test_mlp_steps_follow_its_own_batches_and_learning_rate() -> None:
    estimator = _start(
        "mlp-regressor",
        {
            "hidden_layer_sizes": [3],
            "solver": "sgd",
            "learning_rate": "invscaling",
            "batch_size": 10,
        },
    )
    X, y = _rows("mlp-regressor", n=25)

    before = mlp_step_sizes(estimator, 25)
    estimator.partial_fit(X, y)
    after = mlp_step_sizes(estimator, 25)

    assert len(before) == 3  # ceil(25 / 10) optimiser steps
    assert before[0] == estimator.learning_rate_init
    assert after[0] == pytest.approx(
        estimator.learning_rate_init / (25 + 1) ** estimator.power_t
    )


def test_proximal_shrink_is_the_closed_form_prox() -> None:
    w, w_global, eta, mu = np.array([3.0, -1.0]), np.array([1.0, 1.0]), 0.2, 4.0
    closed_form = (w + eta * mu * w_global) / (1 + eta * mu)

    once = w_global + proximal_shrink(np.array([eta]), mu) * (w - w_global)
    twice = w_global + proximal_shrink(np.array([eta, eta]), mu) * (w - w_global)

    np.testing.assert_allclose(once, closed_form)
    again = (closed_form + eta * mu * w_global) / (1 + eta * mu)
    np.testing.assert_allclose(twice, again)
    assert proximal_shrink(np.array([eta]), 0.0) == 1.0


def _spec_data(**changes: Any) -> dict[str, Any]:
    return {
        "name": "prox",
        "task": "classification",
        "target": "label",
        "rounds": 1,
        "silos": [{"name": "a", "train": "a.parquet"}],
        **changes,
    }


def test_spec_takes_mu_and_defaults_to_fedavg() -> None:
    assert parse_spec(_spec_data()).local.proximal_mu == 0.0
    spec = parse_spec(_spec_data(local={"proximal_mu": 0.5, "batch_size": 32}))
    assert spec.local.proximal_mu == 0.5


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"model": {"kind": "logistic"}}, "L-BFGS"),
        (
            {"model": {"kind": "sgd-logistic", "params": {"learning_rate": "pa1"}}},
            "model.params.learning_rate",
        ),
        (
            {"model": {"kind": "sgd-logistic", "params": {"average": True}}},
            "model.params.average",
        ),
        (
            {"model": {"kind": "mlp-classifier", "params": {"solver": "lbfgs"}}},
            "model.params.solver",
        ),
        (
            {
                "task": "regression",
                "target": "y",
                "model": {
                    "kind": "xgboost",
                    "params": {"objective": "reg:squarederror"},
                },
            },
            "xgboost",
        ),
    ],
)
def test_spec_refuses_mu_where_no_proximal_step_exists(
    changes: dict[str, Any], words: str
) -> None:
    with pytest.raises(SpecError, match=r"local\.proximal_mu") as caught:
        parse_spec(_spec_data(local={"proximal_mu": 0.1}, **changes))
    assert words in str(caught.value)


def test_negative_mu_is_a_spec_error_naming_the_field() -> None:
    with pytest.raises(SpecError, match=r"local\.proximal_mu"):
        parse_spec(_spec_data(local={"proximal_mu": -1.0}))


def test_logistic_with_mu_is_refused_by_local_training_too() -> None:
    X, y = _rows("sgd-logistic")
    estimator = _start("logistic", {})
    with pytest.raises(SpecError, match=r"local\.proximal_mu"):
        train_local(
            "logistic",
            estimator,
            X,
            y,
            classes=(0, 1),
            epochs=1,
            batch_size=None,
            rng=np.random.default_rng(0),
            proximal_mu=0.1,
        )


@pytest.fixture(scope="module")
def dirichlet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Breast cancer dealt to the four shared silos with Dirichlet(0.3) label skew."""
    from datasets.writer import write_federation

    out = tmp_path_factory.mktemp("breast-cancer") / "dirichlet"
    write_federation(
        "breast_cancer", n_silos=4, partition="dirichlet", alpha=0.3, out=out
    )
    return out


def _train(spec: FederationSpec, run_id: str) -> tuple[dict[str, Any], list[Any]]:
    from flows.training import federated_training

    seen: list[Any] = []

    def listener(result: Any, state: Any) -> None:
        seen.append(list(state.last_updates))

    with run_state.listening(listener):
        return federated_training(spec, run_id=run_id), seen


@pytest.mark.integration
@pytest.mark.usefixtures("prefect_api")
def test_fedprox_round_on_label_skewed_silos(
    dirichlet_dir: Path, tmp_path: Path, shared_cluster: str
) -> None:
    base = load_spec(dirichlet_dir / "federation.yaml").model_dump()
    store = tmp_path / "store"

    def spec(mu: float, **changes: Any) -> FederationSpec:
        return FederationSpec.model_validate(
            {
                **base,
                "rounds": 2,
                "checkpoints": str(store),
                "cluster": {"address": shared_cluster},
                "local": {"epochs": 3, "batch_size": 16, "proximal_mu": mu},
                **changes,
            }
        )

    plain, plain_updates = _train(spec(0.0), "plain")
    prox, prox_updates = _train(spec(1.0), "prox")

    assert plain["rounds"] == prox["rounds"] == [1, 2]
    # Round 1 starts both runs from the same initial model (zeros for sgd-logistic),
    # so each silo's update norm is its distance from the global model.
    plain_norms = {u.silo: np.linalg.norm(u.params["coef_"]) for u in plain_updates[0]}
    prox_norms = {u.silo: np.linalg.norm(u.params["coef_"]) for u in prox_updates[0]}
    assert plain_norms.keys() == prox_norms.keys() == {s["name"] for s in base["silos"]}
    for silo, norm in prox_norms.items():
        assert norm < plain_norms[silo]
    assert prox["final_metrics"]["accuracy"] > 0.8
    recorded = CheckpointStore(str(store), base["name"], "prox").read_metadata(2)
    assert json.loads(recorded["fedsilo.spec"])["local"]["proximal_mu"] == 1.0

    private = {"secure_aggregation": True, "dp": {"clip": 2.0, "noise_multiplier": 0.5}}
    secure, _ = _train(spec(1.0, rounds=1, privacy=private), "prox-private")

    assert secure["rounds"] == [1]
    assert secure["epsilon"] is not None and secure["epsilon"] > 0
