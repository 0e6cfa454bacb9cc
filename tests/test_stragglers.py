"""A slow silo misses the round deadline: the round goes on without it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from fedsilo.errors import SiloFailedError
from fedsilo.spec import FederationSpec, load_spec
from tasks import run_state
from tasks.store.checkpoints import CheckpointStore
from tests._stall import stall_silo

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_api")]


def _spec(data: Path, store: Path, address: str, **strategy: Any) -> FederationSpec:
    spec = load_spec(data / "federation.yaml")
    return FederationSpec.model_validate(
        {
            **spec.model_dump(),
            "rounds": 3,
            "checkpoints": str(store),
            "cluster": {"address": address},
            "strategy": {"kind": "fedavg", **strategy},
        }
    )


def _stall(state: run_state.Run, silo: str, seconds: float) -> None:
    """Keep the silo's runtime busy for ``seconds``, as a slow silo would be."""
    stall_silo(state.cluster.client, state.cluster.workers[silo], seconds)


def test_late_silo_is_recorded_and_the_round_goes_on(
    breast_cancer_dir: Path, tmp_path: Path, shared_cluster: str
) -> None:
    from flows.training import federated_training

    seen: list[Any] = []

    def listener(result: Any, state: run_state.Run) -> None:
        seen.append(result)
        if result.round == 1:
            _stall(state, "silo-2", 8.0)

    spec = _spec(
        breast_cancer_dir, tmp_path / "store", shared_cluster, min_silos=3, deadline=2.0
    )
    with run_state.listening(listener):
        summary = federated_training(spec)

    assert seen[0].absent == {}
    assert seen[1].absent == {"silo-2": "late"}
    assert "silo-2" not in seen[1].silos and len(seen[1].silos) == 3
    metrics = CheckpointStore(
        str(tmp_path / "store"), spec.name, summary["run_id"]
    ).read_metrics(2)
    late = metrics[(metrics.metric == "late")]
    assert late.silo.tolist() == ["silo-2"] and late.value.tolist() == [1.0]


def test_too_few_answers_fail_naming_the_silo_and_keep_earlier_rounds(
    breast_cancer_dir: Path, tmp_path: Path, shared_cluster: str
) -> None:
    from flows.training import federated_training

    def listener(result: Any, state: run_state.Run) -> None:
        if result.round == 1:
            _stall(state, "silo-1", 8.0)

    spec = _spec(
        breast_cancer_dir, tmp_path / "store", shared_cluster, min_silos=4, deadline=2.0
    )
    with run_state.listening(listener):
        with pytest.raises(
            SiloFailedError, match=r"silo 'silo-1'.*deadline.*min_silos is 4"
        ):
            federated_training(spec, run_id="stalled")

    store = CheckpointStore(str(tmp_path / "store"), spec.name, "stalled")
    assert store.complete_rounds() == [1]
    assert set(store.read_params(1)) == {"coef_", "intercept_", "t_"}
    time.sleep(7)  # let the stalled worker finish before other tests use it
