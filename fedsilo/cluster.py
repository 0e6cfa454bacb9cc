"""The Dask side of a federation: the workers that hold the silos' rows.

By default every silo has a worker of its own, named after it. An embedded
cluster can instead run ``cluster.workers`` pool workers, ``pool-0`` ..
``pool-<N-1>``, each holding a contiguous block of the silos in spec order
(:func:`assign_silos`); a silo is still pinned to exactly one worker, and its
rows are only ever read in that worker's process.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dask
from distributed import Client, Nanny, Scheduler, Security, SpecCluster

from fedsilo.errors import ClusterError

if TYPE_CHECKING:
    from fedsilo.spec import FederationSpec, TlsSpec

#: What the fork server imports once, so that every embedded worker forked from
#: it starts with Dask, pandas, pyarrow and scikit-learn already loaded (the
#: libraries the silo code needs; named directly, they are the same modules in
#: a checkout and in an installed wheel).
FORKSERVER_PRELOAD = (
    "distributed",
    "pandas",
    "pyarrow.parquet",
    "sklearn.linear_model",
    "sklearn.neural_network",
    "fedsilo.silo",
)
#: Dask settings of the embedded workers: a 1 s admin tick (default 20 ms)
#: halves what an idle worker costs in CPU (docs/benchmarks.md).
#: Embedded workers: a 1 s admin tick (idle workers wake less), and no
#: statistical profiler (it samples every thread every 10 ms for a dashboard
#: the embedded cluster does not serve).
WORKER_CONFIG = {
    "distributed.admin.tick.interval": "1s",
    "distributed.worker.profile.enabled": False,
}
#: The module a silo worker preloads: it installs the silo runtime.
SILO_PRELOAD = "fedsilo.silo"
_FORKSERVER_LOCK = threading.Lock()


@dataclass(frozen=True, slots=True)
class SiloCluster:
    """A Dask client and, for every silo, the address and name of its worker."""

    client: Client
    workers: dict[str, str]  # silo -> worker address
    address: str
    embedded: bool
    hosts: dict[str, str] = field(default_factory=dict)  # silo -> worker name

    def worker_name(self, silo: str) -> str:
        """Return the name of the worker holding ``silo`` (the silo's own name)."""
        return self.hosts.get(silo, silo)

    def by_worker(self, silos: Sequence[str]) -> dict[str, list[str]]:
        """Group ``silos`` by the name of their worker, keeping their order."""
        groups: dict[str, list[str]] = {}
        for silo in silos:
            groups.setdefault(self.worker_name(silo), []).append(silo)
        return groups


def assign_silos(silos: Sequence[str], n_workers: int) -> dict[str, str]:
    """Map silos to ``pool-<k>`` worker names: contiguous blocks in spec order.

    With ``n`` silos and ``N = min(n_workers, n)`` workers, the silo at position
    ``i`` goes to worker ``pool-<floor(i * N / n)>``: block sizes differ by at
    most one, and the mapping depends only on the spec.
    """
    if n_workers < 1:
        raise ValueError(f"n_workers must be at least 1, got {n_workers}")
    n = len(silos)
    count = min(n_workers, n)
    return {silo: f"pool-{i * count // n}" for i, silo in enumerate(silos)}


def silo_workers(client: Client) -> dict[str, str]:
    """Return {worker name: address} of the workers now connected."""
    info = client.scheduler_info(n_workers=-1)["workers"]
    return {str(w["name"]): address for address, w in info.items()}


def wait_for_silos(
    client: Client,
    silos: Sequence[str],
    timeout: float,
    hosts: dict[str, str] | None = None,
) -> dict[str, str]:
    """Wait until every silo's worker has joined; raise naming the missing ones.

    ``hosts`` maps a silo to the name of its worker (default: the silo's name).
    Returns silo -> worker address.
    """
    hosts = hosts or {}
    deadline = time.monotonic() + timeout
    while True:
        present = silo_workers(client)
        missing = [s for s in silos if hosts.get(s, s) not in present]
        if not missing:
            return {s: present[hosts.get(s, s)] for s in silos}
        if time.monotonic() >= deadline:
            if hosts:
                absent = sorted({hosts[s] for s in missing})
                raise ClusterError(
                    f"pool worker(s) {absent} not connected after {timeout:g}s "
                    f"(workers present: {sorted(present) or 'none'})"
                )
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


def start_forkserver() -> None:
    """Start (once per process) the fork server embedded workers are forked from.

    It preloads :data:`FORKSERVER_PRELOAD`, so a worker starts in a fraction of
    a second instead of importing Dask and scikit-learn anew. Python 3.11's
    fork server resolves those imports with the current directory first on
    ``sys.path``, so a stray ``fedsilo`` there would be the one the workers use:
    it is started with ``PYTHONSAFEPATH`` (no current directory) and the
    directory this process imported ``fedsilo`` from first on ``PYTHONPATH``.
    Each worker then gets the coordinator's ``sys.path`` for later imports.
    """
    from multiprocessing import forkserver

    import distributed.utils

    root = str(Path(__file__).resolve().parent.parent)
    with _FORKSERVER_LOCK:
        with dask.config.set(
            {"distributed.worker.multiprocessing-method": "forkserver"}
        ):
            distributed.utils.get_mp_context()  # dask sets its own preload once
        multiprocessing.get_context("forkserver").set_forkserver_preload(
            list(FORKSERVER_PRELOAD)
        )
        saved = {k: os.environ.get(k) for k in ("PYTHONSAFEPATH", "PYTHONPATH")}
        paths = [root, *filter(None, (saved["PYTHONPATH"] or "").split(os.pathsep))]
        os.environ["PYTHONSAFEPATH"] = "1"
        os.environ["PYTHONPATH"] = os.pathsep.join(paths)
        try:
            forkserver.ensure_running()
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def embedded_cluster(
    silos: Sequence[str],
    security: Security | None = None,
    n_workers: int | None = None,
    start_method: str = "forkserver",
) -> SpecCluster:
    """Start a scheduler and single-threaded worker processes on loopback.

    One worker per silo, named after it; with ``n_workers``, that many pool
    workers named as :func:`assign_silos` says. Each preloads the silo runtime
    (:data:`SILO_PRELOAD`), as a worker started at a silo does. Workers are
    forked from a fork server that preloaded the silo code (:func:`start_forkserver`);
    ``start_method="spawn"`` (Dask's default, slower) is kept for comparison.
    With ``security`` (mutual TLS, see ``fedsilo.certs.tls_security``) the
    scheduler, the workers and their nannies speak tls:// only. Modules in
    Dask's own ``distributed.worker.preload`` setting load after the silo
    runtime (diagnostics; they pass through the silo's guard like any peer).
    """
    preload = [SILO_PRELOAD, *dask.config.get("distributed.worker.preload", [])]
    tls: dict[str, Any] = (
        {} if security is None else {"security": security, "protocol": "tls"}
    )
    if n_workers is None:
        names = list(silos)
    else:
        names = list(dict.fromkeys(assign_silos(silos, n_workers).values()))
    workers = {
        name: {
            "cls": Nanny,
            "options": {
                "name": name,
                "nthreads": 1,
                "host": "127.0.0.1",
                "silence_logs": logging.CRITICAL,
                "config": WORKER_CONFIG,
                "preload": preload,
                # Forked from a fork server started earlier, a worker would see
                # the environment of that moment; give it today's, as a spawned
                # one would get (AWS_* credentials set since, for instance).
                "env": dict(os.environ),
                **tls,
            },
        }
        for name in names
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
    if start_method == "forkserver":
        start_forkserver()
    with dask.config.set({"distributed.worker.multiprocessing-method": start_method}):
        return SpecCluster(
            workers=workers,
            scheduler=scheduler,
            silence_logs=logging.WARNING,
            security=security,
        )


def spec_cluster(
    spec: FederationSpec,
) -> AbstractContextManager[SiloCluster]:
    """Return :func:`silo_cluster` for the silos and ``cluster`` of ``spec``."""
    return silo_cluster(
        [s.name for s in spec.silos],
        spec.cluster.address,
        spec.cluster.timeout,
        spec.cluster.tls,
        n_workers=spec.cluster.workers,
    )


@contextmanager
def silo_cluster(
    silos: Sequence[str],
    address: str | None,
    timeout: float,
    tls: TlsSpec | None = None,
    n_workers: int | None = None,
) -> Iterator[SiloCluster]:
    """Attach to ``address``, or start an embedded cluster; close what we started.

    With ``tls`` every connection is mutual TLS with the coordinator's
    certificate; an embedded cluster then listens on tls://127.0.0.1.
    ``n_workers`` hosts the silos on that many pool workers (started here, or
    already started by fedsilo at ``address``).
    """
    security = _tls_security(tls)
    if address is None:
        hosts = {} if n_workers is None else assign_silos(silos, n_workers)
        cluster = embedded_cluster(silos, security, n_workers)
        try:
            client = Client(cluster, timeout=timeout, security=security)
            try:
                workers = wait_for_silos(client, silos, timeout, hosts)
                yield SiloCluster(
                    client, workers, cluster.scheduler_address, True, hosts
                )
            finally:
                client.close()
        finally:
            cluster.close()
        return
    # The spec refuses workers with an address; fedsilo itself attaches to a
    # pool it started (fedsilo compare runs every variant on one cluster).
    hosts = {} if n_workers is None else assign_silos(silos, n_workers)
    try:
        client = Client(address, timeout=timeout, security=security)
    except OSError as error:
        raise ClusterError(
            f"cannot reach the Dask scheduler at {address}: {error}"
        ) from None
    try:
        workers = wait_for_silos(client, silos, timeout, hosts)
        yield SiloCluster(client, workers, address, False, hosts)
    finally:
        client.close()
