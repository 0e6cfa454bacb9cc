"""Shared fixtures: one Prefect test API and one silo cluster per session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dask
import pytest

from fedsilo.prefect_env import apply_defaults, quiet_dask_logs

# Before Prefect starts its test API, so the subprocess inherits them.
apply_defaults(quiet=False)
# Embedded silo workers also load the tests' probe (tests/_probe.py): the
# silo's guard refuses Client.run, so tests look into a worker through it.
dask.config.set({"distributed.worker.preload": ["tests._probe"]})

SHARED_SILOS = ("silo-0", "silo-1", "silo-2", "silo-3")


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[None]:
    """A temporary Prefect API with its own database for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def shared_cluster() -> Iterator[str]:
    """A real scheduler with one worker process per silo, on loopback."""
    from fedsilo.cluster import embedded_cluster

    quiet_dask_logs()
    cluster = embedded_cluster(list(SHARED_SILOS))
    try:
        yield str(cluster.scheduler_address)
    finally:
        cluster.close()


@pytest.fixture(scope="session")
def breast_cancer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Breast cancer split iid over the four shared silos, as Parquet files."""
    from datasets.writer import write_federation

    out = tmp_path_factory.mktemp("breast-cancer") / "iid"
    write_federation("breast_cancer", n_silos=4, partition="iid", out=out, rounds=3)
    return out
