"""Checkpoints and silo data on S3: a moto server in its own process on loopback.

DuckDB cannot load its httpfs extension here (it would download it), so DuckDB
reads s3:// through an s3fs filesystem registered on the connection; polars
reads s3:// natively. The SQL is that of docs/checkpoints.md, imported from
test_analytics (which runs it on a local store) and pointed at s3:// here.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import polars as pl
import pytest
import s3fs
from _moto import MotoS3, free_port, moto_server
from distributed import Client
from test_analytics import (
    COMPLETE_ROUNDS_ONLY,
    LATEST_COMPLETE_ROUND,
    WHOLE_STORE_QUERY,
)

from fedsilo.errors import CheckpointError
from fedsilo.spec import FederationSpec, load_spec
from tasks.store.checkpoints import CheckpointStore, MetricRow, list_runs
from tasks.store.credentials import resolve_storage_options
from tasks.store.model_io import load_estimator
from tests._probe import probe

FED = "fed-s3"
RUN = "20261129T150102Z-3fa9c1"
AWS_VARIABLES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
)


@pytest.fixture(scope="session")
def moto_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    """A moto S3 server process on a free loopback port, stopped at session end."""
    log = tmp_path_factory.mktemp("moto") / "moto-server.log"
    with moto_server(log) as server:
        yield server


@pytest.fixture(autouse=True)
def no_ambient_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No credentials but those a test gives; fresh s3fs instances per test."""
    for name in AWS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-creds"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no IMDS lookups
    s3fs.S3FileSystem.clear_instance_cache()
    yield
    s3fs.S3FileSystem.clear_instance_cache()


def new_bucket(s3: MotoS3) -> str:
    return s3.make_bucket(f"fedsilo-{uuid.uuid4().hex[:12]}")


@pytest.fixture
def bucket(moto_s3: MotoS3) -> str:
    return new_bucket(moto_s3)


def _metrics(round_number: int) -> list[MetricRow]:
    return [
        MetricRow("global", "test", "accuracy", 0.5 + round_number / 10, 40),
        MetricRow("silo-0", "test", "accuracy", 0.4 + round_number / 10, 20),
        MetricRow("silo-0", "train", "bytes_up", 100.0 * round_number, 80),
    ]


def _params(round_number: int) -> dict[str, np.ndarray]:
    return {
        "coef_": np.arange(6, dtype=np.float64).reshape(2, 3) * round_number,
        "intercept_": np.array([round_number / 3, -1.0]),
        "t_": np.array(17.0 * round_number),
    }


def _objects(s3: MotoS3, prefix: str) -> dict[str, bytes]:
    fs = s3.filesystem()
    return {path: bytes(fs.cat_file(path)) for path in sorted(fs.find(prefix))}


# --- (a) the checkpoint store on S3 -------------------------------------------


@pytest.mark.parametrize("style", ["client_kwargs", "endpoint_url"])
def test_store_writes_and_reads_rounds_on_s3(
    moto_s3: MotoS3, bucket: str, style: str
) -> None:
    # Prepare
    root = f"s3://{bucket}/prefix"
    options = moto_s3.storage_options(style)
    store = CheckpointStore(
        root, FED, RUN, storage_options=options, metadata={"fedsilo.spec_hash": "ab"}
    )
    # Execute
    first = store.write_round(1, _metrics(1), _params(1), model_json='{"v": 1}')
    store.write_round(2, _metrics(2), _params(2))
    # Assert
    run = f"{bucket}/prefix/federation={FED}/run={RUN}"
    assert first == f"s3://{run}/round=00001"
    assert store.run_path == f"s3://{run}"
    assert store.complete_rounds() == [1, 2]
    assert store.latest_complete_round() == 2
    assert list_runs(root, FED, storage_options=options) == [RUN]
    for name, array in _params(2).items():
        restored = store.read_params(2)[name]
        assert restored.shape == array.shape
        np.testing.assert_array_equal(restored, array)
    metrics = store.read_metrics(2)
    assert metrics["value"].tolist() == pytest.approx([0.7, 0.6, 200.0])
    assert store.read_model_json(1) == '{"v": 1}'
    assert store.read_model_json(2) is None
    metadata = store.read_metadata(2)
    assert metadata["fedsilo.round"] == "2"
    assert metadata["fedsilo.spec_hash"] == "ab"
    # One object per file, put whole: no temporary or leftover keys.
    assert sorted(_objects(moto_s3, run)) == [
        f"{run}/manifest.parquet",
        f"{run}/round=00001/_SUCCESS",
        f"{run}/round=00001/metrics.parquet",
        f"{run}/round=00001/model.json",
        f"{run}/round=00001/model.parquet",
        f"{run}/round=00002/_SUCCESS",
        f"{run}/round=00002/metrics.parquet",
        f"{run}/round=00002/model.parquet",
    ]


