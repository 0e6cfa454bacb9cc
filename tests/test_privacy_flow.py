"""Privacy and robustness options through real rounds on silo workers."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedsilo.spec import FederationSpec, load_spec
from tasks import run_state
from tasks.store.checkpoints import CheckpointStore
from tests._stall import stall_silo

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_api")]


def _spec(data: Path, store: Path, address: str, **changes: Any) -> FederationSpec:
    spec = load_spec(data / "federation.yaml")
    return FederationSpec.model_validate(
        {
            **spec.model_dump(),
            "rounds": 3,
            "checkpoints": str(store),
            "cluster": {"address": address},
            **changes,
        }
    )


def _run(spec: FederationSpec, **kwargs: Any) -> tuple[dict[str, Any], list[Any]]:
    from flows.training import federated_training

    seen: list[Any] = []

    def listener(result: Any, state: Any) -> None:
        seen.append((result, list(state.last_updates)))

    with run_state.listening(listener):
        return federated_training(spec, **kwargs), seen


def _final(store: Path, spec: FederationSpec, run_id: str) -> dict[str, np.ndarray]:
    s = CheckpointStore(str(store), spec.name, run_id)
    return s.read_params(s.latest_complete_round() or 0)


def test_secure_aggregation_gives_fedavg_and_hides_every_update(
    breast_cancer_dir: Path, tmp_path: Path, shared_cluster: str
) -> None:
    plain = _spec(breast_cancer_dir, tmp_path / "store", shared_cluster)
    secure = _spec(
        breast_cancer_dir,
        tmp_path / "store",
        shared_cluster,
        privacy={"secure_aggregation": True},
    )

    a, _ = _run(plain, run_id="plain")
    b, seen = _run(secure, run_id="secure")

    expected, got = (
        _final(tmp_path / "store", plain, "plain"),
        _final(tmp_path / "store", secure, "secure"),
    )
    for name in ("coef_", "intercept_"):
        np.testing.assert_allclose(got[name], expected[name], atol=1e-5)
    for _, updates in seen:
        for update in updates:
            assert update.params == {}
            assert update.masked is not None and update.masked.values.dtype == np.uint64
    assert b["final_metrics"]["accuracy"] == pytest.approx(
        a["final_metrics"]["accuracy"], abs=0.01
    )


def test_dp_accounts_epsilon_every_round_and_stops_at_the_budget(
    breast_cancer_dir: Path, tmp_path: Path, shared_cluster: str
) -> None:
    from tasks.privacy.accountant import epsilon_spent

    dp = {"clip": 1.0, "noise_multiplier": 1.0, "delta": 1e-5}
    budget = epsilon_spent(1.0, 1.0, 2, 1e-5, sampling="fixed", population=4) + 1e-9
    spec = _spec(
        breast_cancer_dir,
        tmp_path / "store",
        shared_cluster,
        rounds=5,
        privacy={"dp": {**dp, "epsilon_budget": budget}},
    )

    summary, seen = _run(spec)

    assert summary["rounds"] == [1, 2]
    assert "privacy budget" in summary["stopped"]
    store = CheckpointStore(str(tmp_path / "store"), spec.name, summary["run_id"])
    eps = [
        store.read_metrics(r).query("metric == 'epsilon'").value.item() for r in (1, 2)
    ]
    assert 0 < eps[0] < eps[1] <= budget
    for _, updates in seen:
        for update in updates:
            norm = np.sqrt(sum(np.sum(a**2) for a in update.params.values()))
            assert norm <= 1.0 + 1e-9
            assert "t_" not in update.params


def test_secure_dp_with_adaptive_clipping_moves_the_clip(
    breast_cancer_dir: Path, tmp_path: Path, shared_cluster: str
) -> None:
    spec = _spec(
        breast_cancer_dir,
        tmp_path / "store",
        shared_cluster,
        privacy={
            "secure_aggregation": True,
            "dp": {
                "clip": 5.0,
                "noise_multiplier": 0.5,
                "adaptive": {"target_quantile": 0.5, "count_stddev": 1.0},
            },
        },
    )

    summary, _ = _run(spec)

    store = CheckpointStore(str(tmp_path / "store"), spec.name, summary["run_id"])
    clips = [
        store.read_metrics(r).query("metric == 'dp_clip'").value.item()
        for r in (1, 2, 3)
    ]
    assert len(set(clips)) == 3 and all(c > 0 for c in clips)


def test_distributed_noise_comes_from_the_silos_and_resuming_accounts_every_round(
    breast_cancer_dir: Path, tmp_path: Path, shared_cluster: str
) -> None:
    from tasks.privacy.accountant import fedavg_epsilon
    from tasks.privacy.secagg import unmask_sum

    z, delta = 1.0, 1e-5
    dp = {"clip": 1.0, "noise_multiplier": z, "delta": delta}
    store = tmp_path / "store"

    def spec(noise: str, rounds: int) -> FederationSpec:
        privacy = {"secure_aggregation": True, "dp": {**dp, "noise": noise}}
        return _spec(
            breast_cancer_dir, store, shared_cluster, rounds=rounds, privacy=privacy
        )

    # Seeded local training: round 1's clipped changes are the same in both
    # runs, and central noise is added after unmasking, so the central run's
    # unmasked sum is the clean sum.
    _, central = _run(spec("central", 1), run_id="central")
    _, shared = _run(spec("distributed", 2), run_id="shared")
    resumed, _ = _run(spec("distributed", 3), run_id="shared", resume=True)

    clean = unmask_sum([u.masked for u in central[0][1]])
    decoded = [unmask_sum([u.masked for u in updates]) for _, updates in shared]
    name = spec("distributed", 3).name
    checkpoints = CheckpointStore(str(store), name, "shared")
    # Every value the coordinator decodes carries the silos' noise, N(0, z^2)
    # per coordinate: |gap|^2 / z^2 is chi-square with d degrees of freedom,
    # below 0.09 d or above 4 d with probability under 1e-12 (d = 31).
    d = clean.size
    gap = float(np.linalg.norm(decoded[0] - clean))
    assert 0.3 * z * np.sqrt(d) < gap < 2.0 * z * np.sqrt(d)
    # ... and the coordinator adds none: round 2's model is round 1's plus
    # the decoded sum over the expected 4 silos.
    first, second = checkpoints.read_params(1), checkpoints.read_params(2)
    step = np.concatenate(
        [(second[n] - first[n]).ravel() for n in ("coef_", "intercept_")]
    )
    np.testing.assert_allclose(step, decoded[1] / 4, rtol=0, atol=1e-12)
    # Resumed at round 3 with new noise, the accountant counts all 3 rounds.
    assert resumed["rounds"] == [3]
    eps = [
        checkpoints.read_metrics(r).query("metric == 'epsilon'").value.item()
        for r in (1, 2, 3)
    ]
    assert eps == pytest.approx([fedavg_epsilon(z, r, delta) for r in (1, 2, 3)])
    assert resumed["epsilon"] == pytest.approx(eps[2])


OPTIONS = {"trimmed-mean": {"beta": 0.25}, "krum": {"byzantine": 0}}
OPTIONS["multi-krum"] = OPTIONS["krum"]


@pytest.mark.parametrize("kind", ["median", "trimmed-mean", "krum", "multi-krum"])
def test_robust_strategies_train_a_useful_model(
    kind: str, breast_cancer_dir: Path, tmp_path: Path, shared_cluster: str
) -> None:
    spec = _spec(
        breast_cancer_dir,
        tmp_path / "store",
        shared_cluster,
        strategy={"kind": kind, **OPTIONS.get(kind, {})},
    )

    summary, _ = _run(spec)

    assert summary["final_metrics"]["accuracy"] > 0.9


def test_norm_bound_rejects_and_records_far_updates(
    breast_cancer_dir: Path, tmp_path: Path, shared_cluster: str
) -> None:
    spec = _spec(
        breast_cancer_dir,
        tmp_path / "store",
        shared_cluster,
        rounds=1,
        strategy={"kind": "median", "norm_bound": 1e-9},
    )

    with pytest.raises(Exception, match="every update was rejected"):
        _run(spec)


def test_server_optimizer_resumes_to_the_same_model(
    breast_cancer_dir: Path, tmp_path: Path, shared_cluster: str
) -> None:
    opt = {"server_optimizer": {"kind": "fedadam", "learning_rate": 0.1}}
    spec = _spec(
        breast_cancer_dir,
        tmp_path / "store",
        shared_cluster,
        rounds=4,
        strategy={"kind": "fedavg", **opt},
    )
    _run(spec, run_id="straight")
    _run(spec.model_copy(update={"rounds": 2}), run_id="resumed")

    _run(spec, run_id="resumed", resume=True)

    a = _final(tmp_path / "store", spec, "straight")
    b = _final(tmp_path / "store", spec, "resumed")
    assert set(a) == set(b) and any(k.startswith("server/") for k in a)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


def test_secure_round_is_retried_without_a_silo_that_dropped(
    breast_cancer_dir: Path, tmp_path: Path, shared_cluster: str
) -> None:
    def stall(result: Any, state: Any) -> None:
        if result.round == 1:
            stall_silo(state.cluster.client, state.cluster.workers["silo-3"], 6.0)

    spec = _spec(
        breast_cancer_dir,
        tmp_path / "store",
        shared_cluster,
        rounds=2,
        privacy={"secure_aggregation": True},
        strategy={"kind": "fedavg", "min_silos": 3, "deadline": 2.0},
    )
    try:
        with run_state.listening(stall):
            summary, seen = _run(spec)
    finally:
        time.sleep(5)

    second, updates = seen[1]
    assert second.absent == {"silo-3": "late"}
    assert sorted(u.silo for u in updates) == ["silo-0", "silo-1", "silo-2"]
    assert {u.masked.roster for u in updates} == {(0, 1, 2)}
    assert {u.masked.context.attempt for u in updates} == {1}
    assert summary["final_metrics"]["accuracy"] > 0.9
