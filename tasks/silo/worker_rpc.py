"""Requests from the coordinator straight to a handler on a silo's Dask worker.

A Dask task costs five messages and scheduler work; a request to a handler the
worker serves costs two, through the Dask client's own connections (TLS
included). The round's fit and scoring (tasks/silo/rpc.py) and the boosting
exchanges (tasks/boosting/worker.py) both go this way.

Requests and replies are encoded with the silo boundary's codec
(:mod:`tasks.protocol.codec`): one bytes object each way, which Dask
carries as it is. Neither side unpickles the other's payload; a handler's
exception comes back as a :class:`~tasks.protocol.codec.RemoteError`
inside the reply, never as a pickled exception of Dask's.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

from distributed import get_worker

from tasks.protocol import codec

#: While a request is out, how often the scheduler is asked if its worker lives.
WATCH_SECONDS = 0.5


class WorkerLeftError(RuntimeError):
    """The worker a request was sent to left the cluster before answering."""


def serve(name: str, make: Callable[[Any], Callable[..., Any]]) -> None:
    """Serve ``make(worker)`` as operation ``name`` on this worker (idempotent).

    Call it inside a Dask task on the worker. The handler takes the request's
    fields as keywords and returns a value the codec can encode (or an
    awaitable of one).
    """
    worker = get_worker()
    if name not in worker.handlers:
        handler = make(worker)

        async def decoded(message: bytes = b"") -> bytes:
            try:
                request = codec.unpack(message) if message else {}
                if not isinstance(request, dict):
                    raise codec.CodecError("a request must be a mapping of fields")
                result = handler(**request)
                if inspect.isawaitable(result):
                    result = await result
                return codec.pack(("ok", result))
            except Exception as error:  # sent back as a value, never pickled
                return codec.pack(("error", error))

        worker.handlers[name] = decoded


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
    is gone. A handler's error is raised here as a ``RemoteError``.
    """
    blob = codec.pack(message)
    sent = asyncio.ensure_future(getattr(client.rpc(address), name)(message=blob))
    try:
        while True:
            done, _ = await asyncio.wait({sent}, timeout=WATCH_SECONDS)
            if done:
                return _reply(sent.result())
            await check_worker(client, address)
    finally:
        sent.cancel()


def _reply(answer: Any) -> Any:
    """Return the value of an encoded ``("ok", value)`` reply; raise an error one."""
    if not isinstance(answer, bytes | bytearray | memoryview):
        raise codec.CodecError(f"a reply of {type(answer).__name__}, not bytes")
    reply = codec.unpack(answer)
    if not (isinstance(reply, tuple) and len(reply) == 2):
        raise codec.CodecError("a reply must be a (status, value) pair")
    status, value = reply
    if status == "error" and isinstance(value, BaseException):
        raise value
    if status != "ok":
        raise codec.CodecError(f"a reply of status {status!r}")
    return value
