"""Requests from the coordinator straight to a handler on a silo's Dask worker.

A Dask task costs five messages and scheduler work; a request to a handler the
worker serves costs two, through the Dask client's own connections (TLS
included). The round's fit and scoring (tasks/silo_rpc.py) and the boosting
exchanges (tasks/gbdt_worker.py) both go this way.

A request's arguments travel as one pickle: handed to Dask as they are, the
items of every list and tuple in them are serialized one by one, which cost
about 0.5 ms of a 1 ms round trip for a tree level's 16 splits
(benchmarks/exchange_costs.py). The coordinator is a trusted peer here as for
any Dask task it sends.
"""

from __future__ import annotations

import asyncio
import pickle
from collections.abc import Callable
from typing import Any

from distributed import get_worker

#: While a request is out, how often the scheduler is asked if its worker lives.
WATCH_SECONDS = 0.5


class WorkerLeftError(RuntimeError):
    """The worker a request was sent to left the cluster before answering."""


def serve(name: str, make: Callable[[Any], Callable[..., Any]]) -> None:
    """Serve ``make(worker)`` as operation ``name`` on this worker (idempotent).

    Call it inside a Dask task on the worker.
    """
    worker = get_worker()
    if name not in worker.handlers:
        handler = make(worker)

        def unpickled(message: bytes = b"") -> Any:
            return handler(**pickle.loads(message)) if message else handler()

        worker.handlers[name] = unpickled


async def check_worker(client: Any, address: str) -> None:
    """Raise WorkerLeftError when the scheduler no longer knows the worker."""
    if address not in await client.scheduler.ncores(workers=[address]):
        raise WorkerLeftError("its worker left the cluster")


async def request(client: Any, address: str, name: str, **message: Any) -> Any:
    """Send ``message`` to operation ``name`` of the worker at ``address``.

    A worker that dies is noticed by the scheduler within moments, while Dask
    retries a connection to its closed port for its whole connect timeout
    (60 s): the scheduler is asked every :data:`WATCH_SECONDS` while the
    request is out, and :class:`WorkerLeftError` ends the wait once the worker
    is gone.
    """
    blob = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    sent = asyncio.ensure_future(getattr(client.rpc(address), name)(message=blob))
    try:
        while True:
            done, _ = await asyncio.wait({sent}, timeout=WATCH_SECONDS)
            if done:
                return sent.result()
            await check_worker(client, address)
    finally:
        sent.cancel()
