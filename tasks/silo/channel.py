"""A socket of its own from the coordinator to a silo's worker, for rapid exchanges.

A boosting run makes six exchanges per tree, each a small request and a reply
of histograms, back to back. Through Dask's comm a round trip to two workers
costs about 0.9 ms empty and 3 ms with a 1 MB reply from each; over a plain
blocking socket 0.2 ms and 1.1 ms (benchmarks/exchange_costs.py). The channel
is that socket: opened once per run, after the silos' state is resident,
closed when the run frees it.

Wire format: the connection opens with the 32-byte token, raw. Then each
frame is a header (``uint32`` count, then ``count`` ``uint64`` sizes), a
message header and its array buffers, encoded by the silo boundary's codec
(:mod:`tasks.protocol.codec`: msgpack plus numpy buffers, never a
pickle), so arrays cross without a copy. Replies are ``("ok", value)`` or
``("error", exception)``, the exception as a ``RemoteError``.

Who may connect: the worker listens on the host of its Dask address, on a port
the system picks, for one connection within :data:`ACCEPT_SECONDS`; the
token the coordinator sent it through Dask is compared before a byte of any
frame is read or parsed, and a wrong one closes the connection. Frame sizes
are checked against :data:`MAX_FRAME_BYTES` before anything is allocated. On a
cluster with TLS both ends wrap the socket in the SSL contexts Dask itself uses
(``Security.get_listen_args("worker")`` and ``get_connection_args("client")``):
mutual TLS against the federation's CA. The token then only ties the socket
to the request that opened it.

Nothing here knows about boosting: the worker side runs the ``handler`` it is
given for every request, in the channel's own thread, so the worker's event
loop (heartbeats) keeps running while a silo computes.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import secrets
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from tasks.protocol import codec

logger = logging.getLogger(__name__)

#: How long a worker waits for the coordinator to connect to a new channel.
ACCEPT_SECONDS = 30.0
#: While a reply is awaited, how often the caller's liveness check runs.
WATCH_SECONDS = 0.5
TOKEN_BYTES = 32
#: The largest frame either end accepts (header and buffers together).
MAX_FRAME_BYTES = 1 << 30
_COUNT = struct.Struct("<I")


class ChannelError(ConnectionError):
    """The channel broke: closed by the peer, refused, or a malformed frame."""


def new_token() -> bytes:
    """Return a fresh random token for one channel."""
    return secrets.token_bytes(TOKEN_BYTES)


def _send(sock: socket.socket, value: Any) -> None:
    """Write one frame: sizes, the message's header, then its array buffers.

    A plain socket takes the whole frame in one ``sendmsg``.
    """
    head, buffers = codec.encode(value)
    sizes = [len(head), *(b.nbytes for b in buffers)]
    header = _COUNT.pack(len(sizes)) + struct.pack(f"<{len(sizes)}Q", *sizes)
    _send_parts(sock, [header, head, *buffers])


def _send_parts(sock: socket.socket, parts: Sequence[bytes | memoryview]) -> None:
    if isinstance(sock, ssl.SSLSocket):  # no sendmsg over TLS
        for part in parts:
            sock.sendall(part)
        return
    views = [memoryview(part).cast("B") for part in parts]
    sent = sock.sendmsg(views)
    for view in views:  # after a partial send, the rest part by part
        if sent >= len(view):
            sent -= len(view)
            continue
        sock.sendall(view[sent:])
        sent = 0


def _receive_exact(
    sock: socket.socket, size: int, wait: Callable[[], None] | None
) -> bytearray:
    """Read exactly ``size`` bytes; on each socket timeout call ``wait`` (or raise)."""
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        try:
            n = sock.recv_into(view[got:], size - got)
        except TimeoutError:
            if wait is None:
                raise
            wait()
            continue
        if n == 0:
            raise ChannelError("the peer closed the channel")
        got += n
    return buf


def _receive(sock: socket.socket, wait: Callable[[], None] | None = None) -> Any:
    """Read one frame and return its message; refuse oversized or broken ones."""
    (count,) = _COUNT.unpack(_receive_exact(sock, _COUNT.size, wait))
    if not 1 <= count <= codec.MAX_BUFFERS + 1:
        raise ChannelError(f"malformed frame header ({count} parts)")
    sizes = struct.unpack(f"<{count}Q", _receive_exact(sock, 8 * count, wait))
    if sum(sizes) > MAX_FRAME_BYTES:
        raise ChannelError(
            f"a frame of {sum(sizes):,} bytes (at most {MAX_FRAME_BYTES:,})"
        )
    head = _receive_exact(sock, sizes[0], wait)
    buffers = [_receive_exact(sock, s, wait) for s in sizes[1:]]
    try:
        return codec.decode(head, buffers)
    except codec.CodecError as error:
        raise ChannelError(f"malformed frame: {error.reason}") from None


def _tune(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


# -- worker side ----------------------------------------------------------------
def listen(
    host: str,
    token: bytes,
    handler: Callable[..., Any],
    ssl_context: ssl.SSLContext | None = None,
    accept_seconds: float = ACCEPT_SECONDS,
    on_close: Callable[[], None] | None = None,
) -> tuple[str, int]:
    """Serve ``handler(**request)`` for one connection that proves ``token``.

    Returns the (host, port) to connect to; the serving thread ends when the
    coordinator closes the channel, on any broken frame, or when nobody
    connects within ``accept_seconds``. ``on_close`` runs when a connection
    that proved the token ends.
    """
    server = socket.create_server((host, 0))
    server.settimeout(accept_seconds)
    port = int(server.getsockname()[1])
    thread = threading.Thread(
        target=_serve,
        args=(server, token, handler, ssl_context, on_close),
        name=f"fedsilo-channel-{port}",
        daemon=True,
    )
    thread.start()
    return host, port


def _serve(
    server: socket.socket,
    token: bytes,
    handler: Callable[..., Any],
    ssl_context: ssl.SSLContext | None,
    on_close: Callable[[], None] | None = None,
) -> None:
    proven = False
    try:
        with server:
            conn, peer = server.accept()
        # The handshake and the token get as long as the connection did.
        conn.settimeout(server.gettimeout())
        _tune(conn)
        if ssl_context is not None:
            conn = ssl_context.wrap_socket(conn, server_side=True)
        with conn:
            proof = bytes(_receive_exact(conn, TOKEN_BYTES, None))
            if not hmac.compare_digest(proof, token):
                logger.warning("channel from %s refused: wrong token", peer)
                return
            proven = True
            conn.settimeout(None)
            _send(conn, ("ok", None, None))
            while True:
                request = _receive(conn)
                ident = request.pop("id", None) if isinstance(request, dict) else None
                try:
                    if not isinstance(request, dict):
                        raise codec.CodecError("a request must be a mapping")
                    reply: tuple[str, Any, Any] = ("ok", ident, handler(**request))
                except Exception as error:  # the caller re-raises it
                    reply = ("error", ident, error)
                try:
                    _send(conn, reply)
                except codec.CodecError as error:
                    _send(conn, ("error", ident, error))
    except codec.CodecError as error:  # a request this silo cannot read: hang up
        logger.warning("channel from %s closed: %s", peer, error)
        return
    except (OSError, ChannelError, EOFError):
        return  # closed, timed out or broken: the coordinator sees it too
    finally:
        if proven and on_close is not None:
            on_close()


# -- coordinator side -------------------------------------------------------------
def first_ready(channels: Sequence[Channel], timeout: float) -> list[Channel]:
    """Return the channels whose reply has begun to arrive, waiting up to ``timeout``.

    Reading replies as they come lets the coordinator copy one worker's reply
    while a slower worker still computes.
    """
    ready = [c for c in channels if c.buffered()]
    if ready:
        return ready
    readable, _, _ = select.select(list(channels), [], [], timeout)
    return list(readable)


class Channel:
    """The coordinator's end: send a request, then receive its reply."""

    def __init__(self, sock: socket.socket, address: str) -> None:
        self._sock = sock
        self.address = address  # the worker's Dask address, for messages
        self._sent = 0  # the id of the last request sent

    @classmethod
    def connect(
        cls,
        address: str,
        endpoint: tuple[str, int],
        token: bytes,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = 10.0,
    ) -> Channel:
        """Connect to a worker's listener and prove the token; raise ChannelError."""
        sock: socket.socket | None = None
        try:
            sock = socket.create_connection(endpoint, timeout=timeout)
            _tune(sock)
            if ssl_context is not None:
                sock = ssl_context.wrap_socket(sock, server_side=False)
            channel = cls(sock, address)
            if len(token) != TOKEN_BYTES:
                raise ChannelError(f"a token of {len(token)} bytes")
            _send_parts(sock, [token])
            answer = _receive(sock)
            status = (
                answer[0] if isinstance(answer, tuple) and len(answer) == 3 else None
            )
        except (OSError, EOFError) as error:
            if sock is not None:
                sock.close()
            message = f"cannot open a channel to {address}: {error}"
            raise ChannelError(message) from error
        if status != "ok":
            channel.close()
            raise ChannelError(f"{address} refused the channel")
        return channel

    def send(self, timeout: float, **request: Any) -> None:
        """Send one request; :meth:`receive` returns its reply.

        The reply of an earlier request that was never received (a late fit)
        is skipped when it arrives.
        """
        self._sent += 1
        try:
            self._sock.settimeout(timeout)
            _send(self._sock, {**request, "id": self._sent})
        except OSError as error:
            raise ChannelError(f"sending to {self.address} failed: {error}") from error

    def receive(self, deadline: float, check: Callable[[], None]) -> Any:
        """Return the reply; ``check()`` runs every :data:`WATCH_SECONDS` meanwhile.

        ``check`` raises to give up (say, when the worker left the cluster);
        past ``deadline`` (``time.monotonic()``) a TimeoutError is raised. A
        handler's exception is raised here.
        """

        def wait() -> None:
            if time.monotonic() >= deadline:
                raise TimeoutError("no reply in time")
            check()

        try:
            self._sock.settimeout(WATCH_SECONDS)
            while True:
                reply = _receive(self._sock, wait)
                if not (isinstance(reply, tuple) and len(reply) == 3):
                    raise ChannelError(f"a malformed reply from {self.address}")
                status, ident, value = reply
                if ident == self._sent:
                    break  # else the reply of a request given up on: skipped
        except (OSError, EOFError) as error:
            if isinstance(error, TimeoutError):
                raise
            message = f"receiving from {self.address} failed: {error}"
            raise ChannelError(message) from error
        if status == "error":
            raise value
        return value

    def buffered(self) -> bool:
        """Return whether decrypted bytes wait in TLS (``select`` cannot see them)."""
        return isinstance(self._sock, ssl.SSLSocket) and self._sock.pending() > 0

    def fileno(self) -> int:
        """Return the socket's descriptor (for ``select``)."""
        return self._sock.fileno()

    @property
    def closed(self) -> bool:
        """Return whether the channel was closed (here, or by a sharer of it)."""
        return self._sock.fileno() < 0

    def close(self) -> None:
        """Close the socket (the worker's serving thread then ends); never raises."""
        with contextlib.suppress(OSError):
            self._sock.close()