def test_complete_round_on_s3_is_never_overwritten(
    moto_s3: MotoS3, bucket: str
) -> None:
    # Prepare
    root = f"s3://{bucket}/prefix"
    store = CheckpointStore(root, FED, RUN, storage_options=moto_s3.storage_options())
    path = store.write_round(1, _metrics(1), _params(1))
    before = _objects(moto_s3, bucket)
    # Execute
    with pytest.raises(CheckpointError, match=re.escape(path)) as info:
        store.write_round(1, _metrics(5), _params(5))
    # Assert
    assert "already complete" in info.value.reason
    assert _objects(moto_s3, bucket) == before


def test_torn_round_on_s3_is_incomplete_and_rewritten(
    moto_s3: MotoS3, bucket: str
) -> None:
    # Prepare: round 2 as a crash leaves it, metrics half written, no _SUCCESS.
    root = f"s3://{bucket}/prefix"
    options = moto_s3.storage_options()
    store = CheckpointStore(root, FED, RUN, storage_options=options)
    store.write_round(1, _metrics(1), _params(1))
    fs = moto_s3.filesystem()
    run = f"{bucket}/prefix/federation={FED}/run={RUN}"
    good = bytes(fs.cat_file(f"{run}/round=00001/metrics.parquet"))
    fs.pipe_file(f"{run}/round=00002/metrics.parquet", good[: len(good) // 2])
    fs.pipe_file(f"{run}/round=00002/model.json", b"stale")
    torn_run = f"{bucket}/prefix/federation={FED}/run=torn-only/round=00001"
    fs.pipe_file(f"{torn_run}/model.parquet", b"PAR1")
    # Execute
    rounds_before = store.complete_rounds()
    runs_before = list_runs(root, FED, storage_options=options)
    with pytest.raises(CheckpointError, match=re.escape(store.round_path(2))):
        store.read_params(2)
    store.write_round(2, _metrics(2), _params(2))
    # Assert
    assert rounds_before == [1]
    assert runs_before == [RUN]
    assert store.complete_rounds() == [1, 2]
    assert store.read_model_json(2) is None  # the stale object was removed
    assert sorted(k for k in _objects(moto_s3, run) if "round=00002" in k) == [
        f"{run}/round=00002/_SUCCESS",
        f"{run}/round=00002/metrics.parquet",
        f"{run}/round=00002/model.parquet",
    ]
    assert store.read_metrics(2)["value"].iloc[0] == pytest.approx(0.7)


def test_failed_put_on_s3_leaves_the_round_incomplete(
    moto_s3: MotoS3, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare
    root = f"s3://{bucket}/prefix"
    store = CheckpointStore(root, FED, RUN, storage_options=moto_s3.storage_options())
    store.write_round(1, _metrics(1), _params(1))
    fs = store._fs  # the store's own (cached) s3fs instance
    real_pipe = fs.pipe_file

    def failing_pipe(path: str, data: bytes, **kwargs: Any) -> None:
        if path.endswith("metrics.parquet"):
            raise PermissionError("Access Denied")
        real_pipe(path, data, **kwargs)

    monkeypatch.setattr(fs, "pipe_file", failing_pipe)
    # Execute
    with pytest.raises(CheckpointError, match=r"s3://.*round=00002/metrics\.parquet"):
        store.write_round(2, _metrics(2), _params(2))
    # Assert
    assert store.complete_rounds() == [1]
    assert not moto_s3.filesystem().exists(f"{store.round_path(2)}/_SUCCESS")


def test_missing_bucket_gives_checkpoint_error_naming_the_url(
    moto_s3: MotoS3,
) -> None:
    # Prepare
    root = f"s3://fedsilo-missing-{uuid.uuid4().hex[:12]}/prefix"
    options = moto_s3.storage_options()
    store = CheckpointStore(root, FED, RUN, storage_options=options)
    # Execute
    with pytest.raises(CheckpointError) as writing:
        store.write_round(1, _metrics(1), _params(1))
    with pytest.raises(CheckpointError) as reading:
        store.read_params(1)
    with pytest.raises(CheckpointError) as listing:
        store.complete_rounds()
    with pytest.raises(CheckpointError) as listing_runs:
        list_runs(root, FED, storage_options=options)
    # Assert
    round_url = f"{root}/federation={FED}/run={RUN}/round=00001"
    assert f"{root}/federation={FED}/run={RUN}/round=" in writing.value.reason
    assert "bucket does not exist" in writing.value.reason
    assert round_url in reading.value.reason
    assert f"{root}/federation={FED}/run={RUN}/round=*" in listing.value.reason
    assert f"{root}/federation={FED}/run=*" in listing_runs.value.reason


@pytest.mark.parametrize(
    "case", ["invalid bucket name", "endpoint unreachable", "no credentials"]
)
def test_botocore_errors_become_checkpoint_errors(moto_s3: MotoS3, case: str) -> None:
    # Prepare: each makes botocore raise an error that is not an OSError.
    root = f"s3://fedsilo-{uuid.uuid4().hex[:12]}/prefix"
    options: dict[str, Any] = moto_s3.storage_options()
    if case == "invalid bucket name":
        root = "s3://Not_A_Valid_Bucket!/prefix"
    elif case == "endpoint unreachable":
        options["client_kwargs"] = {"endpoint_url": f"http://127.0.0.1:{free_port()}"}
        options["config_kwargs"] = {
            "retries": {"max_attempts": 1},
            "connect_timeout": 1,
        }
    else:
        options = {"endpoint_url": moto_s3.endpoint}
    store = CheckpointStore(root, FED, RUN, storage_options=options)
    # Execute / Assert
    with pytest.raises(CheckpointError, match=re.escape(root)):
        store.write_round(1, _metrics(1), _params(1))


# --- (b), (c) whole federated runs on S3 ---------------------------------------


def _upload_silos(s3: MotoS3, data_dir: Path, bucket: str) -> None:
    fs = s3.filesystem()
    for path in sorted(data_dir.glob("silo-*/*.parquet")):
        fs.put_file(str(path), f"{bucket}/data/{path.parent.name}/{path.name}")


def _s3_spec(
    data_dir: Path,
    bucket: str,
    silo_options: dict[str, Any],
    n_silos: int = 4,
    **changes: Any,
) -> FederationSpec:
    """The breast cancer federation with its silo files and store on S3."""
    spec = load_spec(data_dir / "federation.yaml").model_dump()
    silos = [
        {
            **silo,
            "train": f"s3://{bucket}/data/{silo['name']}/train.parquet",
            "test": f"s3://{bucket}/data/{silo['name']}/test.parquet",
            "storage_options": silo_options,
        }
        for silo in spec["silos"][:n_silos]
    ]
    strategy = {**spec["strategy"], "min_silos": n_silos}
    data = {
        **spec,
        "silos": silos,
        "strategy": strategy,
        "rounds": 2,
        "checkpoints": f"s3://{bucket}/checkpoints",
        **changes,
    }
    return FederationSpec.model_validate(data)


def _pooled_test(data_dir: Path, n_silos: int = 4) -> pd.DataFrame:
    files = [data_dir / f"silo-{i}" / "test.parquet" for i in range(n_silos)]
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def _duckdb_on(fs: s3fs.S3FileSystem) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection that reads s3:// through ``fs``, never downloading."""
    con = duckdb.connect(
        config={
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
        }
    )
    con.register_filesystem(fs)
    return con


def _on(query: str, store: str) -> str:
    """Return a docs query with its store ``checkpoints`` replaced by ``store``."""
    assert query.count("'checkpoints/") >= 1
    return query.replace("'checkpoints/", f"'{store}/")


def _global_accuracy(rows: pd.DataFrame) -> dict[int, float]:
    accuracy = rows[rows.metric == "accuracy"]
    return dict(zip(accuracy["round"].astype(int), accuracy.value, strict=True))


def _worker_aws_variables(address: str) -> dict[str, list[str]]:
    with Client(address, timeout=60) as client:
        workers = list(client.scheduler_info(n_workers=-1)["workers"])
        security = client.security
    return {
        worker: list(probe(worker, "environ", *AWS_VARIABLES, security=security))
        for worker in workers
    }


@pytest.fixture(scope="module")
def secret_block_run(
    moto_s3: MotoS3,
    breast_cancer_dir: Path,
    shared_cluster: str,
    prefect_api: None,
) -> tuple[FederationSpec, dict[str, Any]]:
    """Run (b): the store's keys in a Prefect Secret block the spec names.

    The spec holds no credential (it refuses them); the silos, on the shared
    cluster whose workers hold no AWS credentials, read their local files.
    """
    from prefect.blocks.system import Secret

    from flows.training import federated_training

    # The shared silo workers hold no AWS credentials of their own.
    assert not any(_worker_aws_variables(shared_cluster).values())
    bucket = new_bucket(moto_s3)
    block = f"fedsilo-s3-{uuid.uuid4().hex[:8]}"
    Secret(value={"key": moto_s3.key, "secret": moto_s3.secret}).save(block)
    spec = FederationSpec.model_validate(
        {
            **load_spec(breast_cancer_dir / "federation.yaml").model_dump(),
            "rounds": 2,
            "cluster": {"address": shared_cluster},
            "checkpoints": f"s3://{bucket}/checkpoints",
            "storage_options": {
                "client_kwargs": {"endpoint_url": moto_s3.endpoint},
                "credentials_block": block,
            },
        }
    )
    with pytest.MonkeyPatch.context() as env:  # module scope: no monkeypatch
        for name in AWS_VARIABLES:
            env.delenv(name, raising=False)
        return spec, federated_training(spec)


@pytest.mark.integration
def test_run_with_a_secret_block_checkpoints_on_s3(
    secret_block_run: tuple[FederationSpec, dict[str, Any]],
    breast_cancer_dir: Path,
) -> None:
    # Prepare
    spec, summary = secret_block_run
    run_id = summary["run_id"]
    # Execute
    store = CheckpointStore(
        spec.checkpoints, spec.name, run_id, storage_options=spec.storage_options
    )
    model = load_estimator(store)
    # Assert
    assert summary["rounds"] == [1, 2]
    assert summary["run_path"] == (
        f"{spec.checkpoints}/federation={spec.name}/run={run_id}"
    )
    assert store.complete_rounds() == [1, 2]
    metrics = store.read_metrics(2)
    test_global = metrics[(metrics.silo == "global") & (metrics.split == "test")]
    assert dict(zip(test_global.metric, test_global.value, strict=True)) == (
        pytest.approx(summary["final_metrics"])
    )
    assert summary["final_metrics"]["accuracy"] > 0.85
    test = _pooled_test(breast_cancer_dir)
    score = model.score(test[model.feature_names_].to_numpy(), test["label"].to_numpy())
    assert score == pytest.approx(summary["final_metrics"]["accuracy"], abs=1e-12)


@pytest.mark.integration
def test_duckdb_and_polars_read_the_s3_store(
    secret_block_run: tuple[FederationSpec, dict[str, Any]], moto_s3: MotoS3
) -> None:
    # Prepare
    spec, summary = secret_block_run
    con = _duckdb_on(s3fs.S3FileSystem(**resolve_storage_options(spec.storage_options)))
    polars_options = {
        "aws_access_key_id": moto_s3.key,
        "aws_secret_access_key": moto_s3.secret,
        "aws_endpoint_url": moto_s3.endpoint,
        "aws_region": moto_s3.region,
        "aws_allow_http": "true",
    }
    # Execute
    rows = con.sql(_on(WHOLE_STORE_QUERY, spec.checkpoints)).df()
    latest = con.sql(_on(LATEST_COMPLETE_ROUND, spec.checkpoints)).fetchall()
    complete = con.sql(_on(COMPLETE_ROUNDS_ONLY, spec.checkpoints)).df()
    frame = (
        pl.scan_parquet(
            f"{spec.checkpoints}/**/metrics.parquet",
            hive_partitioning=True,
            storage_options=polars_options,
        )
        .filter((pl.col("silo") == "global") & (pl.col("split") == "test"))
        .filter(pl.col("metric") == "accuracy")
        .sort("round")
        .collect()
    )
    # Assert
    assert set(rows.run) == {summary["run_id"]}
    assert set(rows.federation) == {spec.name}
    by_round = _global_accuracy(rows)
    assert sorted(by_round) == [1, 2]
    assert by_round[2] == pytest.approx(summary["final_metrics"]["accuracy"])
    assert frame["round"].to_list() == [1, 2]
    assert frame["value"].to_list() == pytest.approx([by_round[1], by_round[2]])
    assert latest == [(spec.name, summary["run_id"], 2)]
    assert _global_accuracy(complete) == by_round


@pytest.mark.integration
def test_checkpoint_metadata_holds_no_credentials(
    secret_block_run: tuple[FederationSpec, dict[str, Any]], moto_s3: MotoS3
) -> None:
    spec, summary = secret_block_run
    store = CheckpointStore(
        spec.checkpoints,
        spec.name,
        summary["run_id"],
        storage_options=spec.storage_options,
    )

    metadata = json.dumps(store.read_metadata(1))

    assert moto_s3.secret not in metadata and moto_s3.key not in metadata


@pytest.mark.integration
@pytest.mark.usefixtures("prefect_api")
def test_run_with_credentials_from_aws_variables_only(
    moto_s3: MotoS3, breast_cancer_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: the standard variables only; no storage_options anywhere. The
    # silo workers are processes of a small embedded cluster the flow starts
    # now, so they inherit these variables (the shared cluster started without).
    from flows.training import federated_training

    bucket = new_bucket(moto_s3)
    _upload_silos(moto_s3, breast_cancer_dir, bucket)
    for name, value in moto_s3.env().items():
        monkeypatch.setenv(name, value)
    spec = _s3_spec(breast_cancer_dir, bucket, {}, n_silos=2, cluster={"timeout": 120})
    assert spec.cluster.address is None
    assert spec.storage_options == {}
    # Execute
    summary = federated_training(spec)
    store = CheckpointStore(spec.checkpoints, spec.name, summary["run_id"])
    rows = (
        _duckdb_on(s3fs.S3FileSystem())
        .sql(_on(WHOLE_STORE_QUERY, spec.checkpoints))
        .df()
    )
    frame = (
        pl.scan_parquet(
            f"{spec.checkpoints}/**/metrics.parquet", hive_partitioning=True
        )
        .filter((pl.col("silo") == "global") & (pl.col("split") == "test"))
        .collect()
    )
    # Assert
    assert summary["rounds"] == [1, 2]
    assert store.complete_rounds() == [1, 2]
    by_round = _global_accuracy(rows)
    assert sorted(by_round) == [1, 2]
    assert by_round[2] == pytest.approx(summary["final_metrics"]["accuracy"])
    assert frame.height == len(rows)
    test = _pooled_test(breast_cancer_dir, n_silos=2)
    model = load_estimator(store)
    score = model.score(test[model.feature_names_].to_numpy(), test["label"].to_numpy())
    assert score == pytest.approx(summary["final_metrics"]["accuracy"], abs=1e-12)
