"""A round's silo work sent straight to the silo's worker, not through the scheduler.

A Dask task costs five messages (client to scheduler, scheduler to worker,
worker back to scheduler, scheduler to client, client to worker for the
result); a round's fit and scoring need one request and one reply per worker.
Each silo worker serves :data:`HANDLER`: the coordinator's ``fit-<worker>`` and
``evaluate-<worker>`` tasks call it through the Dask client's connection pool
(TLS and all), and the worker runs the batch in its own task thread, so it
queues behind (and never beside) the silo's other work. The silo-resident
arrays stay Dask futures owned by the coordinator; the request names their
keys and the worker looks them up in its own memory.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

from distributed import Future, get_worker
from distributed.protocol import to_serialize

from fedsilo.tasks.silo_batch import evaluate_silos, fit_silos

#: The worker RPC operation that serves a round's per-worker batches.
HANDLER = "fedsilo_silo_batch"
PHASES: dict[str, Callable[..., list[Any]]] = {
    "fit": fit_silos,
    "evaluate": evaluate_silos,
}


@dataclasses.dataclass(frozen=True, slots=True)
class Resident:
    """Stands for a value already in the worker's memory under ``key``."""

    key: str


def by_key(value: Any) -> Any:
    """Replace Dask futures in ``value`` (lists, tuples) with :class:`Resident`."""
    if isinstance(value, Future):
        return Resident(str(value.key))
    if isinstance(value, list | tuple):
        return type(value)(by_key(v) for v in value)
    return value


def _resolve(data: Any, value: Any) -> Any:
    if isinstance(value, Resident):
        try:
            return data[value.key]
        except KeyError:
            raise RuntimeError(
                "the silo's prepared rows are not on this worker (released, or "
                "the worker restarted)"
            ) from None
    if isinstance(value, list | tuple):
        return type(value)(_resolve(data, v) for v in value)
    return value


def _named(reply: Any, worker: str) -> Any:
    """Stamp the worker's name on updates and evaluations (made off-task)."""
    if isinstance(reply, list):
        return [_named(r, worker) for r in reply]
    if dataclasses.is_dataclass(reply) and hasattr(reply, "worker"):
        return dataclasses.replace(reply, worker=worker)  # type: ignore[type-var]
    return reply


def install_handler() -> None:
    """Serve :data:`HANDLER` on the current worker (idempotent); call in a task."""
    worker = get_worker()
    if HANDLER in worker.handlers:
        return

    async def fedsilo_silo_batch(phase: str = "", args: Sequence[Any] = ()) -> Any:
        if phase not in PHASES:
            raise ValueError(f"not a silo batch phase: {phase!r}")
        resolved = _resolve(worker.data, tuple(args))
        run = functools.partial(PHASES[phase], *resolved)
        loop = asyncio.get_running_loop()
        replies = await loop.run_in_executor(worker.executors["default"], run)
        return {"replies": to_serialize(_named(replies, str(worker.name)))}

    worker.handlers[HANDLER] = fedsilo_silo_batch


def installed() -> bool:
    """Install the handler here and return True (a Dask task run on each worker)."""
    install_handler()
    return True


#: While a batch is out, how often the scheduler is asked if its worker is alive.
WATCH_SECONDS = 0.5


class WorkerLeftError(RuntimeError):
    """The worker a batch was sent to left the cluster before answering."""


async def call(client: Any, address: str, phase: str, args: Sequence[Any]) -> Any:
    """Send one batch to the worker at ``address``; return its per-silo replies.

    A worker that dies is noticed by the scheduler within moments, while a
    connection to its closed port is retried for Dask's whole connect timeout:
    the scheduler is asked every :data:`WATCH_SECONDS` while the batch is out,
    and :class:`WorkerLeftError` ends the wait once the worker is gone.
    """
    rpc = client.rpc(address)
    sent = asyncio.ensure_future(
        getattr(rpc, HANDLER)(phase=phase, args=to_serialize(by_key(args)))
    )
    try:
        while True:
            done, _ = await asyncio.wait({sent}, timeout=WATCH_SECONDS)
            if done:
                return sent.result()["replies"]
            if address not in await client.scheduler.ncores(workers=[address]):
                raise WorkerLeftError("its worker left the cluster")
    finally:
        sent.cancel()
