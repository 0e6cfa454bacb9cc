"""A round's silo work sent straight to the silo's worker, not through the scheduler.

Each silo worker serves :data:`HANDLER` (see tasks/silo/worker_rpc.py): the
coordinator's ``fit-<worker>`` and ``evaluate-<worker>`` tasks send it one
request each, and the worker runs the batch in its own task thread, so it
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

from distributed import Future

from tasks.protocol.messages import Resident
from tasks.silo import worker_rpc
from tasks.silo.batch import evaluate_silos, fit_silos

#: The worker RPC operation that serves a round's per-worker batches.
HANDLER = "fedsilo_silo_batch"
PHASES: dict[str, Callable[..., list[Any]]] = {
    "fit": fit_silos,
    "evaluate": evaluate_silos,
}


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


def _handler(worker: Any) -> Callable[..., Any]:
    async def fedsilo_silo_batch(phase: str = "", args: Sequence[Any] = ()) -> Any:
        if phase not in PHASES:
            raise ValueError(f"not a silo batch phase: {phase!r}")
        resolved = _resolve(worker.data, tuple(args))
        run = functools.partial(PHASES[phase], *resolved)
        loop = asyncio.get_running_loop()
        replies = await loop.run_in_executor(worker.executors["default"], run)
        return {"replies": _named(replies, str(worker.name))}

    return fedsilo_silo_batch


def installed() -> bool:
    """Serve :data:`HANDLER` on this worker and return True (run as a Dask task)."""
    worker_rpc.serve(HANDLER, _handler)
    return True


async def call(client: Any, address: str, phase: str, args: Sequence[Any]) -> Any:
    """Send one batch to the worker at ``address``; return its per-silo replies."""
    answer = await worker_rpc.request(
        client, address, HANDLER, phase=phase, args=by_key(args)
    )
    return answer["replies"]
