"""Credentials never leave their owner's side: the central spec refuses them.

The spec is a Prefect flow-run parameter and sits in every checkpoint's
metadata, so it may hold no key, secret, token or password and no URL with
user-info. Each party keeps its own: the coordinator's checkpoint store takes
its keys from a Prefect Secret block the spec names, silo-0 from its own silo
config, silo-1 from its worker's environment. The run is real (a moto S3
server, a scheduler and two `fedsilo worker` processes on loopback); afterwards
Prefect's database files, the logs, the artifacts and every checkpoint object
are searched for the three parties' secrets.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import s3fs
import yaml
from _moto import MotoS3, moto_server

from fedsilo.errors import CheckpointError, SpecError
from fedsilo.spec import FederationSpec, load_spec
from tasks.store.checkpoints import CheckpointStore

SILOS = ("silo-0", "silo-1")
AWS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
)
NO_WORKERS_TIMEOUT = "2s"


def _minimal(**changes: Any) -> dict[str, Any]:
    return {
        "name": "creds",
        "task": "classification",
        "target": "label",
        "rounds": 1,
        "silos": [{"name": "silo-0", "train": "/srv/a.parquet"}, {"name": "silo-1"}],
        **changes,
    }


# --- the spec refuses credentials, in one line naming the field ----------------


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"storage_options": {"key": "AKIAKEY7", "secret": "SECRETVAL7"}}, "'key'"),
        ({"storage_options": {"token": "TOKENVAL7"}}, "'token'"),
        ({"storage_options": {"password": "PASSVAL7"}}, "'password'"),
        (
            {
                "storage_options": {
                    "client_kwargs": {"aws_secret_access_key": "SECRETVAL7"}
                }
            },
            "'client_kwargs.aws_secret_access_key'",
        ),
        (
            {"storage_options": {"endpoint_url": "http://bob:PASSVAL7@minio:9000"}},
            "'endpoint_url' is a URL with user-info",
        ),
        ({"checkpoints": "s3://AKIAKEY7:SECRETVAL7@bucket/fl"}, "checkpoints: the URL"),
        (
            {
                "silos": [
                    {"name": "silo-0", "train": "sftp://bob:PASSVAL7@host/t.parquet"},
                    {"name": "silo-1"},
                ]
            },
            "silos.0: train holds user-info",
        ),
        (
            {
                "silos": [
                    {
                        "name": "silo-0",
                        "train": "s3://b/t.parquet",
                        "storage_options": {"secret": "SECRETVAL7"},
                    },
                    {"name": "silo-1"},
                ]
            },
            "silos.0.storage_options: 'secret'",
        ),
        (
            {
                "silos": [
                    {
                        "name": "silo-0",
                        "train": {"url": "postgresql://u:PASSVAL7@db/x", "table": "t"},
                    },
                    {"name": "silo-1"},
                ]
            },
            "silos.0: train.url holds a password",
        ),
    ],
)
def test_the_central_spec_refuses_credentials_in_one_line_naming_the_field(
    tmp_path: Path, changes: dict[str, Any], field: str
) -> None:
    path = tmp_path / "fed.yaml"
    path.write_text(yaml.safe_dump(_minimal(**changes)))

    with pytest.raises(SpecError) as refused:
        load_spec(path)

    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ") and field in message
    for secret in ("AKIAKEY7", "SECRETVAL7", "TOKENVAL7", "PASSVAL7", "bob"):
        assert secret not in message


def test_a_spec_may_name_the_store_s_secret_block_and_nothing_more() -> None:
    spec = FederationSpec.model_validate(
        _minimal(storage_options={"anon": False, "credentials_block": "fl-store"})
    )

    assert spec.storage_options["credentials_block"] == "fl-store"
    with pytest.raises(ValueError, match=r"credentials_block.*checkpoint store"):
        FederationSpec.model_validate(
            _minimal(
                silos=[
                    {
                        "name": "silo-0",
                        "train": "s3://b/t.parquet",
                        "storage_options": {"credentials_block": "fl-store"},
                    },
                    {"name": "silo-1"},
                ]
            )
        )


# --- a real run: each party's credentials stay with it --------------------------


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    """A moto S3 server process on loopback for this module."""
    log = tmp_path_factory.mktemp("moto") / "moto-server.log"
    with moto_server(log) as server:
        yield server


@dataclass
class Federation:
    """The scheduler, the silo workers, their logs and every party's secrets."""

    address: str
    bucket: str
    logs: list[Path]
    secrets: dict[str, str] = field(default_factory=dict)


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _no_ambient_aws(tmp_path: Path) -> dict[str, str]:
    """The environment without any AWS credential, config file or metadata lookup."""
    env = {k: v for k, v in os.environ.items() if k not in AWS}
    env["AWS_CONFIG_FILE"] = str(tmp_path / "no-aws-config")
    env["AWS_SHARED_CREDENTIALS_FILE"] = str(tmp_path / "no-aws-credentials")
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    return env


