"""Attacks on the silo runtime's surface: only its operations run, its holdings hide.

SECURITY.md promises that a silo's runtime runs only the operations of its
fixed table and that what it holds for a run is not Dask data. Each test is
an attack on the shared cluster's real worker processes that would leave a
trace if the promise broke: an operation naming a function that would touch a
file, over the run's channel and as a setup task, and a search of the
worker's Dask data for the rows the silo holds.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from distributed import Client

from fedsilo.cluster import SiloCluster
from fedsilo.errors import SiloFailedError
from tasks.protocol.codec import RemoteError
from tasks.silo.data import SiloData
from tasks.silo.link import SiloLink

SILO = "silo-1"


@pytest.fixture
def link(shared_cluster: str) -> Iterator[SiloLink]:
    with Client(shared_cluster, set_as_default=False) as client:
        info = client.scheduler_info(n_workers=-1)["workers"]
        workers = {str(w["name"]): a for a, w in info.items()}
        cluster = SiloCluster(client, workers, shared_cluster, False)
        opened = SiloLink(cluster, "attack-surface", 30)
        opened.connect([SILO])
        try:
            yield opened
        finally:
            opened.close()


@pytest.mark.integration
def test_an_operation_outside_the_table_is_refused_over_the_channel(
    link: SiloLink, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned-over-channel"

    for name in ("os:system", "subprocess:getoutput", "../os:system"):
        with pytest.raises(RemoteError, match="not a silo operation"):
            link.ask(SILO, name, (f"touch {marker}",), 30)

    assert not marker.exists()


@pytest.mark.integration
def test_an_operation_outside_the_table_is_refused_as_a_setup_task(
    link: SiloLink, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned-as-task"

    with pytest.raises(SiloFailedError, match="not a silo operation"):
        link.each("os:system", {SILO: (f"touch {marker}",)}, name="attack")

    assert not marker.exists()


@pytest.mark.integration
def test_held_rows_are_not_among_the_workers_dask_data(link: SiloLink) -> None:
    secret = 271828.5  # a value only this silo's rows hold
    frame = pd.DataFrame({"a": np.arange(30.0), "y": np.arange(30) % 2})
    frame.loc[7, "a"] = secret
    data = SiloData(SILO, frame.iloc[:20], frame.iloc[20:], "file")
    link.each(
        "prepare",
        {SILO: (data, ["a"], "y", None, None, None)},
        name="prepare",
        keep="prepared",
    )

    def search(dask_worker: Any) -> tuple[list[str], bool, list[str]]:
        found = False
        kinds = sorted({type(v).__name__ for v in dask_worker.data.values()})
        for value in dask_worker.data.values():
            arrays = [getattr(value, f, None) for f in ("X_train", "X_test")]
            found |= any(
                isinstance(a, np.ndarray) and (a == secret).any() for a in arrays
            )
        runtime = dask_worker.plugins["fedsilo-silo"]
        return kinds, found, runtime.runs()

    address = link.address(SILO)
    client = link.cluster.client
    stored, found, runs = client.run(search, workers=[address])[address]

    assert "attack-surface" in runs  # the silo does hold the rows ...
    # ... but not as Dask data: at most a setup task's acknowledgement stays.
    assert set(stored) <= {"bool"} and not found
