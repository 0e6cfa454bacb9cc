"""SQL silos: SQLite and a real PostgreSQL server, streamed in chunks, same checks."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from connectors.sql import (
    SqlSource,
    iter_sql,
    mask_url,
    read_sql,
    resolve_sqlite_url,
    url_password,
)
from fedsilo.errors import SiloDataError, SpecError
from fedsilo.spec import FederationSpec, load_spec, parse_spec


def frame(n: int = 23, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "x0": rng.normal(size=n),
            "x1": rng.integers(0, 100, size=n).astype(np.int64),
            "label": rng.integers(0, 2, size=n).astype(np.int64),
        }
    )


@pytest.fixture
def sqlite_db(tmp_path: Path) -> tuple[str, pd.DataFrame]:
    data = frame()
    path = tmp_path / "silo.db"
    with sqlite3.connect(path) as connection:
        data.to_sql("rows", connection, index=False)
    return f"sqlite:///{path}", data


# --- URLs and sources -------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "masked", "password"),
    [
        (
            "postgresql+psycopg://fl:s3cret@db:5432/clinic",
            "postgresql+psycopg://fl:***@db:5432/clinic",
            "s3cret",
        ),
        ("postgresql://fl:p%40ss/w@db/x", "postgresql://fl:***@db/x", "p%40ss/w"),
        ("postgresql://fl@db/clinic", "postgresql://fl@db/clinic", None),
        (
            "mssql+pyodbc://db/x?user=fl&password=hunter2&a=1",
            "mssql+pyodbc://db/x?user=fl&password=***&a=1",
            "hunter2",
        ),
        ("sqlite:///data/silo.db", "sqlite:///data/silo.db", None),
    ],
)
def test_urls_are_masked(url: str, masked: str, password: str | None) -> None:
    assert mask_url(url) == masked
    assert url_password(url) == password


def test_relative_sqlite_paths_resolve_against_a_base(tmp_path: Path) -> None:
    assert resolve_sqlite_url("sqlite:///a/b.db", tmp_path) == (
        f"sqlite:///{(tmp_path / 'a' / 'b.db').resolve()}"
    )
    assert resolve_sqlite_url("sqlite:////abs/b.db", tmp_path) == "sqlite:////abs/b.db"
    assert resolve_sqlite_url("sqlite:///:memory:", tmp_path) == "sqlite:///:memory:"
    assert resolve_sqlite_url("postgresql://h/x", tmp_path) == "postgresql://h/x"


@pytest.mark.parametrize(
    "data",
    [
        {"url": "sqlite:///x.db"},
        {"url": "sqlite:///x.db", "table": "t", "query": "SELECT 1"},
        {"url": "not a url", "table": "t"},
        {"url": "sqlite:///x.db", "table": "t", "chunksize": 0},
    ],
)
def test_a_source_needs_a_url_and_one_of_table_or_query(data: dict) -> None:
    with pytest.raises(ValueError):
        SqlSource.model_validate(data)


# --- SQLite -----------------------------------------------------------------


def test_reads_a_table(sqlite_db: tuple[str, pd.DataFrame]) -> None:
    url, data = sqlite_db

    read = read_sql("silo-0", SqlSource(url=url, table="rows"))

    pd.testing.assert_frame_equal(read, data)


def test_streams_a_query_in_chunks(sqlite_db: tuple[str, pd.DataFrame]) -> None:
    url, data = sqlite_db
    source = SqlSource(url=url, query="SELECT x0, label FROM rows", chunksize=7)

    chunks = list(iter_sql("silo-0", source))
    read = read_sql("silo-0", source)

    assert [len(c) for c in chunks] == [7, 7, 7, 2]
    pd.testing.assert_frame_equal(read, data[["x0", "label"]])


def test_a_column_null_in_one_chunk_stays_numeric(tmp_path: Path) -> None:
    data = pd.DataFrame({"x": [None, None, 1, 2, 3], "label": [0, 1, 0, 1, 0]})
    path = tmp_path / "nulls.db"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE t (x INTEGER, label INTEGER)")
        connection.executemany("INSERT INTO t VALUES (?, ?)", data.values.tolist())

    read = read_sql("s", SqlSource(url=f"sqlite:///{path}", table="t", chunksize=2))

    assert read["x"].dtype == np.float64
    assert read["x"].isna().sum() == 2


def test_empty_result_keeps_its_columns(sqlite_db: tuple[str, pd.DataFrame]) -> None:
    url, _ = sqlite_db

    read = read_sql("s", SqlSource(url=url, query="SELECT * FROM rows WHERE 0"))

    assert list(read.columns) == ["x0", "x1", "label"] and len(read) == 0


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ({"table": "nowhere"}, "no such table: table 'nowhere'"),
        ({"query": "SELECT nope FROM rows"}, "query 'SELECT nope FROM rows'"),
    ],
)
def test_missing_table_or_failing_query_names_silo_and_what(
    sqlite_db: tuple[str, pd.DataFrame], source: dict, expected: str
) -> None:
    url, _ = sqlite_db

    with pytest.raises(SiloDataError) as caught:
        read_sql("silo-7", SqlSource(url=url, **source))

    assert caught.value.silo == "silo-7"
    assert caught.value.reason.startswith("silo 'silo-7': ")
    assert expected in caught.value.reason


def test_bad_url_and_unreachable_server_hide_the_password() -> None:
    secret = "Zq9-very-secret"
    unknown = SqlSource(url=f"nosuchdb://fl:{secret}@h/x", table="t")
    refused = SqlSource(
        url=f"postgresql+psycopg://fl:{secret}@127.0.0.1:1/x?connect_timeout=3",
        query="SELECT 1",
    )

    for source in (unknown, refused):
        with pytest.raises(SiloDataError) as caught:
            read_sql("silo-1", source)
        assert "silo 'silo-1'" in caught.value.reason
        assert secret not in caught.value.reason
        assert "fl:***@" in caught.value.reason


# --- the central spec -------------------------------------------------------


def base_spec(**silo: Any) -> dict[str, Any]:
    return {
        "name": "sql",
        "task": "classification",
        "target": "label",
        "rounds": 1,
        "silos": [{"name": "a", **silo}],
    }


def test_spec_takes_sql_sources_and_resolves_sqlite_files(tmp_path: Path) -> None:
    path = tmp_path / "federation.yaml"
    data = base_spec(
        train={"url": "sqlite:///db/a.db", "table": "train"},
        test={"url": "sqlite:///db/a.db", "query": "SELECT * FROM test"},
    )
    path.write_text(yaml.safe_dump(data))

    spec = load_spec(path)

    train = spec.silos[0].train
    assert isinstance(train, SqlSource) and train.table == "train"
    assert train.url == f"sqlite:///{(tmp_path / 'db' / 'a.db').resolve()}"
    again = FederationSpec.model_validate(spec.model_dump(mode="json"))
    assert again == spec


@pytest.mark.parametrize(
    ("silo", "message"),
    [
        ({"train": {"url": "sqlite:///a.db"}}, "silos.0.train.sql: give exactly one"),
        ({"train": {"table": "t"}}, "silos.0.train.sql.url: Field required"),
        (
            {"train": {"url": "sqlite:///a.db", "tabel": "t"}},
            "train.sql.tabel: unknown",
        ),
        ({"test": "a.parquet"}, "silos.0: test needs train"),
        (
            {"train": {"url": "postgresql://fl:pw@db/x", "table": "t"}},
            "silos.0: train.url holds a password",
        ),
    ],
)
def test_spec_errors_name_the_field(silo: dict, message: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec(base_spec(**silo), source="f.yaml")

    assert message in caught.value.reason
    assert "pw@" not in caught.value.reason


# --- a federation over SQL silos --------------------------------------------


def sql_federation(
    data_dir: Path, url: str, to_db: Any, tables: str = "silo_{i}_{split}"
) -> dict[str, Any]:
    """Load the silos' Parquet files into a database; return a spec reading them."""
    spec = yaml.safe_load((data_dir / "federation.yaml").read_text())
    for i, silo in enumerate(spec["silos"]):
        for split in ("train", "test"):
            table = tables.format(i=i, split=split)
            to_db(pd.read_parquet(data_dir / silo["name"] / f"{split}.parquet"), table)
        silo["train"] = {"url": url, "table": tables.format(i=i, split="train")}
        silo["test"] = {
            "url": url,
            "query": f"SELECT * FROM {tables.format(i=i, split='test')}",
            "chunksize": 16,
        }
    return spec


