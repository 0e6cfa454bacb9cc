"""A silo worker that overstates its training rows: a Dask preload for tests.

``dask worker SCHEDULER --name NAME --preload tests.security._boasting_silo``
starts a worker whose silo runtime is fedsilo's own, except that every row
count it reports (its schema, its row count, each fit's ``n_samples``) is
:data:`FACTOR` times the truth. What it trains on and sends is otherwise what
an honest silo's runtime would send.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from tasks.protocol.messages import LocalUpdate, Resident, SiloSchema
from tasks.silo.runtime import SiloRuntime

FACTOR = 20


def _boast(reply: Any) -> Any:
    """Return ``reply`` with every row count it carries multiplied by FACTOR."""
    if isinstance(reply, list):
        return [_boast(r) for r in reply]
    if isinstance(reply, LocalUpdate):
        return dataclasses.replace(reply, n_samples=reply.n_samples * FACTOR)
    if isinstance(reply, SiloSchema):
        return dataclasses.replace(reply, n_train=reply.n_train * FACTOR)
    return reply


class BoastingRuntime(SiloRuntime):
    """fedsilo's silo runtime, but its replies claim FACTOR times its rows."""

    def call(self, op: str, args: Sequence[Any], keep: Resident | None = None) -> Any:
        """Serve ``op`` as the honest runtime does, then overstate the rows."""
        reply = super().call(op, args, keep)
        if keep is not None:
            return reply
        if op == "row-count":
            return int(reply) * FACTOR
        return _boast(reply)


async def dask_setup(worker: Any) -> None:
    """Install the boasting runtime before the worker joins the scheduler."""
    await worker.plugin_add(plugin=BoastingRuntime(), catch_errors=False)
