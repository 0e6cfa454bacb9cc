"""Attacks on DP by a reader of the spec: replaying the noise and the silo sample.

The spec is a Prefect flow parameter and sits in every checkpoint's metadata,
seed included. When DP noise was drawn from ``default_rng([seed, round, ...])``
anyone holding a run's checkpoints regenerated it, subtracted it and had the
clean sum of the silos' clipped changes; two runs of one spec gave the same
"private" model. The attack below is that reader's: it uses the checkpoints
alone. It recovers the clean sum exactly from a model noised by the seeded
generator (the control: the attack works) and fails on real runs, whose noise
comes from the OS's CSPRNG.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedsilo.spec import FederationSpec, load_spec, parse_recorded_spec
from tasks import run_state
from tasks.averaging.combine import combine
from tasks.averaging.sampling import sample_silos, sample_size
from tasks.store.checkpoints import CheckpointStore

Z, CLIP, ROUNDS = 1.0, 1.0, 5
DP_SEED_LABEL = 0xD9  # what the seeded generator mixed in: [seed, round, 0xD9]
TENSORS = ("coef_", "intercept_")


def _spec(data: Path, store: Path, address: str) -> FederationSpec:
    spec = load_spec(data / "federation.yaml")
    return FederationSpec.model_validate(
        {
            **spec.model_dump(),
            "rounds": ROUNDS,
            "checkpoints": str(store),
            "cluster": {"address": address},
            "strategy": {"kind": "fedavg", "fraction": 0.5, "min_silos": 2},
            "privacy": {"dp": {"clip": CLIP, "noise_multiplier": Z}},
        }
    )


def _run(spec: FederationSpec, run_id: str) -> list[tuple[Any, list[Any]]]:
    from flows.training import federated_training

    seen: list[tuple[Any, list[Any]]] = []

    def listener(result: Any, state: Any) -> None:
        seen.append((result, list(state.last_updates)))

    with run_state.listening(listener):
        federated_training(spec, run_id=run_id)
    return seen


def replay_seeded_noise(
    store: CheckpointStore, round_number: int, after: dict[str, np.ndarray]
) -> np.ndarray:
    """The attack: the clean sum of a round's changes, from checkpoints alone.

    ``after`` is the round's model (a checkpoint's, or one the test made). The
    spec comes from the checkpoint's metadata; the model before is the previous
    round's checkpoint. The seeded generator's noise is regenerated in the order
    ``add_gaussian_noise`` drew it (tensors by sorted name) and subtracted.
    """
    recorded = json.loads(store.read_metadata(round_number)["fedsilo.spec"])
    spec = parse_recorded_spec(recorded, "<checkpoint>")
    dp = spec.privacy.dp
    assert dp is not None
    before = store.read_params(round_number - 1)
    strategy = spec.strategy
    m = sample_size(len(spec.silos), strategy.fraction, strategy.min_silos)
    rng = np.random.default_rng([spec.seed, round_number, DP_SEED_LABEL])
    noise = {
        name: rng.normal(0.0, dp.noise_multiplier * dp.clip, np.shape(before[name]))
        for name in sorted(TENSORS)
    }
    return np.concatenate(
        [(m * (after[n] - before[n]) - noise[n]).ravel() for n in TENSORS]
    )


def _clean_sum(updates: list[Any]) -> np.ndarray:
    """The sum of the clipped changes the silos sent (in the clear without SecAgg)."""
    return np.concatenate(
        [np.sum([u.params[n] for u in updates], axis=0).ravel() for n in TENSORS]
    )


@pytest.mark.integration
@pytest.mark.usefixtures("prefect_api")
def test_the_spec_and_checkpoints_replay_neither_the_noise_nor_the_sample(
    breast_cancer_dir: Path, tmp_path: Path, shared_cluster: str
) -> None:
    spec = _spec(breast_cancer_dir, tmp_path / "store", shared_cluster)
    runs = {run_id: _run(spec, run_id) for run_id in ("first", "second")}
    stores = {
        run_id: CheckpointStore(str(tmp_path / "store"), spec.name, run_id)
        for run_id in runs
    }
    dp = spec.privacy.dp
    assert dp is not None

    # (a) One spec, two runs, two different models (the noise of the mean has
    # std z * clip / 2 per value: equal models are out of the question).
    a, b = (stores[r].read_params(ROUNDS) for r in runs)
    assert np.linalg.norm(a["coef_"] - b["coef_"]) > 0.1

    # (b) The control: noised by the seeded generator, the model gives the
    # attacker the clean sum to rounding.
    store, seen = stores["first"], runs["first"]
    before = {
        k: v for k, v in store.read_params(1).items() if not k.startswith("server/")
    }
    result, updates = seen[1]  # round 2
    seeded = combine(
        updates,
        before,
        spec.strategy,
        dp=dp,
        clip=CLIP,
        expected_silos=len(result.selected),
        rng=np.random.default_rng([spec.seed, 2, DP_SEED_LABEL]),
    ).params
    np.testing.assert_allclose(
        replay_seeded_noise(store, 2, seeded), _clean_sum(updates), atol=1e-9
    )

    # ... and against the runs it fails in every round: what it is left with
    # is off the clean sum by the difference of two independent N(0, z^2 clip^2)
    # vectors, whose norm is below 0.3 z clip sqrt(d) with probability < 1e-15.
    for run_id, rounds in runs.items():
        for result, updates in rounds[1:]:
            recovered = replay_seeded_noise(
                stores[run_id], result.round, stores[run_id].read_params(result.round)
            )
            clean = _clean_sum(updates)
            gap = float(np.linalg.norm(recovered - clean))
            assert gap > 0.3 * Z * CLIP * np.sqrt(clean.size), (run_id, result.round)

    # The sample: the seed predicts the sample of a run without DP; the DP runs
    # drew theirs from the CSPRNG. 2 of 4 silos a round, 10 rounds: all ten
    # equal to the prediction with probability 6**-10.
    names = [s.name for s in spec.silos]
    predicted = [
        tuple(sample_silos(names, 0.5, 2, spec.seed, r)) for r in range(1, ROUNDS + 1)
    ]
    assert predicted == [
        tuple(sample_silos(names, 0.5, 2, spec.seed, r)) for r in range(1, ROUNDS + 1)
    ]
    drawn = [result.selected for rounds in runs.values() for result, _ in rounds]
    assert len(drawn) == 2 * ROUNDS
    assert drawn != predicted * 2
