"""A silo that flips its labels and claims 20x its rows cannot capture a robust run.

SECURITY.md promises that the robust strategies do not believe a silo's
self-reported size. The attack is real: breast cancer split over five silos,
``silo-4`` trains on flipped labels, and its worker is a separate process
whose silo runtime overstates every row count it reports by 20
(``tests/security/_boasting_silo.py``). Each run goes through ``fedsilo run``
on the shared cluster plus that worker; the accuracy of the honest silos'
test rows is read back from ``metrics.parquet`` with DuckDB. The control,
``weighting: rows``, believes the count and shows what the lie buys.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pytest
import yaml
from distributed import Client

from datasets.writer import write_federation

LIAR = "silo-4"
HONEST = ("silo-0", "silo-1", "silo-2", "silo-3")
ROUNDS = 5
ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_api")]


def _worker_names(client: Client) -> set[str]:
    workers = client.scheduler_info(n_workers=-1)["workers"]
    return {str(w["name"]) for w in workers.values()}


@pytest.fixture(scope="module")
def boasting_worker(
    shared_cluster: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """Join a worker named ``silo-4`` running the boasting runtime; stop it after."""
    log = tmp_path_factory.mktemp("liar") / "worker.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [
        *(sys.executable, "-m", "distributed.cli.dask_worker", shared_cluster),
        *("--name", LIAR, "--nthreads", "1", "--no-nanny", "--host", "127.0.0.1"),
        *("--no-dashboard", "--preload", "tests.security._boasting_silo"),
    ]
    with log.open("w") as out:
        proc = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        with Client(shared_cluster, set_as_default=False) as client:
            deadline = time.monotonic() + 120
            while LIAR not in _worker_names(client):
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the boasting worker did not join: {log.read_text()}")
                time.sleep(0.2)
        yield LIAR
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Breast cancer over five silos; the liar's training labels flipped."""
    out = tmp_path_factory.mktemp("liar-federation")
    write_federation("breast_cancer", n_silos=5, partition="iid", out=out)
    train = out / LIAR / "train.parquet"
    frame = pd.read_parquet(train)
    frame["label"] = 1 - frame["label"]
    frame.to_parquet(train, index=False)
    return out


def _run(
    federation: Path,
    store: Path,
    shared_cluster: str,
    strategy: dict[str, Any],
    silos: tuple[str, ...],
) -> float:
    """Run ``fedsilo run``; return the mean test accuracy of the honest silos."""
    from fedsilo.cli import main

    spec = yaml.safe_load((federation / "federation.yaml").read_text())
    spec["silos"] = [s for s in spec["silos"] if s["name"] in silos]
    spec["strategy"] = {**strategy, "min_silos": len(silos)}
    spec["cluster"] = {"address": shared_cluster}
    spec["rounds"] = ROUNDS
    path = federation / f"{store.name}.yaml"
    path.write_text(yaml.safe_dump(spec))

    assert main(["run", str(path), "--checkpoints", str(store)]) == 0

    names = ", ".join(f"'{s}'" for s in HONEST)
    ((accuracy,),) = duckdb.sql(
        f"""
        SELECT avg(value) FROM read_parquet('{store}/**/metrics.parquet',
                                            hive_partitioning = true)
        WHERE metric = 'accuracy' AND split = 'test' AND round = {ROUNDS}
          AND silo IN ({names})
        """
    ).fetchall()
    return float(accuracy)


@pytest.fixture(scope="module")
def honest_accuracy(
    federation: Path, shared_cluster: str, tmp_path_factory: pytest.TempPathFactory
) -> float:
    """The median of the four honest silos alone."""
    store = tmp_path_factory.mktemp("honest")
    accuracy = _run(federation, store, shared_cluster, {"kind": "median"}, HONEST)
    assert accuracy > 0.9
    return accuracy


@pytest.mark.parametrize(
    "strategy",
    [
        {"kind": "median"},
        {"kind": "trimmed-mean", "beta": 0.2},
        {"kind": "krum", "byzantine": 1},
        {"kind": "multi-krum", "byzantine": 1},
    ],
    ids=lambda s: s["kind"],
)
def test_a_boasting_label_flipper_cannot_capture_a_robust_strategy(
    strategy: dict[str, Any],
    federation: Path,
    shared_cluster: str,
    boasting_worker: str,
    honest_accuracy: float,
    tmp_path: Path,
) -> None:
    accuracy = _run(
        federation, tmp_path / "store", shared_cluster, strategy, (*HONEST, LIAR)
    )

    assert accuracy >= honest_accuracy - 0.05


def test_believing_the_row_count_hands_the_median_to_the_liar(
    federation: Path,
    shared_cluster: str,
    boasting_worker: str,
    honest_accuracy: float,
    tmp_path: Path,
) -> None:
    """The control: weighted by reported rows, the liar holds most of the weight."""
    strategy = {"kind": "median", "weighting": "rows"}

    accuracy = _run(
        federation, tmp_path / "store", shared_cluster, strategy, (*HONEST, LIAR)
    )

    assert accuracy < 0.5 < honest_accuracy - 0.05