@pytest.mark.integration
def test_federation_reads_sqlite_silos_with_the_file_schema_checks(
    breast_cancer_dir: Path, tmp_path: Path, shared_cluster: str, prefect_api: None
) -> None:
    from flows.training import federated_training

    path = tmp_path / "silos.db"
    connection = sqlite3.connect(path)

    def to_db(data: pd.DataFrame, table: str) -> None:
        data.to_sql(table, connection, index=False)

    raw = sql_federation(breast_cancer_dir, f"sqlite:///{path}", to_db)
    connection.commit()
    raw.update(
        rounds=2,
        checkpoints=str(tmp_path / "store"),
        cluster={"address": shared_cluster},
    )
    spec = parse_spec(raw)

    summary = federated_training(spec)

    assert summary["rounds"] == [1, 2]
    assert summary["final_metrics"]["accuracy"] > 0.85
    # A SQL silo whose table lacks a feature is named with the column, as for files.
    connection.execute("ALTER TABLE silo_2_train DROP COLUMN mean_radius")
    connection.commit()
    connection.close()
    with pytest.raises(SiloDataError) as caught:
        federated_training(spec)
    assert caught.value.silo == "silo-2" and caught.value.column == "mean_radius"


# --- PostgreSQL -------------------------------------------------------------

PG_USER, PG_PASSWORD, PG_READER = "fedsilo", "pg-Secret-42", "fl_reader"


