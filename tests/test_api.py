"""The Python API and the console: fedsilo.train, load_run, fedsilo runs, progress."""

from __future__ import annotations

import contextlib
import io
import os
import pty
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import duckdb
import pandas as pd
import pytest
import yaml

import fedsilo
from datasets.writer import write_federation
from fedsilo.api import TrainedRun, load_run, runs, train
from fedsilo.cli import main
from fedsilo.progress import RoundProgress
from tasks.run_state import RoundResult

RUN = "api-a"


@pytest.fixture(scope="module")
def spec_path(
    breast_cancer_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
    shared_cluster: str,
) -> Path:
    """The breast cancer spec (3 rounds) on the shared cluster, its own store."""
    where = tmp_path_factory.mktemp("api")
    spec = yaml.safe_load((breast_cancer_dir / "federation.yaml").read_text())
    for silo in spec["silos"]:
        for side in ("train", "test"):
            silo[side] = str((breast_cancer_dir / silo[side]).resolve())
    spec["cluster"] = {"address": shared_cluster}
    spec["checkpoints"] = str(where / "store")
    path = where / "federation.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def trained(spec_path: Path, prefect_api: None) -> tuple[TrainedRun, str]:
    """One run trained through fedsilo.train, and what it printed."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        run = fedsilo.train(spec_path, rounds=2, run_id=RUN)
    return run, printed.getvalue()


@pytest.mark.integration
def test_train_returns_metrics_model_and_checkpoint(
    trained: tuple[TrainedRun, str], spec_path: Path
) -> None:
    run, printed = trained
    store = yaml.safe_load(spec_path.read_text())["checkpoints"]

    assert isinstance(run, TrainedRun)
    assert (run.run_id, run.store, run.rounds) == (RUN, store, [1, 2])  # rounds=2
    assert list(run.metrics.columns) == [
        "round", "silo", "split", "metric", "value", "n_samples",
    ]  # fmt: skip
    assert sorted(run.metrics["round"].unique()) == [1, 2]
    assert Path(run.checkpoint, "_SUCCESS").exists()
    assert run.checkpoint.endswith("round=00002") and run.checkpoint.startswith(
        run.path
    )
    assert run.summary["run_id"] == RUN and run.summary["stopped"] is None
    assert run.curve.loc[2, "accuracy"] == run.summary["final_metrics"]["accuracy"]
    # Not a terminal: one plain line a round, as in a log file.
    lines = [line for line in printed.splitlines() if line.startswith("round")]
    assert [line.split()[1] for line in lines] == ["1/2", "2/2"]
    assert "\r" not in printed
    assert "accuracy" in repr(run) and RUN in repr(run)


@pytest.mark.integration
def test_the_model_scores_the_pooled_test_rows_as_the_federation_did(
    trained: tuple[TrainedRun, str], breast_cancer_dir: Path
) -> None:
    run, _ = trained
    test = pd.concat(
        pd.read_parquet(path)
        for path in sorted(breast_cancer_dir.glob("*/test.parquet"))
    )

    accuracy = run.model.score(
        test[run.model.feature_names_].to_numpy(), test["label"].to_numpy()
    )

    assert accuracy == pytest.approx(run.curve.loc[2, "accuracy"], abs=1e-12)


@pytest.mark.integration
def test_the_metrics_are_the_checkpoints_as_duckdb_reads_them(
    trained: tuple[TrainedRun, str],
) -> None:
    run, _ = trained
    read = duckdb.sql(
        f"""
        SELECT round, silo, split, metric, value, n_samples
        FROM read_parquet('{run.store}/federation=*/run=*/round=*/metrics.parquet',
            hive_partitioning = true,
            hive_types = {{'federation': VARCHAR, 'run': VARCHAR, 'round': INTEGER}})
        WHERE run = '{RUN}'
        """
    ).df()
    keys = ["round", "silo", "split", "metric"]

    ours = run.metrics.sort_values(keys, ignore_index=True)
    read = read.sort_values(keys, ignore_index=True)
    pd.testing.assert_frame_equal(ours, read, check_dtype=False)


@pytest.mark.integration
def test_load_run_reads_the_same_run_back(trained: tuple[TrainedRun, str]) -> None:
    run, _ = trained

    again = load_run(RUN, run.store)

    assert (again.checkpoint, again.rounds) == (run.checkpoint, run.rounds)
    pd.testing.assert_frame_equal(again.metrics, run.metrics)
    assert again.summary["final_metrics"] == run.summary["final_metrics"]


@pytest.mark.integration
def test_fedsilo_runs_lists_the_store(
    trained: tuple[TrainedRun, str], capsys: pytest.CaptureFixture[str]
) -> None:
    run, _ = trained

    assert main(["runs", run.store]) == 0

    header, line = capsys.readouterr().out.splitlines()
    assert header.split()[:4] == ["federation", "run", "rounds", "status"]
    accuracy = run.summary["final_metrics"]["accuracy"]
    assert line.split()[:4] == [run.federation, RUN, "2/2", "complete"]
    assert f"accuracy {accuracy:.4f}" in line
    frame = runs(run.store)
    assert frame[["run", "rounds_done", "status"]].values.tolist() == [
        [RUN, 2, "complete"]
    ]
    assert frame.loc[0, "accuracy"] == accuracy


@pytest.mark.integration
def test_runs_without_a_manifest_are_read_from_their_rounds(
    trained: tuple[TrainedRun, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, _ = trained
    old = tmp_path / "store"
    shutil.copytree(run.store, old)
    run_dir = old / f"federation={run.federation}" / f"run={RUN}"
    (run_dir / "manifest.parquet").unlink()  # as an earlier fedsilo wrote it
    shutil.rmtree(run_dir / "round=00002")  # and killed after round 1

    assert main(["runs", str(old), "--federation", run.federation]) == 0

    line = capsys.readouterr().out.splitlines()[1]
    assert line.split()[:4] == [run.federation, RUN, "1/2", "partial"]
    assert f"accuracy {run.curve.loc[1, 'accuracy']:.4f}" in line
    assert main(["runs", str(tmp_path / "nowhere")]) == 2


def _result(round_number: int, seconds: float) -> RoundResult:
    return RoundResult(
        round=round_number,
        selected=("a", "b"),
        silos=("a", "b"),
        metrics={"accuracy": 0.5 + round_number / 10},
        seconds=seconds,
        fit_workers={},
        eval_workers={},
        bytes_down=0,
        bytes_up=0,
        checkpoint="",
    )


def test_a_terminal_gets_one_bar_redrawn_in_place() -> None:
    run = SimpleNamespace(spec=SimpleNamespace(rounds=4))
    leader, follower = pty.openpty()
    with os.fdopen(follower, "w") as terminal:
        progress = RoundProgress(terminal)
        for number in (1, 2, 3, 4):
            progress(_result(number, 2.0), run)
        progress.close()
    shown = b""
    with contextlib.suppress(OSError):  # EIO once the follower side is closed
        while chunk := os.read(leader, 4096):
            shown += chunk
    os.close(leader)
    text = shown.decode()

    assert progress.bar
    assert text.count("\r") >= 4 and text.count("\n") == 1  # one line, ended once
    frames = [frame for frame in re.split(r"\r\n?", text) if frame.strip()]
    assert frames[0].startswith("[#####---------------] round    1/4  ~6s left")
    assert frames[-1].startswith("[####################] round    4/4")
    assert "left" not in frames[-1]


def test_a_pipe_gets_a_plain_line_a_round() -> None:
    run = SimpleNamespace(spec=SimpleNamespace(rounds=2))
    out = io.StringIO()
    progress = RoundProgress(out)

    progress(_result(1, 0.25), run)
    progress(_result(2, 0.5), run)
    progress.close()

    assert not progress.bar
    assert out.getvalue().splitlines() == [
        "round    1/2  silos 2/2  accuracy 0.6000  0.25s",
        "round    2/2  silos 2/2  accuracy 0.7000  0.50s",
    ]


@pytest.mark.integration
def test_a_cli_run_prints_a_line_a_round_and_no_dask_info(
    tmp_path: Path, prefect_api: None
) -> None:
    from prefect.settings import PREFECT_API_URL

    spec = write_federation(
        "breast_cancer", n_silos=2, partition="iid", out=tmp_path / "bc", rounds=2
    )
    body = yaml.safe_load(spec.read_text())
    spec.write_text(yaml.safe_dump({**body, "cluster": {"workers": 1}}))  # a process
    store = tmp_path / "store"
    env = {
        **os.environ,
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "FEDSILO_STATE_DIR": str(tmp_path / "state"),
    }

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedsilo",
            "run",
            str(spec),
            "--checkpoints",
            str(store),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )

    assert result.returncode == 0, result.stderr[-3000:]
    rounds = [
        line for line in result.stdout.splitlines() if re.match(r"round +\d+/", line)
    ]
    assert [line.split()[1] for line in rounds] == ["1/2", "2/2"]
    assert "\r" not in result.stdout
    said = result.stdout + result.stderr
    assert not re.search(r"distributed\.[\w.]+ - INFO", said), said[-3000:]
    assert "INFO" not in said  # Prefect's console logs too, without --verbose


def test_importing_fedsilo_loads_no_prefect_dask_or_pandas() -> None:
    code = (
        "import sys, fedsilo\n"
        "heavy = ('prefect', 'distributed', 'dask', 'pandas', 'fedsilo.api')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )

    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )

    assert result.stdout.splitlines() == ["[]"], result.stderr
    assert (fedsilo.train, fedsilo.load_run) == (train, load_run)  # given on first use
