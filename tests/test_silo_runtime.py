"""The silo runtime (tasks/silo/runtime.py) on real worker processes.

Every worker of the shared cluster preloads ``fedsilo.silo``, as a silo's own
worker does. The coordinator's side is a :class:`~tasks.silo.link.SiloLink`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pytest
from distributed import Client

from fedsilo.cluster import SiloCluster
from tasks.protocol.codec import RemoteError
from tasks.silo.batch import SiloFault
from tasks.silo.data import FitConfig, SiloData
from tasks.silo.link import SiloLink

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


def hold_rows(link: SiloLink) -> None:
    """Have silo-0 prepare 40 rows and hold them as ``prepared``."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(40, 3)), columns=["a", "b", "c"])
    frame["y"] = np.arange(40) % 2
    data = SiloData(SILO, frame.iloc[:30], frame.iloc[30:], "file")
    link.each(
        "prepare",
        {SILO: (data, ["a", "b", "c"], "y", None, None, None)},
        name="prepare",
        keep="prepared",
    )


def held_runs(client: Client, address: str) -> list[str]:
    def runs(dask_worker: Any) -> list[str]:
        return list(dask_worker.plugins["fedsilo-silo"].runs())

    return list(client.run(runs, workers=[address])[address])


@pytest.mark.integration
def test_a_batch_runs_at_the_silo_on_the_rows_it_holds(client: Client) -> None:
    link = link_to(client, "runtime-batch")
    try:
        hold_rows(link)

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
        assert "runtime-batch" in held_runs(client, address)
        kinds = client.run(
            lambda dask_worker: {type(v).__name__ for v in dask_worker.data.values()},
            workers=[address],
        )
        assert kinds[address] <= {"bool"}  # a setup task's acknowledgement at most
    finally:
        link.close()


@pytest.mark.integration
def test_closing_the_runs_channel_frees_what_the_silo_held(client: Client) -> None:
    link = link_to(client, "runtime-free")
    hold_rows(link)
    address = link.address(SILO)
    assert "runtime-free" in held_runs(client, address)

    link.close()

    deadline = time.monotonic() + 10
    while "runtime-free" in held_runs(client, address) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "runtime-free" not in held_runs(client, address)


@pytest.mark.integration
def test_rows_the_silo_does_not_hold_are_one_clear_error(client: Client) -> None:
    link = link_to(client, "runtime-missing")
    try:
        gone = link.ref(SILO, "prepared")
        with pytest.raises(RemoteError, match=r"silo 'silo-0' holds no prepared"):
            link.ask(SILO, "evaluate", ([SILO], [gone], PARAMS, CONFIG, 1), 30)
    finally:
        link.close()
