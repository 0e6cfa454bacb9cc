"""Attacks on the silo boundary's codec: pickles and huge frames get nowhere.

SECURITY.md promises that nothing crossing a silo's direct request paths is
unpickled, that a channel checks its token before it parses anything and that
oversized frames are refused before allocation. Each test here is an attack
that would succeed if that promise broke: a pickle whose loading leaves a
file behind, sent to a silo's endpoint (with and without its token) and to the
coordinator from a fake worker, and a frame announcing 2^62 bytes.
"""

from __future__ import annotations

import os
import pickle
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tasks.protocol import codec
from tasks.protocol.codec import CodecError
from tasks.silo import channel as exchange_channel
from tasks.silo.channel import Channel, ChannelError, listen, new_token

HOST = "127.0.0.1"


class Exploit:
    """Unpickling this runs a shell command that leaves a file behind."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def closed_by_peer(sock: socket.socket) -> bool:
    """Return whether the peer closed the connection (cleanly or with a reset)."""
    sock.settimeout(10)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_a_pickle_is_refused_without_being_loaded(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps(Exploit(marker))
    for blob in (payload, struct.pack("<IQ", 1, len(payload)) + payload):
        with pytest.raises(CodecError):
            codec.unpack(blob)
    with pytest.raises(CodecError):
        codec.decode(payload)
    assert not marker.exists()


def test_a_silo_endpoint_refuses_a_pickle_before_running_anything(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "pwned-silo"
    calls: list[Any] = []
    token = new_token()
    endpoint = listen(HOST, token, lambda **r: calls.append(r), accept_seconds=10)
    payload = pickle.dumps(Exploit(marker))
    with socket.create_connection(endpoint, timeout=10) as sock:
        # Without the token: the pickle is where the token should be.
        sock.sendall(payload)
        assert closed_by_peer(sock)
    assert not marker.exists() and calls == []

    endpoint = listen(HOST, token, lambda **r: calls.append(r), accept_seconds=10)
    with socket.create_connection(endpoint, timeout=10) as sock:
        sock.sendall(token)  # with the token, a pickle as the frame's message
        exchange_channel._receive(sock)  # ("ok", None, None)
        frame = struct.pack("<IQ", 1, len(payload)) + payload
        sock.sendall(frame)
        assert closed_by_peer(sock)
    assert not marker.exists() and calls == []


def test_a_huge_frame_is_refused_before_allocation() -> None:
    token = new_token()
    endpoint = listen(HOST, token, lambda **r: r, accept_seconds=10)
    with socket.create_connection(endpoint, timeout=10) as sock:
        sock.sendall(token)
        exchange_channel._receive(sock)
        sock.sendall(struct.pack("<IQ", 1, 1 << 62))  # 4 EiB announced
        assert closed_by_peer(sock)  # dropped at once, nothing allocated


def test_the_coordinator_refuses_a_pickle_from_a_fake_worker(tmp_path: Path) -> None:
    marker = tmp_path / "pwned-coordinator"
    server = socket.create_server((HOST, 0))
    token = new_token()
    payload = pickle.dumps(("ok", 1, Exploit(marker)))

    def fake_worker() -> None:
        conn, _ = server.accept()
        with conn:
            exchange_channel._receive_exact(conn, exchange_channel.TOKEN_BYTES, None)
            exchange_channel._send(conn, ("ok", None, None))
            exchange_channel._receive(conn)  # the request
            conn.sendall(struct.pack("<IQ", 1, len(payload)) + payload)
            time.sleep(0.5)

    thread = threading.Thread(target=fake_worker, daemon=True)
    thread.start()
    channel = Channel.connect("tcp://fake", server.getsockname()[:2], token)
    try:
        channel.send(5.0, n=1)
        with pytest.raises(ChannelError, match="malformed frame"):
            channel.receive(time.monotonic() + 5, lambda: None)
    finally:
        channel.close()
        server.close()
        thread.join(5)
    assert not marker.exists()
