"""Crash and resume: a run killed with SIGKILL continues to the same final model."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from fedsilo.cli import main
from fedsilo.spec import load_spec
from tasks.store.checkpoints import CheckpointStore

ROUNDS = 8
CLI = (sys.executable, "-m", "fedsilo.cli")


def _spec_file(
    breast_cancer_dir: Path, tmp_path: Path, shared_cluster: str, **changes: Any
) -> Path:
    """Write the breast cancer spec attached to the shared cluster, under tmp_path."""
    spec = yaml.safe_load((breast_cancer_dir / "federation.yaml").read_text())
    for silo in spec["silos"]:
        for side in ("train", "test"):
            if silo.get(side):
                silo[side] = str((breast_cancer_dir / silo[side]).resolve())
    spec.update(
        {
            "rounds": ROUNDS,
            "cluster": {"address": shared_cluster},
            "checkpoints": str(tmp_path / "store"),
            **changes,
        }
    )
    path = tmp_path / "federation.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _store(tmp_path: Path, spec_path: Path, run_id: str) -> CheckpointStore:
    name = yaml.safe_load(spec_path.read_text())["name"]
    return CheckpointStore(str(tmp_path / "store"), name, run_id)


def _cli_env() -> dict[str, str]:
    from prefect.settings import PREFECT_API_URL

    return {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}


def _wait_for_round(store: CheckpointStore, round_number: int, proc: Any) -> None:
    """Poll until ``round_number`` is complete; fail if the process ends first."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if round_number in store.complete_rounds():
            return
        if proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(f"run ended before round {round_number}: {err[-2000:]}")
        time.sleep(0.05)
    pytest.fail(f"round {round_number} not complete within 240 s")


