"""A worker's side of the boosting exchanges: one request per worker and level.

The coordinator sends every tree level to each worker once, over the run's
channel, naming the silos that worker hosts; the silo runtime resolves their
resident :class:`~tasks.boosting.silo_side.BoostingSilo` states and
:func:`exchange` runs the method at each, in the channel's thread, and answers
once. When the worker hosts several silos (pool workers in a simulation),
their plain histograms are summed here before they leave: each silo after the
first adds its rows to the first one's histograms (``into``), which is exact
(every cell is a multiple of the silos' common gradient grid, see
docs/gbdt.md), so the coordinator receives less and learns less. Masked
histograms (secure aggregation) are not added here: each keeps its own silo
index and roster, and the coordinator unmasks them together.

Bytes are still counted per silo as the size of that silo's own reply, which is
what each silo sends when it has a worker of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tasks.boosting.messages import SiloCallFailed
from tasks.boosting.silo_side import CALLS, BoostingSilo
from tasks.gbdt.histogram import NodeHistograms, sum_histograms
from tasks.gbdt.private_histograms import MaskedHistograms
from tasks.gbdt.silo_state import LossSum, sum_losses
from tasks.protocol import codec

#: Methods of a level's exchange, answered once per worker.
EXCHANGE_CALLS = frozenset(
    {"start_round", "grow_level", "finish_round", "finish_and_start"}
)
#: Exchange calls that can add their histograms to a co-hosted silo's (``into``).
ACCUMULATING = frozenset({"start_round", "grow_level", "finish_and_start"})


def _histograms(reply: Any) -> NodeHistograms | None:
    """Return the plain histograms in a reply (alone or after a loss), else None."""
    if isinstance(reply, NodeHistograms):
        return reply
    if isinstance(reply, tuple) and reply and isinstance(reply[-1], NodeHistograms):
        return reply[-1]
    return None


def merge_co_hosted(replies: Sequence[Any]) -> list[Any]:
    """Sum the plain replies of silos on one worker; leave anything else apart.

    Histograms, loss sums and (loss, histograms) pairs are added (histograms
    that are one object, accumulated ``into`` each other, are taken once);
    masked histograms and anything unknown are returned one per silo.
    """
    if len(replies) < 2:
        return list(replies)
    if all(isinstance(r, NodeHistograms) for r in replies):
        return [_sum_distinct(replies)]
    if all(isinstance(r, LossSum) or r is None for r in replies):
        return [sum_losses(replies)]
    if all(
        isinstance(r, tuple)
        and len(r) == 2
        and (isinstance(r[0], LossSum) or r[0] is None)
        and isinstance(r[1], NodeHistograms)
        for r in replies
    ):
        return [
            (
                sum_losses([r[0] for r in replies]),
                _sum_distinct([r[1] for r in replies]),
            )
        ]
    return list(replies)


def _sum_distinct(parts: Sequence[NodeHistograms]) -> NodeHistograms:
    """Sum histograms, counting an object that appears several times once."""
    distinct = list({id(p): p for p in parts}.values())
    return distinct[0] if len(distinct) == 1 else sum_histograms(distinct)


def payload_bytes(value: Any) -> int:
    """Return the size of a message: array buffers of histograms, else encoded."""
    if isinstance(value, NodeHistograms | MaskedHistograms):
        return value.nbytes
    if isinstance(value, tuple):
        return sum(payload_bytes(v) for v in value)
    header, buffers = codec.encode(value)
    return len(header) + sum(b.nbytes for b in buffers)


def exchange(
    states: Sequence[BoostingSilo],
    silos: Sequence[str],
    method: str,
    args: Sequence[Any],
) -> dict[str, Any]:
    """Run ``method(*args)`` at every listed silo of this worker; one answer.

    The answer holds each silo's reply size and the replies (co-hosted ones
    summed), or the first failure.
    """
    if method not in EXCHANGE_CALLS:
        raise ValueError(f"not an exchange call: {method!r}")
    replies: list[Any] = []
    into: NodeHistograms | None = None
    for state, silo in zip(states, silos, strict=True):
        try:
            call = getattr(state, method)
            reply = call(*args, into=into) if method in ACCUMULATING else call(*args)
            into = _histograms(reply) if method in ACCUMULATING else None
            replies.append(reply)
        except Exception as error:  # reported as a value, naming the silo
            return {"failed": SiloCallFailed(silo, error)}
    sizes = [payload_bytes(r) for r in replies]
    return {"sizes": sizes, "replies": merge_co_hosted(replies)}


def call_each(
    states: Sequence[BoostingSilo],
    silos: Sequence[str],
    method: str,
    per_silo: Sequence[Sequence[Any]],
) -> dict[str, Any]:
    """Call ``method`` at each listed silo with its own arguments; every reply.

    The answer holds the replies in order, or the first failure.
    """
    if method not in CALLS:
        raise ValueError(f"not a silo call: {method!r}")
    replies: list[Any] = []
    for state, silo, args in zip(states, silos, per_silo, strict=True):
        try:
            replies.append(getattr(state, method)(*args))
        except Exception as error:  # reported as a value, naming the silo
            return {"failed": SiloCallFailed(silo, error)}
    return {"replies": replies}
