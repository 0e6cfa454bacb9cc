"""Who may talk to a Dask server of the federation, and what it may send.

Dask authenticates peers (mutual TLS against the federation's CA) but does not
look at who they are, and it unpickles what a peer sends while reading the
message, before any handler sees it. This module adds the two checks Dask
lacks, for a scheduler (``fedsilo.scheduler``) and a silo worker
(``tasks/silo/guard.py``):

- :func:`gate_listeners`: right after a TLS handshake, before a byte of the
  connection is read, the peer's role (``fedsilo.certs.peer_role``) is checked
  by the server's ``admit`` rule; a refused peer's connection is closed. The
  role of an admitted peer is kept in :data:`PEER` for everything that reads
  and serves that connection (the listener serves each connection in one
  asyncio task, and Dask's offloaded deserialisation copies the context).
- :func:`refuse_pickles`: Dask's one function that unpickles what arrives
  (``distributed.protocol.pickle.loads``) refuses when ``refuse(PEER)`` says so:
  always in a silo's worker process, for silo peers at the scheduler. The
  message then fails to decode and its connection is dropped.

Both replace attributes of Dask objects (a listener's ``_prepare_stream``, a
module function). ``tests/security`` attacks each through real processes, so a
Dask release that moves them fails there rather than silently.
"""

from __future__ import annotations

import contextvars
import ipaddress
import logging
from collections.abc import Callable
from typing import Any

from fedsilo.certs import Role, peer_role
from fedsilo.errors import FedsiloError

logger = logging.getLogger("fedsilo.peers")

#: The role of the peer whose connection is being served; None without TLS
#: or outside a served connection.
PEER: contextvars.ContextVar[Role | None] = contextvars.ContextVar(
    "fedsilo_peer", default=None
)
#: Set while serving a connection that passed :func:`gate_listeners`.
GATED: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "fedsilo_gated", default=False
)


class PeerRefusedError(FedsiloError):
    """A peer or a payload the federation's rules do not let in."""


class PickleRefusedError(PeerRefusedError):
    """A pickled payload arrived where nothing is unpickled."""


def _peercert(stream: Any) -> dict[str, Any] | None:
    sock = getattr(stream, "socket", None)
    getpeercert = getattr(sock, "getpeercert", None)
    if getpeercert is None:
        return None
    cert = getpeercert()
    return cert if isinstance(cert, dict) else None


def gate_listeners(
    server: Any, admit: Callable[[Role | None, bool], bool], what: str
) -> None:
    """Close every new connection to ``server`` whose peer ``admit`` refuses.

    ``admit(role, tls)`` sees the role in the peer's verified certificate (None
    when it has none or the listener is plain TCP) and whether the listener
    speaks TLS. ``what`` names the server in the log line of a refusal.
    """
    for listener in getattr(server, "listeners", ()):
        if getattr(listener, "_fedsilo_gated", False):
            continue
        prepare = listener._prepare_stream
        tls = bool(getattr(listener, "encrypted", False))

        async def gated(
            stream: Any, address: str, prepare: Any = prepare, tls: bool = tls
        ) -> Any:
            stream = await prepare(stream, address)
            if stream is None:
                return None
            role = peer_role(_peercert(stream)) if tls else None
            if not admit(role, tls):
                logger.warning(
                    "%s refused a connection from %s (certificate role: %s)",
                    what,
                    address,
                    role or "none",
                )
                stream.close()
                return None
            PEER.set(role)
            GATED.set(True)
            return stream

        listener._prepare_stream = gated
        listener._fedsilo_gated = True


_ORIGINAL_LOADS: Callable[..., Any] | None = None
_REFUSE: Callable[[Role | None], bool] = lambda role: False  # noqa: E731


def refuse_pickles(refuse: Callable[[Role | None], bool]) -> None:
    """Make this process's Dask refuse to unpickle where ``refuse(PEER)`` is true.

    Installed once per process; a later call replaces the rule.
    """
    global _ORIGINAL_LOADS, _REFUSE
    from distributed.protocol import pickle as dask_pickle

    _REFUSE = refuse
    if _ORIGINAL_LOADS is not None:
        return
    _ORIGINAL_LOADS = dask_pickle.loads
    original = _ORIGINAL_LOADS

    def loads(data: Any, *, buffers: Any = ()) -> Any:
        role = PEER.get()
        if _REFUSE(role):
            raise PickleRefusedError(
                f"a pickled payload from {role or 'a peer'} was refused: nothing "
                "crossing this boundary is unpickled"
            )
        return original(data, buffers=buffers)

    dask_pickle.loads = loads


def is_loopback(host: str) -> bool:
    """Return whether ``host`` (an address's host part) is a loopback address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_plain_tcp(address: str, insecure: bool, who: str) -> None:
    """Refuse plain TCP beyond loopback unless ``insecure`` was asked for."""
    from distributed.comm.addressing import parse_address, parse_host_port

    scheme, location = parse_address(address)
    if scheme != "tcp" or insecure:
        return
    host, _ = parse_host_port(location)
    if not is_loopback(str(host)):
        raise PeerRefusedError(
            f"{who} {address}: plain TCP beyond loopback is neither encrypted nor "
            "authenticated; use TLS (docs/tls.md) or pass --insecure-plain-tcp "
            "(cluster.insecure_plain_tcp: true in a spec) to accept that"
        )