def _kill_group(proc: subprocess.Popen[str]) -> None:
    """SIGKILL the run and every process it started (its own session)."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


@pytest.mark.integration
@pytest.mark.slow
def test_sigkill_mid_round_then_resume_is_bit_identical(
    breast_cancer_dir: Path, tmp_path: Path, shared_cluster: str, prefect_api: None
) -> None:
    """Kill a real `fedsilo run` process mid-round; `fedsilo resume` finishes it."""
    spec_path = _spec_file(breast_cancer_dir, tmp_path, shared_cluster)
    crashed = _store(tmp_path, spec_path, "crashed")
    proc = subprocess.Popen(
        [*CLI, "run", str(spec_path), "--run-id", "crashed"],
        env=_cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _wait_for_round(crashed, 2, proc)
        # Somewhere inside round 3 (a round takes a few tenths of a second).
        time.sleep(random.Random(os.getpid()).uniform(0.0, 0.3))
    finally:
        _kill_group(proc)

    assert proc.returncode == -signal.SIGKILL
    done_before = crashed.complete_rounds()
    assert done_before[:2] == [1, 2]
    assert done_before[-1] < ROUNDS, "the run finished before it was killed"

    resumed = subprocess.run(
        [*CLI, "resume", "crashed", "--checkpoints", str(tmp_path / "store")],
        env=_cli_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"after round {done_before[-1]}" in resumed.stdout
    assert crashed.complete_rounds() == list(range(1, ROUNDS + 1))

    assert main(["run", str(spec_path), "--run-id", "straight"]) == 0
    straight = _store(tmp_path, spec_path, "straight")
    a, b = crashed.read_params(ROUNDS), straight.read_params(ROUNDS)
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype
        assert np.array_equal(a[name], b[name]), name
    metrics_a = crashed.read_metrics(ROUNDS).sort_values(["silo", "split", "metric"])
    metrics_b = straight.read_metrics(ROUNDS).sort_values(["silo", "split", "metric"])
    keep = ~metrics_a["metric"].isin(["fit_seconds"])
    assert np.array_equal(
        metrics_a[keep]["value"].to_numpy(),
        metrics_b[~metrics_b["metric"].isin(["fit_seconds"])]["value"].to_numpy(),
    )


@pytest.mark.integration
def test_run_resume_without_run_id_continues_the_newest_run(
    breast_cancer_dir: Path,
    tmp_path: Path,
    shared_cluster: str,
    prefect_api: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    spec_path = _spec_file(breast_cancer_dir, tmp_path, shared_cluster, rounds=3)
    assert main(["run", str(spec_path), "--rounds", "1", "--run-id", "a-older"]) == 0
    assert main(["run", str(spec_path), "--rounds", "1", "--run-id", "b-newer"]) == 0

    assert main(["run", str(spec_path), "--resume"]) == 0

    assert "resuming run b-newer" in capsys.readouterr().out
    assert _store(tmp_path, spec_path, "b-newer").complete_rounds() == [1, 2, 3]
    assert _store(tmp_path, spec_path, "a-older").complete_rounds() == [1]


@pytest.mark.integration
def test_a_cron_resume_of_a_run_not_started_yet_starts_it(
    breast_cancer_dir: Path,
    tmp_path: Path,
    shared_cluster: str,
    prefect_api: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    spec_path = _spec_file(breast_cancer_dir, tmp_path, shared_cluster, rounds=2)
    nightly = [str(spec_path), "--run-id", "nightly", "--resume"]

    assert main(["run", *nightly, "--rounds", "1"]) == 0  # the first night
    first = capsys.readouterr().out
    assert main(["run", *nightly]) == 0  # the second night continues it
    second = capsys.readouterr().out

    assert "run nightly has no complete round yet: starting it" in first
    assert "starting it" not in second
    spec = load_spec(spec_path)
    store = CheckpointStore(spec.checkpoints, spec.name, "nightly")
    assert store.complete_rounds() == [1, 2]


@pytest.mark.integration
def test_resume_refuses_a_changed_spec_and_unknown_runs(
    breast_cancer_dir: Path,
    tmp_path: Path,
    shared_cluster: str,
    prefect_api: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    spec_path = _spec_file(breast_cancer_dir, tmp_path, shared_cluster, rounds=1)
    assert main(["run", str(spec_path), "--run-id", "first"]) == 0
    capsys.readouterr()
    store = str(tmp_path / "store")

    assert main(["resume", "nope", "--checkpoints", store]) == 2
    assert "no complete round of run 'nope'" in capsys.readouterr().err

    other = _spec_file(breast_cancer_dir, tmp_path, shared_cluster, rounds=2, seed=7)
    assert main(["run", str(other), "--run-id", "first", "--resume"]) == 2
    assert "differs in seed" in capsys.readouterr().err
    assert main(["resume", "first", "--spec", str(other)]) == 2
    assert "differs in seed" in capsys.readouterr().err
    assert _store(tmp_path, spec_path, "first").complete_rounds() == [1]

    # More rounds and another scheduler address are allowed changes.
    assert main(["resume", "first", "--checkpoints", store, "--rounds", "2"]) == 0
    assert _store(tmp_path, spec_path, "first").complete_rounds() == [1, 2]


@pytest.mark.integration
def test_resuming_a_finished_run_does_nothing_and_fewer_rounds_are_refused(
    breast_cancer_dir: Path,
    tmp_path: Path,
    shared_cluster: str,
    prefect_api: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    spec_path = _spec_file(breast_cancer_dir, tmp_path, shared_cluster, rounds=2)
    store = str(tmp_path / "store")
    assert main(["run", str(spec_path), "--run-id", "done"]) == 0
    capsys.readouterr()

    assert main(["resume", "done", "--checkpoints", store]) == 0
    assert "already has its 2 rounds; nothing to do" in capsys.readouterr().out
    assert main(["resume", "done", "--checkpoints", store, "--rounds", "1"]) == 2
    assert "--rounds 1: run done already has 2 complete rounds" in (
        capsys.readouterr().err
    )
    assert _store(tmp_path, spec_path, "done").complete_rounds() == [1, 2]
