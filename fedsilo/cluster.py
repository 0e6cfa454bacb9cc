"""The Dask side of a federation: one worker per silo, named after it."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from distributed import Client, Nanny, Scheduler, Security, SpecCluster

from fedsilo.errors import ClusterError

if TYPE_CHECKING:
    from fedsilo.spec import TlsSpec


@dataclass(frozen=True, slots=True)
class SiloCluster:
    """A Dask client and the worker address of every silo."""

    client: Client
    workers: dict[str, str]
    address: str
    embedded: bool


def silo_workers(client: Client) -> dict[str, str]:
    """Return {worker name: address} of the workers now connected."""
    info = client.scheduler_info(n_workers=-1)["workers"]
    return {str(w["name"]): address for address, w in info.items()}


def wait_for_silos(
    client: Client, silos: Sequence[str], timeout: float
) -> dict[str, str]:
    """Wait until every silo's worker has joined; raise naming the missing ones."""
    deadline = time.monotonic() + timeout
    while True:
        present = silo_workers(client)
        missing = [s for s in silos if s not in present]
        if not missing:
            return {s: present[s] for s in silos}
        if time.monotonic() >= deadline:
            raise ClusterError(
                f"no worker for silo(s) {missing} at {client.scheduler.address} after "
                f"{timeout:g}s (workers present: {sorted(present) or 'none'}); start "
                "each with `dask worker ADDRESS --name SILO`"
            )
        time.sleep(0.1)


def _tls_security(tls: TlsSpec | None) -> Security | None:
    """Return the coordinator's mutual-TLS ``Security``, or None for plain TCP."""
    if tls is None:
        return None
    from fedsilo.certs import tls_security

    return tls_security(tls.ca_file, tls.cert_file, tls.key_file)


def embedded_cluster(
    silos: Sequence[str], security: Security | None = None
) -> SpecCluster:
    """Start a scheduler and one single-threaded worker process per silo on loopback.

    With ``security`` (mutual TLS, see ``fedsilo.certs.tls_security``) the
    scheduler, the workers and their nannies speak tls:// only.
    """
    tls: dict[str, Any] = (
        {} if security is None else {"security": security, "protocol": "tls"}
    )
    workers = {
        silo: {
            "cls": Nanny,
            "options": {
                "name": silo,
                "nthreads": 1,
                "host": "127.0.0.1",
                "silence_logs": logging.CRITICAL,
                **tls,
            },
        }
        for silo in silos
    }
    scheduler = {
        "cls": Scheduler,
        "options": {
            "host": "127.0.0.1",
            "port": 0,
            "dashboard": False,
            "dashboard_address": "127.0.0.1:0",
            **tls,
        },
    }
    return SpecCluster(
        workers=workers,
        scheduler=scheduler,
        silence_logs=logging.WARNING,
        security=security,
    )


@contextmanager
def silo_cluster(
    silos: Sequence[str],
    address: str | None,
    timeout: float,
    tls: TlsSpec | None = None,
) -> Iterator[SiloCluster]:
    """Attach to ``address``, or start an embedded cluster; close what we started.

    With ``tls`` every connection is mutual TLS with the coordinator's
    certificate; an embedded cluster then listens on tls://127.0.0.1.
    """
    security = _tls_security(tls)
    if address is None:
        cluster = embedded_cluster(silos, security)
        try:
            client = Client(cluster, timeout=timeout, security=security)
            try:
                workers = wait_for_silos(client, silos, timeout)
                yield SiloCluster(client, workers, cluster.scheduler_address, True)
            finally:
                client.close()
        finally:
            cluster.close()
        return
    try:
        client = Client(address, timeout=timeout, security=security)
    except OSError as error:
        raise ClusterError(
            f"cannot reach the Dask scheduler at {address}: {error}"
        ) from None
    try:
        workers = wait_for_silos(client, silos, timeout)
        yield SiloCluster(client, workers, address, False)
    finally:
        client.close()
