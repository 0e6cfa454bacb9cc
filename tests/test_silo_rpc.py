"""Round batches sent straight to silo workers (tasks/silo/rpc.py), for real."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from distributed import Client

from tasks.protocol.codec import RemoteError
from tasks.silo import rpc as silo_rpc
from tasks.silo.batch import SiloFault


def test_futures_travel_as_keys() -> None:
    class FakeFuture:  # stands in only for the isinstance check below
        key = "prepared-a"

    original = silo_rpc.Future
    silo_rpc.Future = FakeFuture  # type: ignore[misc,assignment]
    try:
        out = silo_rpc.by_key((["a"], [FakeFuture(), None], {"w": 1}, 3))
    finally:
        silo_rpc.Future = original  # type: ignore[misc]
    assert out == (["a"], [silo_rpc.Resident("prepared-a"), None], {"w": 1}, 3)


@pytest.fixture
def client(shared_cluster: str) -> Iterator[Client]:
    with Client(shared_cluster, set_as_default=False) as c:
        yield c


def _worker(client: Client) -> str:
    address = sorted(client.scheduler_info(n_workers=-1)["workers"])[0]
    client.submit(
        silo_rpc.installed, workers=[address], allow_other_workers=False, pure=False
    ).result(timeout=30)
    return address


@pytest.mark.integration
def test_a_batch_runs_on_the_worker_with_its_resident_rows(client: Client) -> None:
    from tasks.silo.data import FitConfig, PreparedSilo

    address = _worker(client)
    name = client.scheduler_info(n_workers=-1)["workers"][address]["name"]
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 3)), np.arange(40) % 2
    prepared = PreparedSilo("silo-x", X[:30], y[:30], X[30:], y[30:])
    resident = client.scatter(prepared, workers=[address], direct=True)
    config = FitConfig(
        kind="sgd-logistic",
        model_params={},
        task="classification",
        classes=(0, 1),
        n_features=3,
        epochs=1,
        batch_size=None,
        seed=0,
    )
    params = {"coef_": np.zeros((1, 3)), "intercept_": np.zeros(1)}

    replies = client.sync(
        silo_rpc.call,
        client,
        address,
        "evaluate",
        (["silo-x"], [resident], params, config, 1),
    )

    assert len(replies) == 1 and not isinstance(replies[0], SiloFault)
    scored = replies[0]
    assert {e.split for e in scored} == {"train", "test"}
    assert {e.worker for e in scored} == {name}  # stamped with the worker's name
    assert {e.n_samples for e in scored} == {30, 10}


@pytest.mark.integration
def test_rows_missing_from_the_worker_are_one_clear_error(client: Client) -> None:
    address = _worker(client)
    gone = silo_rpc.Resident("prepared-nobody-r0")

    with pytest.raises(RemoteError, match=r"RuntimeError: .*not on this worker"):
        client.sync(
            silo_rpc.call, client, address, "evaluate", (["x"], [gone], {}, None, 1)
        )
