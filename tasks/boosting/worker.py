"""A worker's side of the boosting exchanges: one request per worker and level.

With the ``channel`` transport (the default) and the ``worker`` transport the
coordinator sends every tree level to each worker once, naming the silos that
worker hosts, and gets one answer. The call installed here runs each silo's
method on its resident :class:`~tasks.boosting.silo_side.BoostingSilo` (the Dask
actor made when the silo opened): on the worker's event loop when the request
comes through Dask (``worker``), in the channel's thread when it comes over the
worker's own socket to the coordinator (``channel``, see
:mod:`tasks.silo.channel`). When the worker hosts several silos
(pool workers in a simulation), their plain histograms are summed here before
they leave: each silo after the first adds its rows to the first one's
histograms (``into``), which is exact (every cell is a multiple of the silos'
common gradient grid, see docs/gbdt.md), so the coordinator receives less and
learns less. Masked
histograms (secure aggregation) are not added here: each keeps its own silo
index and roster, and the coordinator unmasks them together as before.

Bytes are still counted per silo as the size of that silo's own reply, which is
what each silo sends when it has a worker of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from distributed.comm.addressing import get_address_host

from tasks.boosting.messages import SiloCallFailed
from tasks.gbdt.histogram import NodeHistograms, sum_histograms
from tasks.gbdt.private_histograms import MaskedHistograms
from tasks.gbdt.silo_state import LossSum, sum_losses
from tasks.protocol import codec
from tasks.silo import channel as exchange_channel
from tasks.silo import worker_rpc

#: The worker RPC operation that serves boosting exchanges.
HANDLER = "fedsilo_gbdt_exchange"
#: The worker RPC operation that opens a channel for them (``exchange_channel``).
CHANNEL_HANDLER = "fedsilo_gbdt_channel"

#: Methods the handler serves: short per-level calls, safe on the event loop.
EXCHANGE_CALLS = frozenset(
    {"start_round", "grow_level", "finish_round", "finish_and_start"}
)
#: Exchange calls that can add their histograms to a co-hosted silo's (``into``).
ACCUMULATING = frozenset({"start_round", "grow_level", "finish_and_start"})


def install_handler() -> None:
    """Serve :data:`HANDLER` and :data:`CHANNEL_HANDLER` on this worker (idempotent)."""

    def make(worker: Any) -> Callable[..., dict[str, Any]]:
        def fedsilo_gbdt_exchange(
            keys: Sequence[str] = (),
            silos: Sequence[str] = (),
            method: str = "",
            args: Sequence[Any] = (),
        ) -> dict[str, Any]:
            return _exchange(worker, keys, silos, method, args)

        return fedsilo_gbdt_exchange

    def make_channel(worker: Any) -> Callable[..., tuple[str, int]]:
        def fedsilo_gbdt_channel(token: bytes = b"") -> tuple[str, int]:
            tls = worker.security.get_listen_args("worker").get("ssl_context")
            return exchange_channel.listen(
                get_address_host(worker.address),
                token,
                lambda **request: _exchange(worker, **request),
                tls,
            )

        return fedsilo_gbdt_channel

    worker_rpc.serve(HANDLER, make)
    worker_rpc.serve(CHANNEL_HANDLER, make_channel)


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


def _exchange(
    worker: Any,
    keys: Sequence[str] = (),
    silos: Sequence[str] = (),
    method: str = "",
    args: Sequence[Any] = (),
) -> dict[str, Any]:
    """Run ``method(*args)`` at every listed silo of this worker; one answer.

    The answer holds each silo's reply size and the replies (co-hosted ones
    summed), or the first failure.
    """
    if method not in EXCHANGE_CALLS:
        raise ValueError(f"not an exchange call: {method!r}")
    replies: list[Any] = []
    into: NodeHistograms | None = None
    for key, silo in zip(keys, silos, strict=True):
        try:
            state = worker.state.actors.get(key)
            if state is None:
                raise RuntimeError(
                    "its boosting state is not on this worker (released, or the "
                    "worker restarted)"
                )
            call = getattr(state, method)
            reply = call(*args, into=into) if method in ACCUMULATING else call(*args)
            into = _histograms(reply) if method in ACCUMULATING else None
            replies.append(reply)
        except Exception as error:  # reported as a value, naming the silo
            return {"failed": SiloCallFailed(silo, error)}
    sizes = [payload_bytes(r) for r in replies]
    return {"sizes": sizes, "replies": merge_co_hosted(replies)}
