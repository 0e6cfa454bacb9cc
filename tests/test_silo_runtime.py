"""The silo runtime (tasks/silo/runtime.py) on real worker processes.

Every worker of the shared cluster preloads ``fedsilo.silo``, as a silo's own
worker does. The coordinator's side is a :class:`~tasks.silo.link.SiloLink`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from distributed import Client

from fedsilo.cluster import SiloCluster
from tasks.protocol.codec import RemoteError
from tasks.silo.batch import SiloFault
from tasks.silo.data import FitConfig, SiloSource
from tasks.silo.link import SiloLink
from tests._probe import probe

SILO = "silo-0"
CONFIG = FitConfig(
    kind="sgd-logistic",
    model_params={},
    task="classification",
    classes=(0, 1),
    n_features=3,
    epochs=1,
    batch_size=None,
    seed=0,
)
PARAMS = {"coef_": np.zeros((1, 3)), "intercept_": np.zeros(1)}


@pytest.fixture
def client(shared_cluster: str) -> Iterator[Client]:
    with Client(shared_cluster, set_as_default=False) as c:
        yield c


def link_to(client: Client, run: str) -> SiloLink:
    """Return a link for ``run`` to the shared cluster's silo-0, its channel open."""
    workers = {
        str(w["name"]): a
        for a, w in client.scheduler_info(n_workers=-1)["workers"].items()
    }
    cluster = SiloCluster(client, workers, str(client.scheduler.address), False)
    link = SiloLink(cluster, run, 30)
    link.connect([SILO])
    return link


@pytest.fixture
def rows(tmp_path: Path) -> SiloSource:
    """40 rows of silo-0 in Parquet files: 30 to train on, 10 to test."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(40, 3)), columns=["a", "b", "c"])
    frame["y"] = np.arange(40) % 2
    frame.iloc[:30].to_parquet(tmp_path / "train.parquet")
    frame.iloc[30:].to_parquet(tmp_path / "test.parquet")
    return SiloSource(
        SILO, str(tmp_path / "train.parquet"), str(tmp_path / "test.parquet"), 0.0, {}
    )


def hold_rows(link: SiloLink, source: SiloSource) -> None:
    """Have silo-0 read and prepare its rows and hold them as ``prepared``."""
    link.each("load", {SILO: (source, "y", 0)}, keep="rows")
    link.each(
        "prepare",
        {SILO: (link.ref(SILO, "rows"), ["a", "b", "c"], "y", None, None, None)},
        keep="prepared",
    )


def held_runs(address: str) -> list[str]:
    return list(probe(address, "runs"))


@pytest.mark.integration
def test_a_batch_runs_at_the_silo_on_the_rows_it_holds(
    client: Client, rows: SiloSource
) -> None:
    link = link_to(client, "runtime-batch")
    try:
        hold_rows(link, rows)

        replies = link.ask(
            SILO,
            "evaluate",
            ([SILO], [link.ref(SILO, "prepared")], PARAMS, CONFIG, 1),
            30,
        )

        assert len(replies) == 1 and not isinstance(replies[0], SiloFault)
        scored = replies[0]
        assert {e.split for e in scored} == {"train", "test"}
        assert {e.worker for e in scored} == {SILO}  # stamped with the worker's name
        assert {e.n_samples for e in scored} == {30, 10}
        # The rows are the runtime's, not Dask data under a key.
        address = link.address(SILO)
        assert "runtime-batch" in held_runs(address)
        assert probe(address, "dask-data") == 0
    finally:
        link.close()


@pytest.mark.integration
def test_closing_the_runs_channel_frees_what_the_silo_held(
    client: Client, rows: SiloSource
) -> None:
    link = link_to(client, "runtime-free")
    hold_rows(link, rows)
    address = link.address(SILO)
    assert "runtime-free" in held_runs(address)

    link.close()

    deadline = time.monotonic() + 10
    while "runtime-free" in held_runs(address) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "runtime-free" not in held_runs(address)


@pytest.mark.integration
def test_rows_the_silo_does_not_hold_are_one_clear_error(client: Client) -> None:
    link = link_to(client, "runtime-missing")
    try:
        gone = link.ref(SILO, "prepared")
        with pytest.raises(RemoteError, match=r"silo 'silo-0' holds no prepared"):
            link.ask(SILO, "evaluate", ([SILO], [gone], PARAMS, CONFIG, 1), 30)
    finally:
        link.close()
