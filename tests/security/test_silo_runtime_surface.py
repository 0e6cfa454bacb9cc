"""Attacks on a silo worker's surface: only its runtime's operations run there.

SECURITY.md promises that a silo runs only the operations of its runtime's
fixed table, over a run's channel, and that nothing else Dask offers reaches
its process: no ``Client.run``, no task, no ``get_data``, no pickle. Each test
is an attack on real worker processes (the embedded cluster's, which load the
runtime as a silo's own worker does) that would leave a file behind if the
promise broke.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from distributed import Client
from distributed.comm import connect
from distributed.protocol.serialize import ToPickle

from fedsilo.cluster import SiloCluster, embedded_cluster
from fedsilo.errors import SiloFailedError
from tasks.protocol.codec import RemoteError
from tasks.silo.link import SiloLink
from tests._probe import probe

SILO = "silo-1"


class Touch:
    """Unpickling this creates ``path``: proof that a pickle ran."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.path}",))


def touch(path: str) -> str:
    """A function an attacker would like to run at the silo."""
    Path(path).touch()
    return "ran"


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
    with pytest.raises(SiloFailedError, match="not a silo operation"):
        link.each("os:system", {SILO: (f"touch {marker}",)})

    assert not marker.exists()


@pytest.mark.integration
def test_client_run_and_get_data_are_refused_at_the_silo(
    link: SiloLink, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned-by-run"
    client, address = link.cluster.client, link.address(SILO)

    with pytest.raises(Exception, match="'run' handler has been explicitly disallowed"):
        client.run(touch, str(marker), workers=[address])

    async def get_data() -> Any:
        comm = await connect(address)
        try:
            await comm.write({"op": "get_data", "keys": ["x"], "reply": True})
            return await comm.read()
        finally:
            comm.abort()

    reply = client.sync(get_data)
    assert reply["status"] == "uncaught-error"
    assert "'get_data' handler has been explicitly disallowed" in reply[
        "exception_text"
    ]
    assert not marker.exists()
    assert probe(address, "dask-data") == 0


@pytest.mark.integration
def test_a_pickle_sent_to_the_silo_is_not_unpickled(
    link: SiloLink, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned-by-pickle"
    address = link.address(SILO)

    async def send() -> None:
        comm = await connect(address)
        try:  # any op: the payload is decoded before the op is looked up
            await comm.write({"op": "identity", "x": ToPickle(Touch(marker))})
            await asyncio.wait_for(comm.read(), 5)
        except Exception:
            pass  # the silo drops the connection: the message did not decode
        finally:
            comm.abort()

    link.cluster.client.sync(send)
    time.sleep(0.5)

    assert not marker.exists()
    # The silo still serves its run.
    assert probe(address, "holdings", "attack-surface") == []


@pytest.mark.integration
def test_a_task_submitted_to_a_silo_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned-by-task"
    cluster = embedded_cluster(["victim"])  # its own: the silo leaves afterwards
    try:
        with Client(cluster, set_as_default=False) as client:
            (address,) = client.scheduler_info(n_workers=-1)["workers"]
            future = client.submit(touch, str(marker), workers=[address], pure=False)
            with pytest.raises(TimeoutError):
                future.result(timeout=5)
            assert not marker.exists()
    finally:
        cluster.close()


@pytest.mark.integration
def test_a_replayed_channel_token_opens_nothing(link: SiloLink) -> None:
    from tasks.silo.channel import Channel, ChannelError, new_token
    from tasks.silo.link import request_channel

    address = link.address(SILO)
    token = new_token()
    endpoint = link.cluster.client.sync(
        request_channel, address, SILO, "attack-replay", token, (), {}
    )
    honest = Channel.connect(address, endpoint, token, None, timeout=10)
    try:
        # Whoever saw the token on the wire replays it: the silo listened for
        # one connection, and that one is the coordinator's.
        with pytest.raises((ChannelError, OSError)):
            Channel.connect(address, endpoint, token, None, timeout=5)
    finally:
        honest.close()
    # Nor does the same token reopen the run's channel once it is closed.
    with pytest.raises((ChannelError, OSError)):
        Channel.connect(address, endpoint, token, None, timeout=5)
