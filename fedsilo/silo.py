r"""A silo's Dask worker, with fedsilo's silo runtime loaded by the silo itself.

Start one at the silo with Dask's own command::

    dask worker tls://coordinator:8786 --name hospital-a --nthreads 1 \\
        --no-nanny --preload fedsilo.silo --silo-config silo.yaml

or with ``fedsilo worker`` (:func:`serve_silo_worker`), which does the same in
one process. ``--silo-config`` names the silo's own data config
(``connectors.silo_config``); without it the silo reads the sources the
central spec names. The embedded cluster preloads this module into every
worker it starts.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from typing import Any

import click

from connectors.silo_config import SiloConfig, SiloConfigError, load_silo_config
from fedsilo.errors import ClusterError, FedsiloError
from fedsilo.peers import is_loopback
from tasks.silo.runtime import SiloRuntime

logger = logging.getLogger("fedsilo.silo")


@click.command()
@click.option(
    "--silo-config",
    default=None,
    help="the silo's own data config (YAML); its rows never leave this worker",
)
@click.option(
    "--insecure-plain-tcp",
    is_flag=True,
    default=False,
    help="serve over plain TCP beyond loopback: neither encrypted nor authenticated",
)
async def dask_setup(
    worker: Any, silo_config: str | None, insecure_plain_tcp: bool
) -> None:
    """Install the silo runtime (which guards the worker) before it joins."""
    config: SiloConfig | None = None
    if silo_config is not None:
        try:
            config = load_silo_config(silo_config)
        except SiloConfigError as error:
            raise SystemExit(f"fedsilo silo {worker.name!r}: {error}") from None
    name = None if config is None else str(worker.name)
    runtime = SiloRuntime(name, config, insecure_plain_tcp=insecure_plain_tcp)
    await worker.plugin_add(plugin=runtime, catch_errors=False)
    if getattr(worker, "nanny", None) and not is_loopback(str(worker.ip)):
        logger.warning(
            "silo %r runs under a Dask nanny, which the silo runtime does not "
            "guard: start a silo's worker with --no-nanny (or `fedsilo worker`)",
            worker.name,
        )


async def serve_silo_worker(
    scheduler: str,
    silo: str,
    config: SiloConfig | None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    timeout: float = 60.0,
    insecure_plain_tcp: bool = False,
    on_ready: Callable[[str], None] | None = None,
) -> str:
    """Run a single-threaded Dask worker named ``silo`` until a signal or its end.

    The worker holds its silo runtime (and ``config``) in this very process:
    no nanny, so the config is never pickled to a child. Returns why it
    stopped: "signal" or "closed" (the scheduler went away or closed it).
    """
    from distributed import Worker

    worker = Worker(
        scheduler,
        name=silo,
        nthreads=1,
        host=host,
        port=port,
        dashboard_address=f"{host}:0",
        death_timeout=timeout,
        plugins=(
            SiloRuntime(
                None if config is None else silo,
                config,
                insecure_plain_tcp=insecure_plain_tcp,
            ),
        ),
    )
    try:
        await worker
    except (OSError, RuntimeError, TimeoutError, ValueError) as error:
        cause = error.__cause__ or error
        if isinstance(cause, FedsiloError):
            raise cause from None
        text = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
        raise ClusterError(
            f"silo {silo!r}: cannot join the Dask scheduler at {scheduler}: {text}"
        ) from None
    if on_ready is not None:
        on_ready(str(worker.address))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    stopped = asyncio.ensure_future(stop.wait())
    finished = asyncio.ensure_future(worker.finished())
    try:
        await asyncio.wait({stopped, finished}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        stopped.cancel()
        await worker.close(reason="fedsilo worker stopped")
    return "signal" if stop.is_set() else "closed"