def _pg_bindir() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(candidates[-1]).parent if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def postgres() -> Iterator[dict[str, str]]:
    """A temporary PostgreSQL cluster on 127.0.0.1; yields its URLs."""
    bindir = _pg_bindir()
    if bindir is None:
        pytest.skip(
            "PostgreSQL server binaries (initdb, pg_ctl) are not installed; "
            ".ci/run installs them (apt-get install postgresql)"
        )
    as_user: list[str] = []
    owner = None
    if os.geteuid() == 0:
        import pwd

        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run it")
        as_user = ["runuser", "-u", "postgres", "--"]
    base = Path(tempfile.mkdtemp(prefix="fedsilo-pg-"))
    data, port = base / "data", _free_port()
    (base / "pw").write_text(PG_PASSWORD + "\n")
    if owner is not None:
        for item in (base, base / "pw"):
            os.chown(item, owner.pw_uid, owner.pw_gid)

    def run(*command: str) -> None:
        subprocess.run(
            [*as_user, *command], check=True, capture_output=True, timeout=60
        )

    try:
        run(
            str(bindir / "initdb"),
            "-D",
            str(data),
            "-U",
            PG_USER,
            "-E",
            "UTF8",
            "--pwfile",
            str(base / "pw"),
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--no-sync",
        )
        (data / "pg_hba.conf").write_text(
            "local all all trust\n"
            f"host all {PG_READER} 127.0.0.1/32 trust\n"
            "host all all 127.0.0.1/32 scram-sha-256\n"
        )
        options = (
            f"-c listen_addresses=127.0.0.1 -p {port} -c fsync=off "
            f"-c unix_socket_directories={base}"
        )
        run(
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(base / "log"),
            "-o",
            options,
            "-w",
            "-t",
            "30",
            "start",
        )
    except subprocess.CalledProcessError as error:
        shutil.rmtree(base, ignore_errors=True)
        raise RuntimeError(f"cannot start PostgreSQL: {error.stderr!r}") from None
    url = f"postgresql+psycopg://{PG_USER}:{PG_PASSWORD}@127.0.0.1:{port}/postgres"
    try:
        import sqlalchemy as sa

        engine = sa.create_engine(url)
        with engine.begin() as connection:
            connection.execute(sa.text(f"CREATE ROLE {PG_READER} LOGIN"))
            connection.execute(
                sa.text(
                    f"ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO {PG_READER}"
                )
            )
        engine.dispose()
        yield {
            "url": url,
            "reader_url": f"postgresql+psycopg://{PG_READER}@127.0.0.1:{port}/postgres",
        }
    finally:
        subprocess.run(
            [
                *as_user,
                str(bindir / "pg_ctl"),
                "-D",
                str(data),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
            capture_output=True,
            timeout=60,
            check=False,
        )
        shutil.rmtree(base, ignore_errors=True)


def pg_write(url: str, data: pd.DataFrame, table: str) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    data.to_sql(table, engine, index=False, if_exists="replace")
    engine.dispose()


def test_postgres_table_and_query_stream_in_chunks(postgres: dict[str, str]) -> None:
    data = frame(n=50, seed=1)
    pg_write(postgres["url"], data, "rows")

    table = read_sql("pg", SqlSource(url=postgres["url"], table="rows", chunksize=8))
    query = SqlSource(
        url=postgres["url"], query="SELECT * FROM rows ORDER BY x1, x0", chunksize=8
    )
    chunks = list(iter_sql("pg", query))

    pd.testing.assert_frame_equal(table, data)
    assert [len(c) for c in chunks] == [8] * 6 + [2]
    assert sorted(pd.concat(chunks).x0) == sorted(data.x0)


def test_postgres_errors_name_the_table_and_hide_the_password(
    postgres: dict[str, str],
) -> None:
    wrong = postgres["url"].replace(PG_PASSWORD, "Wrong-Pass-9")
    cases = [
        (SqlSource(url=postgres["url"], table="missing"), "no such table"),
        (SqlSource(url=postgres["url"], query="SELECT * FROM missing"), "missing"),
        (SqlSource(url=wrong, table="rows"), "password authentication failed"),
    ]
    for source, expected in cases:
        with pytest.raises(SiloDataError) as caught:
            read_sql("silo-pg", source)
        reason = caught.value.reason
        assert reason.startswith("silo 'silo-pg': cannot read") or "no such" in reason
        assert expected in reason
        assert PG_PASSWORD not in reason and "Wrong-Pass-9" not in reason
        assert f"{PG_USER}:***@" in reason


@pytest.mark.integration
def test_federation_reads_postgres_silos(
    postgres: dict[str, str],
    breast_cancer_dir: Path,
    tmp_path: Path,
    shared_cluster: str,
    prefect_api: None,
) -> None:
    from flows.training import federated_training

    def to_db(data: pd.DataFrame, table: str) -> None:
        pg_write(postgres["url"], data, table)

    # The central spec names a passwordless role; credentials stay off the spec.
    raw = sql_federation(breast_cancer_dir, postgres["reader_url"], to_db)
    raw.update(
        rounds=2,
        checkpoints=str(tmp_path / "store"),
        cluster={"address": shared_cluster},
    )

    summary = federated_training(parse_spec(raw))

    assert summary["rounds"] == [1, 2]
    assert summary["final_metrics"]["accuracy"] > 0.85
