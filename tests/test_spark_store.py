"""Spark reads the checkpoint store as docs/checkpoints.md says, row for row as DuckDB.

Real PySpark in ``local[1]`` mode (Java from the machine; .ci/run installs
Debian's), one session for the module, started from the directory that holds
the store, as the doc's recipes assume: relative paths resolve against the
JVM's working directory. The store holds a real averaged run and a real
boosted run (tests/_checkpoint_runs.py). Every query the doc shows for DuckDB
and Spark runs in both, on the tables each engine's recipe registers, and the
answers must be equal, row for row.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _checkpoint_runs import (
    DOCS,
    TrainedStore,
    documented,
    shared_queries,
    trained_store,
)
from test_analytics import duckdb_tables, run_query

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings(
        "ignore:PySpark does not yet fully support pandas:FutureWarning"
    ),
    pytest.mark.skipif(
        shutil.which("java") is None,
        reason="Spark needs Java: no `java` on PATH (.ci/run installs Debian's "
        "default-jre-headless)",
    ),
]

DOC = documented()
# Lighter on a small machine: one core, no UI, the JIT's quick tier only.
SPARK_CONFIG = {
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.driver.host": "127.0.0.1",
    "spark.driver.bindAddress": "127.0.0.1",
    "spark.sql.shuffle.partitions": "1",
    "spark.sql.adaptive.enabled": "false",
    "spark.sql.codegen.wholeStage": "false",
    "spark.sql.session.timeZone": "UTC",
    "spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC",
}


@pytest.fixture(scope="module")
def trained(
    breast_cancer_dir: Path,
    shared_cluster: str,
    prefect_api: None,
    tmp_path_factory: pytest.TempPathFactory,
) -> TrainedStore:
    return trained_store(tmp_path_factory, breast_cancer_dir, shared_cluster)


@pytest.fixture(scope="module")
def spark(trained: TrainedStore) -> Iterator[Any]:
    """A local[1] session with the doc's four tables; its JVM ends with the module."""
    from pyspark import SparkContext
    from pyspark.sql import SparkSession

    with pytest.MonkeyPatch.context() as env:
        env.chdir(trained.base)  # the JVM starts here: the doc's relative paths
        env.setenv("SPARK_LOCAL_IP", "127.0.0.1")
        builder = SparkSession.builder.master("local[1]").appName("fedsilo-tests")
        for key, value in SPARK_CONFIG.items():
            builder = builder.config(key, value)
        session = builder.getOrCreate()
        gateway = SparkContext._gateway
        try:
            session.sparkContext.setLogLevel("ERROR")
            exec(compile(DOC["spark_tables"].code, str(DOCS), "exec"), {})
            yield session
        finally:
            session.stop()
            if gateway is not None:  # the JVM exits once its stdin closes
                process = gateway.proc
                gateway.shutdown()
                process.stdin.close()
                process.wait(timeout=120)
                SparkContext._gateway = None
                SparkContext._jvm = None


@pytest.fixture
def in_base(trained: TrainedStore, monkeypatch: pytest.MonkeyPatch) -> TrainedStore:
    monkeypatch.chdir(trained.base)
    return trained


def _same(value: Any) -> Any:
    """Return ``value`` comparable across engines (NaN equals NaN)."""
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    return value


@pytest.mark.parametrize("name", [b.name for b in shared_queries()])
def test_spark_gives_duckdbs_rows(name: str, spark: Any, in_base: TrainedStore) -> None:
    columns, expected = run_query(duckdb_tables(), name)

    frame = spark.sql(DOC[name].code)
    rows = [tuple(row) for row in frame.collect()]

    assert frame.columns == columns
    assert [tuple(map(_same, r)) for r in rows] == [
        tuple(map(_same, r)) for r in expected
    ]
    if name != "unlisted_runs":  # empty on a current store, by design
        assert rows, f"{name}: no rows"


def test_spark_types_the_partition_columns_as_the_doc_says(spark: Any) -> None:
    for table in ("manifest", "metrics", "models", "trees"):
        types = dict(spark.table(table).dtypes)

        assert (types["federation"], types["run"]) == ("string", "string"), table
        if table != "manifest":
            assert types["round"] == "int", table


def test_the_reads_the_doc_warns_against_fail_or_drop_columns(
    spark: Any, trained: TrainedStore
) -> None:
    from pyspark.errors import AnalysisException, PySparkException

    with pytest.raises(AnalysisException, match="PATH_NOT_FOUND"):
        spark.read.parquet("checkpoints/**/metrics.parquet")
    columns = spark.read.parquet(
        "checkpoints/federation=*/run=*/round=*/metrics.parquet"
    ).columns
    assert not {"federation", "run", "round"} & set(columns)
    with pytest.raises(PySparkException, match="CONFLICTING_PARTITION_COLUMN_NAMES"):
        spark.read.parquet("checkpoints")  # manifest.parquet beside round=*/
    assert os.path.isdir(trained.root / "federation=breast-cancer")
