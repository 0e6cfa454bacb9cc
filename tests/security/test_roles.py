"""Attacks with the federation's own certificates: roles, names and pickles.

Every silo holds a certificate the federation's CA signed, so TLS alone lets
any silo talk to the scheduler and to the other silos' workers. SECURITY.md
promises more: the scheduler admits clients only with the coordinator's
role and a worker only under the silo name its certificate names; a silo's
worker serves only the scheduler and the coordinator; nobody unpickles what a
silo sends. Each test attacks real processes (``dask scheduler --preload
fedsilo.scheduler``, ``fedsilo worker``) on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest
from distributed import Client
from distributed.comm import connect
from distributed.core import Server
from distributed.protocol.serialize import ToPickle

from fedsilo.certs import tls_security
from fedsilo.errors import SpecError
from fedsilo.peers import PeerRefusedError, check_plain_tcp
from fedsilo.spec import parse_spec
from tasks.silo.link import request_channel
from tests import test_tls
from tests.test_tls import Processes, _tls_args, spec_data, worker_names

# test_tls's fixtures: a PKI, a guarded TLS scheduler, processes ended after.
pki = test_tls.pki
processes = test_tls.processes
tls_scheduler = test_tls.tls_scheduler
two_silos = test_tls.two_silos


class Touch:
    """Unpickling this creates ``path``: proof that a pickle ran."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.path}",))


def _wait_for(predicate: Any, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_a_silo_certificate_cannot_act_as_the_coordinator(
    tls_scheduler: str, processes: Processes, pki: Path
) -> None:
    security = tls_security(**_tls_args(pki, "silo-0"))

    with pytest.raises(Exception):  # noqa: B017  (Dask raises its own types)
        Client(tls_scheduler, timeout=10, security=security, set_as_default=False)

    assert "may not connect as a client" in processes.log("scheduler")


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_a_silo_cannot_register_under_another_silos_name(
    tls_scheduler: str, processes: Processes, pki: Path, two_silos: Path
) -> None:
    config = processes.directory / "impostor.yaml"
    config.write_text(f"train: {two_silos / 'silo-1' / 'train.parquet'}\n")
    impostor = processes.start(
        "impostor",
        "-m", "fedsilo.cli", "worker",
        "--scheduler", tls_scheduler, "--silo", "silo-1", "--data", str(config),
        "--tls-ca-file", str(pki / "ca.pem"),
        "--tls-cert", str(pki / "silo-0.pem"),
        "--tls-key", str(pki / "silo-0-key.pem"),
        "--timeout", "10",
    )  # fmt: skip

    assert impostor.wait(timeout=120) != 0
    assert "silo-1" not in worker_names(tls_scheduler, pki)
    log = processes.log("scheduler")
    assert "may not register a worker named 'silo-1'" in log, log


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_a_silo_cannot_reach_another_silos_worker(
    tls_scheduler: str,
    processes: Processes,
    pki: Path,
    two_silos: Path,
    tmp_path: Path,
) -> None:
    processes.worker(tls_scheduler, "silo-1", two_silos / "silo-1", pki)
    _wait_for(lambda: "silo-1" in worker_names(tls_scheduler, pki))
    address = worker_names(tls_scheduler, pki)["silo-1"]
    marker = tmp_path / "pwned-by-a-peer"
    as_silo_0 = tls_security(**_tls_args(pki, "silo-0"))

    async def attack() -> None:
        args = as_silo_0.get_connection_args("client")
        try:
            comm = await connect(address, **args)
            await comm.write({"op": "identity", "x": ToPickle(Touch(marker))})
            await asyncio.wait_for(comm.read(), 5)
        except Exception:
            return  # closed before a byte was read
        raise AssertionError("silo-1 answered another silo")

    asyncio.run(attack())
    time.sleep(0.5)

    assert not marker.exists()
    _wait_for(lambda: "refused a connection" in processes.log("silo-1-federation"))
    assert "silo:silo-0" in processes.log("silo-1-federation")


@pytest.mark.integration
def test_the_coordinator_does_not_unpickle_a_silos_reply(tmp_path: Path) -> None:
    marker = tmp_path / "pwned-coordinator"

    async def fake_channel(**_: Any) -> Any:
        return {"host": ToPickle(Touch(marker)), "port": 1}

    async def attack() -> None:
        fake = Server({"fedsilo-channel": fake_channel})
        await fake.listen("tcp://127.0.0.1:0")
        try:
            with pytest.raises(Exception, match=r"(?i)pickle|endpoint"):
                await request_channel(
                    fake.address, "silo-x", "run", bytes(32), (), {}
                )
        finally:
            await fake.close()

    asyncio.run(attack())

    assert not marker.exists()


def test_plain_tcp_beyond_loopback_needs_the_insecure_opt_in() -> None:
    with pytest.raises(PeerRefusedError, match="--insecure-plain-tcp"):
        check_plain_tcp("tcp://10.0.0.5:8786", False, "silo 'a'")
    check_plain_tcp("tcp://10.0.0.5:8786", True, "silo 'a'")  # said insecure
    check_plain_tcp("tcp://127.0.0.1:8786", False, "silo 'a'")
    check_plain_tcp("tls://10.0.0.5:8786", False, "silo 'a'")

    data = {**spec_data(address="tcp://10.0.0.5:8786")}
    with pytest.raises(SpecError, match="insecure_plain_tcp"):
        parse_spec(data)
    data["cluster"]["insecure_plain_tcp"] = True
    assert parse_spec(data).cluster.insecure_plain_tcp