@pytest.fixture
def federation(
    moto: MotoS3, breast_cancer_dir: Path, tmp_path: Path
) -> Iterator[Federation]:
    """A scheduler and one `fedsilo worker` per silo, each with its own credentials.

    silo-0's keys are in its silo config, silo-1's in its worker's environment;
    the silos' rows are on S3 behind them.
    """
    bucket = moto.make_bucket(f"creds-{uuid.uuid4().hex[:12]}")
    admin = moto.filesystem()
    for silo in SILOS:
        for split in ("train", "test"):
            local = breast_cancer_dir / silo / f"{split}.parquet"
            admin.put_file(str(local), f"{bucket}/data/{silo}/{split}.parquet")
    secrets = {
        f"{party}-{part}": f"{party}-{part}-{uuid.uuid4().hex}"
        for party in ("store", "silo0", "silo1")
        for part in ("key", "secret")
    }
    env = {**_no_ambient_aws(tmp_path), "PYTHONUNBUFFERED": "1"}
    processes: list[subprocess.Popen[bytes]] = []
    logs: list[Path] = []

    def start(name: str, *command: str, **extra: str) -> None:
        log = tmp_path / f"{name}.log"
        logs.append(log)
        with log.open("wb") as sink:
            processes.append(
                subprocess.Popen(
                    [sys.executable, *command],
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    cwd=tmp_path,
                    env={**env, **extra},
                )
            )

    try:
        scheduler_file = tmp_path / "scheduler.json"
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
        deadline = time.monotonic() + 60
        while not scheduler_file.exists() or not scheduler_file.read_text().strip():
            assert time.monotonic() < deadline, "the scheduler did not start"
            time.sleep(0.1)
        address = yaml.safe_load(scheduler_file.read_text())["address"]
        endpoint = {"client_kwargs": {"endpoint_url": moto.endpoint}}
        own = {
            "silo-0": {
                "key": secrets["silo0-key"],
                "secret": secrets["silo0-secret"],
                **endpoint,
            },
            "silo-1": endpoint,
        }
        for silo in SILOS:
            config = tmp_path / f"{silo}.yaml"
            config.write_text(
                yaml.safe_dump(
                    {
                        "train": f"s3://{bucket}/data/{silo}/train.parquet",
                        "test": f"s3://{bucket}/data/{silo}/test.parquet",
                        "storage_options": own[silo],
                    }
                )
            )
            extra = {}
            if silo == "silo-1":
                extra = {
                    "AWS_ACCESS_KEY_ID": secrets["silo1-key"],
                    "AWS_SECRET_ACCESS_KEY": secrets["silo1-secret"],
                }
            start(
                silo,
                "-m",
                "fedsilo.cli",
                "worker",
                "--scheduler",
                address,
                "--silo",
                silo,
                "--data",
                str(config),
                **extra,
            )
        yield Federation(address, bucket, logs, secrets)
    finally:
        _stop(processes[1:])
        _stop(processes[:1])


@contextlib.contextmanager
def _logged() -> Iterator[list[str]]:
    """Collect every record the coordinator logs (Prefect's, Dask's, any other)."""
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    keep = Keep(logging.DEBUG)
    keep.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    loggers = [logging.getLogger(name) for name in ("", "prefect", "distributed")]
    for logger in loggers:
        logger.addHandler(keep)
    try:
        yield lines
    finally:
        for logger in loggers:
            logger.removeHandler(keep)


def _prefect_database() -> list[Path]:
    """The files of the Prefect test API's SQLite database (with -wal, -shm)."""
    from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL

    url = PREFECT_SERVER_DATABASE_CONNECTION_URL.value()
    assert url and url.startswith("sqlite"), url
    path = Path(url.split(":///", 1)[1])
    return sorted(path.parent.glob(path.name + "*"))


def _count(database: Path, query: str, *args: str) -> int:
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        return int(db.execute(query, args).fetchone()[0])


