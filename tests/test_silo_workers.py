"""Silos as real workers: `fedsilo worker` processes that hold their own data config.

A `dask scheduler` and one `fedsilo worker` per silo run as separate processes on
127.0.0.1, each silo with its own data directory; the central spec names the
silos only.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pytest
import yaml

from connectors.silo_config import SiloConfig, SiloConfigError, load_silo_config
from connectors.sql import SqlSource
from fedsilo.errors import ClusterError, SiloDataError, SiloFailedError
from fedsilo.spec import FederationSpec
from tasks import run_state
from tasks.protocol.messages import SiloSchema
from tasks.silo.data import SiloSource, load_silo
from tasks.silo.runtime import SiloRuntime, worker_silo_config
from tasks.store.checkpoints import CheckpointStore

SILOS = ("silo-0", "silo-1", "silo-2")
TOKEN = "tok-Only-At-The-Silo-77"  # a credential that must never leave silo-0
# The scheduler fails a task pinned to a worker that is gone after this long (as
# docs/silos.md recommends), so a killed silo is noticed in seconds; the silo
# timeout is only a backstop and can be generous for a loaded machine.
NO_WORKERS_TIMEOUT = "2s"
SILO_TIMEOUT = 60


# --- the silo config ----------------------------------------------------------


def test_silo_config_resolves_paths_against_its_file(tmp_path: Path) -> None:
    (tmp_path / "train.parquet").touch()
    path = tmp_path / "silo.yaml"
    path.write_text(
        "train: train.parquet\n"
        "test: {url: 'sqlite:///db/silo.db', query: SELECT * FROM t}\n"
        "test_fraction: 0.3\nstorage_options: {anon: true}\n"
    )

    config = load_silo_config(path)

    assert config.train == str(tmp_path / "train.parquet")
    assert isinstance(config.test, SqlSource)
    assert config.test.url == f"sqlite:///{tmp_path / 'db' / 'silo.db'}"
    assert config.test_fraction == 0.3 and config.storage_options == {"anon": True}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("train: t.parquet\ntrian: x\n", "silo.yaml: trian: unknown key"),
        ("test: t.parquet\n", "silo.yaml: train: Field required"),
        ("train: {url: 'sqlite:///a.db'}\n", "train.sql: give exactly one of"),
        ("train: missing.parquet\n", "silo.yaml: train: no such file"),
        ("train: t.parquet\ntest_fraction: 2\n", "silo.yaml: test_fraction:"),
        ("- a\n", "silo.yaml: expected a mapping"),
        ("train: [\n", "silo.yaml: line 2, column 1: invalid YAML"),
    ],
)
def test_silo_config_errors_name_file_and_field(
    tmp_path: Path, text: str, message: str
) -> None:
    (tmp_path / "t.parquet").touch()
    path = tmp_path / "silo.yaml"
    path.write_text(text)

    with pytest.raises(SiloConfigError) as caught:
        load_silo_config(path)

    assert message in caught.value.reason


def test_the_silo_runtime_holding_a_config_refuses_to_be_pickled() -> None:
    plugin = SiloRuntime("a", SiloConfig(train="/srv/a.parquet"))

    with pytest.raises(TypeError, match="stays in its worker"):
        pickle.dumps(plugin)


def test_no_train_source_and_no_config_names_the_silo() -> None:
    assert worker_silo_config("hospital-a") is None

    with pytest.raises(SiloDataError) as caught:
        load_silo(SiloSource("hospital-a", None, None, 0.2, {}), "label", 0)

    assert caught.value.silo == "hospital-a"
    assert "no silo config" in caught.value.reason


@pytest.mark.integration
def test_silos_named_only_on_plain_workers_fail_naming_the_silo(
    tmp_path: Path, shared_cluster: str, prefect_api: None
) -> None:
    from flows.training import federated_training

    spec = FederationSpec.model_validate(
        {
            "name": "names-only",
            "task": "classification",
            "target": "label",
            "rounds": 1,
            "silos": [{"name": s} for s in ("silo-0", "silo-1")],
            "cluster": {"address": shared_cluster},
            "checkpoints": str(tmp_path / "store"),
        }
    )

    with pytest.raises(SiloDataError, match=r"silo 'silo-0'.*no silo config"):
        federated_training(spec)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedsilo.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("config", "silo", "message"),
    [
        ("train: t.parquet\nextra: 1\n", "silo-0", "silo.yaml: extra: unknown key"),
        ("train: gone.parquet\n", "silo-0", "train: no such file"),
        ("train: t.parquet\n", "bad name!", "--silo 'bad name!'"),
    ],
)
def test_worker_cli_refuses_a_bad_config_in_one_line(
    tmp_path: Path, config: str, silo: str, message: str
) -> None:
    (tmp_path / "t.parquet").touch()
    (tmp_path / "silo.yaml").write_text(config)

    result = run_cli(
        "worker",
        "--scheduler",
        "tcp://127.0.0.1:9",
        "--silo",
        silo,
        "--data",
        str(tmp_path / "silo.yaml"),
    )

    assert result.returncode == 2, result.stderr
    (line,) = [x for x in result.stderr.splitlines() if x.strip()]
    assert line.startswith("fedsilo: error: ") and message in line


def test_worker_cli_names_an_unreachable_scheduler(tmp_path: Path) -> None:
    (tmp_path / "t.parquet").touch()
    (tmp_path / "silo.yaml").write_text("train: t.parquet\n")

    result = run_cli(
        "worker",
        "--scheduler",
        "tcp://127.0.0.1:9",
        "--silo",
        "silo-0",
        "--data",
        str(tmp_path / "silo.yaml"),
        "--timeout",
        "2",
    )

    assert result.returncode == 2
    assert "cannot join the Dask scheduler at tcp://127.0.0.1:9" in result.stderr


# --- separate processes: a scheduler and three silo workers -------------------


@dataclass
class SiloFederation:
    """A running scheduler and silo workers, and where each silo keeps its rows."""

    address: str
    sites: dict[str, Path]
    workers: dict[str, subprocess.Popen[bytes]]
    private: list[str] = field(default_factory=list)
    start_worker: Callable[[str], subprocess.Popen[bytes]] | None = None

    def kill(self, silo: str) -> None:
        self.workers[silo].send_signal(signal.SIGKILL)
        self.workers[silo].wait(timeout=10)

    def restart(self, silo: str) -> None:
        """Start the silo's worker again, as its owner would; wait until it joined."""
        from distributed import Client

        assert self.start_worker is not None
        self.workers[silo] = self.start_worker(silo)
        with Client(self.address, timeout=60) as client:
            deadline = time.monotonic() + 120
            while silo not in {
                str(w["name"]) for w in client.scheduler_info()["workers"].values()
            }:
                assert time.monotonic() < deadline, f"{silo} did not rejoin"
                time.sleep(0.1)


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    """Terminate every process, then wait (and kill what outlives 10 s)."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _make_sites(data_dir: Path, root: Path) -> tuple[dict[str, Path], list[str]]:
    """Give each silo its own directory and config; silo-2 keeps its rows in SQLite."""
    sites, private = {}, []
    for silo in SILOS:
        site = root / f"site-{silo}"
        site.mkdir()
        for split in ("train", "test"):
            shutil.copy(data_dir / silo / f"{split}.parquet", site / f"{split}.parquet")
        config: dict[str, Any] = {"train": "train.parquet", "test": "test.parquet"}
        if silo == "silo-0":
            config["storage_options"] = {"auto_mkdir": False, "token": TOKEN}
        if silo == "silo-2":
            with sqlite3.connect(site / "rows.db") as connection:
                for split in ("train", "test"):
                    frame = pd.read_parquet(site / f"{split}.parquet")
                    frame.to_sql(split, connection, index=False)
                    (site / f"{split}.parquet").unlink()
            config = {
                "train": {"url": "sqlite:///rows.db", "table": "train"},
                "test": {"url": "sqlite:///rows.db", "query": "SELECT * FROM test"},
            }
        (site / "silo.yaml").write_text(yaml.safe_dump(config))
        sites[silo] = site
        private += [str(site), f"site-{silo}"]
    return sites, [*private, TOKEN, "rows.db", "sqlite:"]


@pytest.fixture
def silo_federation(
    breast_cancer_dir: Path, tmp_path: Path
) -> Iterator[SiloFederation]:
    """`dask scheduler` and a worker per silo, each its own process.

    silo-0 and silo-2 run `fedsilo worker`, silo-1 `dask worker --preload
    fedsilo.silo --silo-config`: both load the silo runtime with the silo's
    own config.
    """
    sites, private = _make_sites(breast_cancer_dir, tmp_path)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    scheduler_file = run_dir / "scheduler.json"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    processes: list[subprocess.Popen[bytes]] = []
    logs = []

    def start(name: str, *command: str, **extra: str) -> subprocess.Popen[bytes]:
        log = (run_dir / f"{name}.log").open("wb")
        logs.append(log)
        process = subprocess.Popen(
            [sys.executable, *command],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=run_dir,
            env={**env, **extra},
        )
        processes.append(process)
        return process

    try:
        start(
            "scheduler",
            "-m",
            "distributed.cli.dask_scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--no-dashboard",
            "--scheduler-file",
            str(scheduler_file),
            DASK_DISTRIBUTED__SCHEDULER__NO_WORKERS_TIMEOUT=NO_WORKERS_TIMEOUT,
        )
        deadline = time.monotonic() + 30
        while not scheduler_file.exists() or not scheduler_file.read_text().strip():
            assert time.monotonic() < deadline, "the scheduler did not start"
            time.sleep(0.1)
        address = json.loads(scheduler_file.read_text())["address"]

        def start_worker(silo: str) -> subprocess.Popen[bytes]:
            config = str(sites[silo] / "silo.yaml")
            if silo == "silo-1":  # Dask's own command, the runtime preloaded
                return start(
                    silo,
                    "-m",
                    "distributed.cli.dask_worker",
                    address,
                    "--name",
                    silo,
                    "--nthreads",
                    "1",
                    "--no-nanny",
                    "--no-dashboard",
                    "--host",
                    "127.0.0.1",
                    "--preload",
                    "fedsilo.silo",
                    "--silo-config",
                    config,
                )
            command = ("worker", "--scheduler", address, "--silo", silo)
            return start(silo, "-m", "fedsilo.cli", *command, "--data", config)

        workers = {silo: start_worker(silo) for silo in SILOS}
        _warm_up(address)
        yield SiloFederation(address, sites, workers, private, start_worker)
    finally:
        _stop(processes[1:])  # the workers first, then the scheduler
        _stop(processes[:1])
        for log in logs:
            log.close()


def _warm_up(address: str) -> None:
    """Wait for every silo worker and have it read its rows once.

    A loaded machine can take seconds over a fresh worker's first task; the
    runs under test then meet their (short) silo timeout with warm workers.
    """
    from distributed import Client

    from fedsilo.cluster import wait_for_silos

    with Client(address, timeout=60) as client:
        workers = wait_for_silos(client, SILOS, 120)
        schemas = read_schemas(client, workers, "warm-up", 120)
        assert all(s.n_train > 0 for s in schemas)


def read_schemas(
    client: Any, workers: dict[str, str], run: str, timeout: float
) -> list[SiloSchema]:
    """Have each silo read its own rows (its config) over a run's channel.

    The rows stay in the silo's runtime until the channel closes; the schemas,
    in the order of :data:`SILOS`, are what comes back.
    """
    from fedsilo.cluster import SiloCluster
    from tasks.silo.link import SiloLink

    cluster = SiloCluster(client, workers, str(client.scheduler.address), False)
    link = SiloLink(cluster, run, timeout)
    try:
        link.each(
            "load",
            {s: (SiloSource(s, None, None, 0.2, {}), "label", 0) for s in SILOS},
            keep="rows",
        )
        schemas = link.each(
            "schema",
            {s: (link.ref(s, "rows"), "label", "classification") for s in SILOS},
        )
    finally:
        link.close()
    return [schemas[s] for s in SILOS]


def names_only_spec(
    federation: SiloFederation, store: Path, **changes: Any
) -> FederationSpec:
    return FederationSpec.model_validate(
        {
            "name": "named-silos",
            "task": "classification",
            "target": "label",
            "rounds": 3,
            "strategy": {"kind": "fedavg", "min_silos": 3},
            "silos": [{"name": s} for s in SILOS],
            "cluster": {
                "address": federation.address,
                "timeout": 60,
                "silo_timeout": SILO_TIMEOUT,
            },
            "checkpoints": str(store),
            **changes,
        }
    )


def assert_private(payload: Any, private: list[str]) -> None:
    blob = pickle.dumps(payload)
    text = repr(payload)
    for secret in private:
        assert secret.encode() not in blob, secret
        assert secret not in text, secret


@pytest.mark.integration
def test_workers_read_their_own_config_and_the_coordinator_never_sees_it(
    silo_federation: SiloFederation,
    breast_cancer_dir: Path,
    tmp_path: Path,
    prefect_api: None,
) -> None:
    from distributed import Client

    from fedsilo.cluster import wait_for_silos
    from flows.training import federated_training

    seen: list[tuple[Any, list[Any]]] = []

    def listener(result: Any, state: run_state.Run) -> None:
        seen.append((result, list(state.last_updates)))

    spec = names_only_spec(silo_federation, tmp_path / "store")
    assert_private(spec.model_dump(), silo_federation.private)
    with run_state.listening(listener):
        summary = federated_training(spec)

    assert summary["rounds"] == [1, 2, 3]
    assert summary["final_metrics"]["accuracy"] > 0.85
    for result, updates in seen:
        assert result.fit_workers == {s: s for s in SILOS}
        assert len(updates) == 3
    assert_private((summary, seen), silo_federation.private)
    with Client(silo_federation.address, timeout=30) as client:
        workers = wait_for_silos(client, SILOS, 30)
        schemas = read_schemas(client, workers, "read-again", 30)
        assert [s.n_train for s in schemas] == [
            len(pd.read_parquet(breast_cancer_dir / s / "train.parquet")) for s in SILOS
        ]
        assert_private(
            (schemas, client.scheduler_info(n_workers=-1)), silo_federation.private
        )

    # A silo's read error names the silo, never its paths (the worker logs them).
    (silo_federation.sites["silo-1"] / "test.parquet").unlink()
    with pytest.raises(SiloDataError) as caught:
        federated_training(spec)
    assert caught.value.silo == "silo-1"
    assert "no such file" in caught.value.reason
    assert_private(caught.value.reason, silo_federation.private)


def kill_after(federation: SiloFederation, silo: str, round_number: int) -> Any:
    def listener(result: Any, state: run_state.Run) -> None:
        if result.round == round_number:
            federation.kill(silo)

    return listener


@pytest.mark.integration
def test_a_killed_worker_fails_the_round_naming_its_silo(
    silo_federation: SiloFederation, tmp_path: Path, prefect_api: None
) -> None:
    from flows.training import federated_training

    store = tmp_path / "store"
    spec = names_only_spec(silo_federation, store, rounds=5)
    listener = kill_after(silo_federation, "silo-2", 2)
    started = time.monotonic()
    with (
        run_state.listening(listener),
        pytest.raises((SiloFailedError, ClusterError)) as caught,
    ):
        federated_training(spec, run_id="killed")

    assert "silo-2" in caught.value.reason
    assert time.monotonic() - started < SILO_TIMEOUT
    checkpoints = CheckpointStore(str(store), spec.name, "killed")
    assert checkpoints.complete_rounds() == [1, 2]
    for round_number in (1, 2):
        params = checkpoints.read_params(round_number)
        assert params["coef_"].shape == (1, 30)
    rounds = duckdb.execute(
        f"""
        SELECT DISTINCT round FROM read_parquet(
            '{store}/**/metrics.parquet', hive_partitioning = true)
        WHERE silo = 'global' ORDER BY round
        """
    ).fetchall()
    assert [int(r[0]) for r in rounds] == [1, 2]


@pytest.mark.integration
def test_a_killed_worker_is_left_out_where_min_silos_allows(
    silo_federation: SiloFederation, tmp_path: Path, prefect_api: None
) -> None:
    from flows.training import federated_training

    seen: list[Any] = []
    spec = names_only_spec(
        silo_federation,
        tmp_path / "store",
        rounds=5,
        strategy={"kind": "fedavg", "min_silos": 2},
    )
    listeners = [kill_after(silo_federation, "silo-2", 2), lambda r, s: seen.append(r)]
    with run_state.listening(*listeners):
        summary = federated_training(spec, run_id="degraded")

    assert summary["rounds"] == [1, 2, 3, 4, 5]
    assert [sorted(r.silos) for r in seen] == [list(SILOS)] * 2 + [list(SILOS[:2])] * 3
    assert all("silo-2" not in r.eval_workers for r in seen[2:])
    store = CheckpointStore(str(tmp_path / "store"), spec.name, "degraded")
    assert store.complete_rounds() == [1, 2, 3, 4, 5]


@pytest.mark.integration
def test_a_restarted_worker_reloads_its_rows_and_rejoins_the_run(
    silo_federation: SiloFederation, tmp_path: Path, prefect_api: None
) -> None:
    from flows.training import federated_training

    seen: list[Any] = []
    spec = names_only_spec(
        silo_federation,
        tmp_path / "store",
        rounds=5,
        strategy={"kind": "fedavg", "min_silos": 2},
        compression={"kind": "int8"},
    )

    def reboot(result: Any, state: run_state.Run) -> None:
        seen.append(result)
        if result.round == 2:  # the hospital's machine goes down ...
            silo_federation.kill("silo-2")
        if result.round == 3:  # ... and comes back with a new process
            silo_federation.restart("silo-2")

    with run_state.listening(reboot):
        summary = federated_training(spec, run_id="rebooted")

    assert summary["rounds"] == [1, 2, 3, 4, 5]
    trained = [sorted(r.silos) for r in seen]
    assert trained == [list(SILOS)] * 2 + [list(SILOS[:2])] + [list(SILOS)] * 2
    assert seen[2].absent == {"silo-2": "failed"}
    for result in seen[3:]:  # back: it trains and scores from its own rows again
        assert "silo-2" in result.eval_workers and not result.absent
    assert summary["final_metrics"]["accuracy"] > 0.85
    store = CheckpointStore(str(tmp_path / "store"), spec.name, "rebooted")
    assert store.complete_rounds() == [1, 2, 3, 4, 5]
