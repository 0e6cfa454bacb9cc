"""The coordinator's own socket to a worker: frames, token, errors, waits, TLS.

Both ends run in this process over 127.0.0.1 (the worker's end in its serving
thread, as on a worker); the boosting flow's tests run it between processes.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tasks.protocol.codec import RemoteError
from tasks.silo.channel import (
    Channel,
    ChannelError,
    first_ready,
    listen,
    new_token,
)

HOST = "127.0.0.1"


def serving_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("fedsilo-channel")]


def wait_until(condition: Callable[[], bool], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


@pytest.fixture
def no_threads_left() -> Iterator[None]:
    before = set(serving_threads())
    yield
    assert wait_until(lambda: not (set(serving_threads()) - before))


def echo(**request: Any) -> Any:
    if request.get("fail"):
        raise ValueError(f"silo refused: {request['fail']}")
    if "sleep" in request:
        time.sleep(request["sleep"])
    return {"arrays": [a * 2 for a in request.get("arrays", [])], "n": request.get("n")}


def open_pair(
    handler: Callable[..., Any] = echo, **kwargs: Any
) -> tuple[Channel, tuple[str, int]]:
    token = new_token()
    endpoint = listen(HOST, token, handler, **kwargs)
    return Channel.connect("tcp://worker", endpoint, token), endpoint


def never(_: float = 0.0) -> None:
    return None


def test_requests_and_replies_carry_arrays_unchanged(no_threads_left: None) -> None:
    channel, _ = open_pair()
    rng = np.random.default_rng(0)
    # In the pickle (small), frames of their own, and larger than a socket's
    # buffers (sent in parts).
    arrays = [np.arange(12.0).reshape(3, 4), rng.random((2, 30, 257, 2))]
    arrays.append(rng.random(3_000_000))
    try:
        for n in range(3):
            channel.send(5.0, arrays=arrays, n=n)
            reply = channel.receive(time.monotonic() + 5, never)

            assert reply["n"] == n
            for got, sent in zip(reply["arrays"], arrays, strict=True):
                np.testing.assert_array_equal(got, sent * 2)
                assert got.flags.writeable  # the coordinator sums into replies
    finally:
        channel.close()


def test_a_wrong_token_is_refused_and_the_listener_is_gone(
    no_threads_left: None,
) -> None:
    endpoint = listen(HOST, new_token(), echo)

    with pytest.raises(ChannelError, match="cannot open a channel to tcp://w"):
        Channel.connect("tcp://w", endpoint, new_token())
    # One connection per listener: the right token now finds nobody.
    with pytest.raises(ChannelError):
        Channel.connect("tcp://w", endpoint, new_token(), timeout=2)


def test_a_handler_error_reaches_the_caller_and_the_channel_goes_on(
    no_threads_left: None,
) -> None:
    channel, _ = open_pair()
    try:
        channel.send(5.0, fail="bad column x3")
        with pytest.raises(RemoteError, match="ValueError: silo refused: bad col") as e:
            channel.receive(time.monotonic() + 5, never)
        assert e.value.kind == "ValueError"

        channel.send(5.0, n=7)
        assert channel.receive(time.monotonic() + 5, never)["n"] == 7
    finally:
        channel.close()


def test_waiting_checks_liveness_and_gives_up_at_the_deadline(
    no_threads_left: None,
) -> None:
    checks: list[float] = []
    channel, _ = open_pair()
    try:
        channel.send(5.0, sleep=1.6, n=1)
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            channel.receive(started + 1.1, lambda: checks.append(time.monotonic()))

        assert 1.0 <= time.monotonic() - started < 1.6 + 1.0
        assert len(checks) >= 1  # asked between the socket's 0.5 s timeouts
    finally:
        channel.close()


def test_the_late_reply_of_a_request_given_up_on_is_skipped(
    no_threads_left: None,
) -> None:
    channel, _ = open_pair()
    try:
        channel.send(5.0, sleep=0.8, n=1)
        with pytest.raises(TimeoutError):
            channel.receive(time.monotonic() + 0.3, never)

        channel.send(5.0, n=2)  # the first reply arrives first, then this one's
        reply = channel.receive(time.monotonic() + 5, never)

        assert reply["n"] == 2
    finally:
        channel.close()


def test_a_closed_channel_tells_its_listener(no_threads_left: None) -> None:
    closed = threading.Event()
    channel, _ = open_pair(on_close=closed.set)
    channel.send(5.0, n=1)
    assert channel.receive(time.monotonic() + 5, never)["n"] == 1
    assert not closed.is_set()

    channel.close()

    assert closed.wait(10)


def test_a_failing_check_ends_the_wait(no_threads_left: None) -> None:
    class Gone(RuntimeError):
        pass

    def check() -> None:
        raise Gone("its worker left the cluster")

    channel, _ = open_pair()
    try:
        channel.send(5.0, sleep=1.2)
        with pytest.raises(Gone):
            channel.receive(time.monotonic() + 30, check)
    finally:
        channel.close()


def test_the_serving_thread_ends_when_the_coordinator_closes(
    no_threads_left: None,
) -> None:
    before = set(serving_threads())
    channel, _ = open_pair()
    assert set(serving_threads()) - before

    channel.close()

    assert wait_until(lambda: not (set(serving_threads()) - before))


def test_nobody_connecting_ends_the_listener(no_threads_left: None) -> None:
    endpoint = listen(HOST, new_token(), echo, accept_seconds=0.2)

    assert wait_until(lambda: not serving_threads())
    with pytest.raises(ChannelError):
        Channel.connect("tcp://w", endpoint, new_token(), timeout=2)


def test_a_peer_that_dies_mid_exchange_is_a_channel_error() -> None:
    from tasks.silo import channel as exchange_channel

    server = socket.create_server((HOST, 0))
    token = new_token()

    def dying_worker() -> None:  # accepts, then dies on the first request
        conn, _ = server.accept()
        with conn:
            exchange_channel._receive_exact(conn, exchange_channel.TOKEN_BYTES, None)
            exchange_channel._send(conn, ("ok", None, None))
            exchange_channel._receive(conn)

    thread = threading.Thread(target=dying_worker, daemon=True)
    thread.start()
    channel = Channel.connect("tcp://worker", server.getsockname()[:2], token)
    try:
        channel.send(5.0, n=1)
        with pytest.raises(ChannelError, match="tcp://worker"):
            channel.receive(time.monotonic() + 5, never)
    finally:
        channel.close()
        server.close()
        thread.join(5)
    assert not thread.is_alive()


def test_over_tls_both_ends_need_a_certificate_from_the_ca(
    tmp_path: Path, no_threads_left: None
) -> None:
    from fedsilo.certs import tls_security
    from fedsilo.cli import main

    assert main(["certs", "init", "--dir", str(tmp_path / "pki")]) == 0
    assert main(["certs", "init", "--dir", str(tmp_path / "other")]) == 0
    for name, where in (("silo-0", "pki"), ("coordinator", "pki"), ("x", "other")):
        assert main(["certs", "issue", name, "--dir", str(tmp_path / where)]) == 0

    def security(where: str, name: str) -> Any:
        d = tmp_path / where
        return tls_security(d / "ca.pem", d / f"{name}.pem", d / f"{name}-key.pem")

    server = security("pki", "silo-0").get_listen_args("worker")["ssl_context"]
    client = security("pki", "coordinator").get_connection_args("client")
    stranger = security("other", "x").get_connection_args("client")

    token = new_token()
    endpoint = listen(HOST, token, echo, ssl_context=server)
    channel = Channel.connect("tls://w", endpoint, token, client["ssl_context"])
    try:
        channel.send(5.0, arrays=[np.ones(3)], n=2)
        reply = channel.receive(time.monotonic() + 5, never)
        np.testing.assert_array_equal(reply["arrays"][0], np.full(3, 2.0))
    finally:
        channel.close()

    token = new_token()
    endpoint = listen(HOST, token, echo, ssl_context=server)
    with pytest.raises(ChannelError):
        Channel.connect("tls://w", endpoint, token, stranger["ssl_context"])
    token = new_token()
    endpoint = listen(HOST, token, echo, ssl_context=server)
    with pytest.raises(ChannelError):  # plain TCP to a TLS listener
        Channel.connect("tls://w", endpoint, token, timeout=2)


def test_replies_are_taken_in_the_order_they_come(no_threads_left: None) -> None:
    slow, _ = open_pair()
    fast, _ = open_pair()
    try:
        slow.send(5.0, sleep=0.8, n=1)
        fast.send(5.0, n=2)

        first = first_ready([slow, fast], 5.0)
        assert first == [fast] and fast.receive(time.monotonic() + 5, never)["n"] == 2
        assert first_ready([slow], 0.05) == []  # still computing
        assert first_ready([slow], 5.0) == [slow]
        assert slow.receive(time.monotonic() + 5, never)["n"] == 1
    finally:
        slow.close()
        fast.close()