def _wait_until_recorded(database: Path, run_id: str) -> None:
    """Flush Prefect's client queues; wait until the server recorded the whole run.

    Task runs reach the database through the server's batched recorder, so the
    last round's checkpoint task run, in the round flow whose parameters hold
    the run id, is the mark that everything before it is written too.
    """
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all()
    EventsWorker.drain_all()
    last = (
        "SELECT count(*) FROM task_run t JOIN flow_run f ON t.flow_run_id = f.id "
        "WHERE t.name = 'checkpoint-r0002' AND f.parameters LIKE ?"
    )
    finished = "SELECT count(*) FROM log WHERE message LIKE ?"
    deadline = time.monotonic() + 120
    while not (
        _count(database, last, f"%{run_id}%")
        and _count(database, finished, f"%finished {run_id}%")
    ):
        assert time.monotonic() < deadline, "Prefect did not record the run"
        time.sleep(0.5)


@pytest.mark.integration
@pytest.mark.usefixtures("prefect_api")
def test_after_a_run_no_party_s_secret_is_in_prefect_logs_artifacts_or_checkpoints(
    federation: Federation,
    moto: MotoS3,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from prefect.blocks.system import Secret

    from flows.training import federated_training

    # Prepare: the coordinator holds no AWS variables; its store's keys are in
    # a Prefect Secret block, which the spec names.
    for name, value in _no_ambient_aws(tmp_path).items():
        if name.startswith("AWS_"):
            monkeypatch.setenv(name, value)
    for name in AWS:
        monkeypatch.delenv(name, raising=False)
    s3fs.S3FileSystem.clear_instance_cache()
    secrets = federation.secrets
    block = f"fedsilo-store-{uuid.uuid4().hex[:8]}"
    Secret(value={"key": secrets["store-key"], "secret": secrets["store-secret"]}).save(
        block
    )
    run_id = f"creds-{uuid.uuid4().hex[:8]}"
    checkpoints = f"s3://{federation.bucket}/checkpoints"
    spec = FederationSpec.model_validate(
        {
            "name": "creds",
            "task": "classification",
            "target": "label",
            "rounds": 2,
            "strategy": {"kind": "fedavg", "min_silos": 2},
            "silos": [{"name": silo} for silo in SILOS],
            "cluster": {
                "address": federation.address,
                "timeout": 120,
                "silo_timeout": 120,
            },
            "checkpoints": checkpoints,
            "storage_options": {
                "endpoint_url": moto.endpoint,
                "credentials_block": block,
            },
        }
    )

    # Execute
    with _logged() as logged:
        summary = federated_training(spec, run_id=run_id)
    database = _prefect_database()
    _wait_until_recorded(database[0], run_id)

    # Assert: the run used every party's credentials ...
    assert summary["rounds"] == [1, 2]
    assert summary["final_metrics"]["accuracy"] > 0.85
    store = CheckpointStore(
        checkpoints, "creds", run_id, storage_options=spec.storage_options
    )
    assert store.complete_rounds() == [1, 2]
    keyless = {"endpoint_url": moto.endpoint}
    with pytest.raises(CheckpointError):  # without the block: no credentials
        CheckpointStore(
            checkpoints, "creds", run_id, storage_options=keyless
        ).complete_rounds()
    # ... and what was searched holds what the run recorded (the search can
    # find things): the spec's bucket and block name in Prefect's database, the
    # run id in its logs and artifacts and in the coordinator's log records,
    # the spec in the checkpoints' metadata.
    recorded = b"".join(path.read_bytes() for path in database)
    for known in (federation.bucket, block, run_id):
        assert known.encode() in recorded, known
    assert any(f"finished {run_id}" in line for line in logged)
    assert _count(database[0], "SELECT count(*) FROM artifact") > 0
    objects = {
        path: bytes(moto.filesystem().cat_file(path))
        for path in moto.filesystem().find(f"{federation.bucket}/checkpoints")
    }
    metadata = [data for data in objects.values() if b"fedsilo.spec" in data]
    assert metadata and all(run_id.encode() in data for data in metadata)
    logs = [path.read_bytes() for path in federation.logs]
    texts = {
        "prefect database": recorded,
        "coordinator logs": "\n".join(logged).encode(),
        **{str(path): data for path, data in objects.items()},
        **{str(path): data for path, data in zip(federation.logs, logs, strict=True)},
    }
    for where, data in texts.items():
        for name, secret in secrets.items():
            assert secret.encode() not in data, f"{name} found in {where}"
