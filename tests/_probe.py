"""A test-only window into silo workers, loaded as a Dask preload after the runtime.

The silo's guard refuses ``Client.run`` and Dask tasks, so tests look into a
worker through this module's handler instead: conftest.py adds it to Dask's
``distributed.worker.preload`` setting, which the embedded cluster honours,
and :func:`probe` calls it over a Dask comm (msgpack; values the codec
encodes). Product code never loads it.
"""

from __future__ import annotations

import concurrent.futures
import importlib
import os
import threading
import time
from typing import Any

import click

HANDLER = "fedsilo-test-probe"


def _runtime(worker: Any) -> Any:
    return worker.plugins["fedsilo-silo"]


def _serve(worker: Any, op: str, args: list[Any]) -> Any:
    from tasks.protocol.messages import Resident

    runtime = _runtime(worker)
    if op == "runs":
        return runtime.runs()
    if op == "holdings":
        return [list(p) for p in runtime.holdings(str(args[0]))]
    if op == "dask-data":
        return len(worker.data)
    if op == "get":
        run, silo, slot, attr = args
        value = runtime.get(Resident(run, silo, slot))
        return getattr(value, attr) if attr else value
    if op == "environ":  # which of the named environment variables are set
        return sorted(str(name) for name in args if str(name) in os.environ)
    if op == "module-file":  # where the worker imports a module from
        return str(importlib.import_module(str(args[0])).__file__)
    if op == "memory-file":  # put bytes at a memory:// url, or remove it (None)
        import fsspec

        url, data = args
        memory = fsspec.filesystem("memory")
        if data is None:
            memory.rm(str(url))
        else:
            memory.pipe(str(url), bytes(data))
        return True
    if op == "stall":
        held = threading.Event()

        def hold() -> None:
            with runtime.exclusive():
                held.set()
                time.sleep(float(args[0]))

        threading.Thread(target=hold, daemon=True).start()
        held.wait(10)
        return held.is_set()
    raise ValueError(f"no probe {op!r}")


@click.command()
def dask_setup(worker: Any) -> None:
    """Add the probe's handler to a (guarded) silo worker."""
    from tasks.protocol import codec

    def handler(what: str = "", args: Any = ()) -> dict[str, Any]:
        header, buffers = codec.encode(_serve(worker, what, list(args)))
        return {"header": bytes(header), "buffers": [bytes(b) for b in buffers]}

    worker.handlers[HANDLER] = handler


def probe(address: str, op: str, *args: Any, security: Any = None) -> Any:
    """Ask the worker at ``address`` (its probe) for ``op``; return the answer."""
    import asyncio

    from distributed.comm import connect
    from distributed.core import send_recv

    from tasks.protocol import codec

    async def ask() -> Any:
        extra = {} if security is None else security.get_connection_args("client")
        comm = await connect(address, **extra)
        try:
            return await send_recv(comm, op=HANDLER, what=op, args=list(args))
        finally:
            comm.abort()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # any caller's thread
        reply = pool.submit(asyncio.run, ask()).result(timeout=60)
    return codec.decode(reply["header"], reply["buffers"])
