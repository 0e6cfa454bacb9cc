r"""The federation's Dask scheduler: whom it admits, and that it places no task.

Start it with Dask's own command and this preload::

    dask scheduler --protocol tls --host 10.0.0.5 --port 8786 \\
        --tls-ca-file pki/ca.pem --tls-cert pki/scheduler.pem \\
        --tls-key pki/scheduler-key.pem --preload fedsilo.scheduler

Over TLS every connection is checked against the role in the peer's
certificate (``fedsilo.certs``) before a byte of it is read:

- a client must hold the coordinator's certificate (``register-client``);
- a worker must hold the silo certificate of the very name it registers
  under, and a silo's connection may use only what a worker needs
  (:data:`SILO_OPS`), for its own worker only;
- nothing a silo sends is unpickled (``fedsilo.peers.refuse_pickles``).

Whatever the peer, the scheduler accepts no task graph (``update-graph``):
silos serve only their runtime's operations over a run's channel, so a task
would only reach a worker that refuses it. Plain TCP beyond loopback is
refused unless ``--insecure-plain-tcp`` is given.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import click

from fedsilo.certs import COORDINATOR, SILO, Role
from fedsilo.peers import (
    GATED,
    PEER,
    PeerRefusedError,
    check_plain_tcp,
    gate_listeners,
    refuse_pickles,
)

logger = logging.getLogger("fedsilo.scheduler")

#: What a silo's connection may ask of the scheduler: what its worker needs.
SILO_OPS = frozenset(
    {
        "register-worker",
        "heartbeat_worker",
        "retire_workers",
        "unregister",
        "log_event",
        "identity",
    }
)


@click.command()
@click.option(
    "--insecure-plain-tcp",
    is_flag=True,
    default=False,
    help="listen on plain TCP beyond loopback: neither encrypted nor authenticated",
)
def dask_setup(scheduler: Any, insecure_plain_tcp: bool) -> None:
    """Guard the scheduler before it accepts connections."""
    guard_scheduler(scheduler, insecure_plain_tcp)


def admit_peer(role: Role | None, tls: bool) -> bool:
    """Return whether the scheduler talks to a peer at all: coordinator or silo."""
    if not tls:
        return True  # no certificates: loopback, or its owner said insecure
    return role is not None and role.kind in (COORDINATOR, SILO)


def refusal(scheduler: Any, op: str, role: Role | None, msg: dict[str, Any]) -> str:
    """Return why ``role`` may not call ``op`` with ``msg`` ("" when it may)."""
    if role is None:
        return ""  # plain TCP: no roles to check
    if op == "register-worker":
        if role.kind != SILO:
            return f"{role} may not register a worker"
        if str(msg.get("name")) != role.silo:
            return (
                f"{role} may not register a worker named {msg.get('name')!r}: "
                "a worker's name must match its certificate"
            )
        return ""
    if op == "register-client" and role.kind != COORDINATOR:
        return f"{role} may not connect as a client: only the coordinator does"
    if role.kind == SILO:
        if op not in SILO_OPS:
            return f"{role} may not call {op!r}"
        own = {
            address
            for address, ws in scheduler.workers.items()
            if str(ws.name) == role.silo
        }
        named = msg.get("address") or msg.get("workers") or ()
        named = [named] if isinstance(named, str) else list(named)
        if any(a not in own for a in named):
            return f"{role} may act for its own worker only"
    return ""


def _checked(scheduler: Any, op: str, handler: Callable[..., Any]) -> Any:
    from distributed.core import _expects_comm

    expects_comm = _expects_comm(handler)

    def checked(comm: Any, **msg: Any) -> Any:
        if GATED.get():
            reason = refusal(scheduler, op, PEER.get(), msg)
            if reason:
                logger.warning("scheduler refused: %s", reason)
                raise PeerRefusedError(reason)
        return handler(comm, **msg) if expects_comm else handler(**msg)

    checked.__name__ = getattr(handler, "__name__", op)
    return checked


def _no_graphs(**msg: Any) -> None:
    logger.warning(
        "scheduler refused a task graph: the federation's silos serve only their "
        "runtime's operations (keys %s)",
        list(msg.get("keys") or ())[:5],
    )


def guard_scheduler(scheduler: Any, insecure_plain_tcp: bool = False) -> None:
    """Install the rules above in ``scheduler`` (its listeners already bound)."""
    check_plain_tcp(str(scheduler.address), insecure_plain_tcp, "scheduler")
    refuse_pickles(lambda role: role is not None and role.kind == SILO)
    gate_listeners(scheduler, admit_peer, "scheduler")
    for op, handler in list(scheduler.handlers.items()):
        scheduler.handlers[op] = _checked(scheduler, op, handler)
    scheduler.stream_handlers["update-graph"] = _no_graphs
