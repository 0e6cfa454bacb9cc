"""The silo boundary's codec: messages round-trip; nothing else gets through."""

from __future__ import annotations

import os
import pickle
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tasks.boosting.messages  # noqa: F401  (registers the boosting messages)
from tasks.gbdt.histogram import NodeHistograms
from tasks.gbdt.silo_state import LossSum, NodeSplit
from tasks.privacy.secagg import MaskContext, generate_keypair
from tasks.protocol import codec
from tasks.protocol.codec import CodecError, RemoteError
from tasks.protocol.messages import Evaluation, LocalUpdate, Resident
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


def test_messages_round_trip_with_their_types() -> None:
    rng = np.random.default_rng(0)
    message = {
        "update": LocalUpdate(
            silo="a",
            round=3,
            worker="w",
            params={"coef_": rng.random((1, 30)), "big": rng.random(20_000)},
            n_samples=10,
            seconds=0.5,
            bytes_down=1,
            bytes_up=2,
            masked=None,
        ),
        "evaluations": [
            Evaluation("a", 3, "w", "test", 5, {"accuracy": 0.8}, {"tp": 2.0})
        ],
        "splits": [NodeSplit(0, 1, 2, 3, True, 3)],
        "nodes": [(0, 1), (0, 2)],
        "context": MaskContext("run", 2, 1, "tree0-level1"),
        "peers": {1: b"\x00" * 32, 2: b"\x01" * 32},
        "loss": (LossSum(1.5, 10), None),
        "resident": Resident("prepared-a"),
        "scalar": np.float32(0.25),
        "step": np.array(3.0),  # a 0-d array stays 0-d
        "label": np.str_("yes"),
    }
    header, buffers = codec.encode(message)
    assert len(buffers) == 1  # the large array, not copied into the header
    back = codec.decode(header, buffers)
    assert (
        back["update"].params["coef_"].tolist()
        == message["update"].params["coef_"].tolist()
    )
    np.testing.assert_array_equal(
        back["update"].params["big"], message["update"].params["big"]
    )
    assert back["evaluations"] == message["evaluations"]
    assert back["splits"] == message["splits"]
    assert back["nodes"] == [(0, 1), (0, 2)] and isinstance(back["nodes"][0], tuple)
    assert back["context"] == message["context"]
    assert back["peers"] == message["peers"]
    assert back["loss"] == (LossSum(1.5, 10), None)
    assert back["resident"] == Resident("prepared-a")
    assert back["scalar"] == np.float32(0.25) and back["scalar"].dtype == np.float32
    assert back["label"] == "yes"
    assert back["step"].shape == () and float(back["step"]) == 3.0
    assert codec.unpack(codec.pack(message))["splits"] == message["splits"]


def test_received_arrays_are_writable_like_unpickled_ones() -> None:
    histograms = NodeHistograms(
        nodes=np.zeros((2, 2), np.int64),
        sums=np.ones((2, 3, 5, 2)),
        totals=np.ones((2, 3)),
    )
    back = codec.unpack(codec.pack(histograms))
    np.add(back.sums, 1.0, out=back.sums)  # the coordinator adds replies in place
    assert float(back.sums.sum()) == 2.0 * histograms.sums.size


@pytest.mark.parametrize(
    "value",
    [
        object(),
        np.array([object()], dtype=object),
        generate_keypair(),  # a silo's private key never crosses
        lambda: None,
    ],
)
def test_values_outside_the_protocol_are_refused_when_sent(value: Any) -> None:
    with pytest.raises(CodecError, match="cannot send"):
        codec.encode({"value": value})


def test_an_exception_crosses_as_its_name_and_message_only() -> None:
    back = codec.unpack(codec.pack(("error", KeyError("silo state gone"))))
    assert isinstance(back[1], RemoteError)
    assert back[1].kind == "KeyError" and "silo state gone" in back[1].message


def test_a_pickle_is_refused_without_being_loaded(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps(Exploit(marker))
    for blob in (payload, struct.pack("<IQ", 1, len(payload)) + payload):
        with pytest.raises(CodecError):
            codec.unpack(blob)
    with pytest.raises(CodecError):
        codec.decode(payload)
    assert not marker.exists()


def test_forged_arrays_and_types_are_refused() -> None:
    good_header, _ = codec.encode(np.arange(4.0))
    forged = good_header.replace(b"<f8", b"|O8")  # an object array
    with pytest.raises(CodecError, match="dtype"):
        codec.decode(forged)
    header, buffers = codec.encode(np.arange(20_000.0))
    with pytest.raises(CodecError, match="bytes"):  # a buffer too short
        codec.decode(header, [bytes(buffers[0])[:-8]])
    fake = codec.encode(Resident("x"))[0].replace(b"Resident", b"Popen\x00\x00\x00")
    with pytest.raises(CodecError):
        codec.decode(fake)


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
        exchange_channel._receive(sock)  # ("ok", None)
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
    payload = pickle.dumps(("ok", Exploit(marker)))

    def fake_worker() -> None:
        conn, _ = server.accept()
        with conn:
            exchange_channel._receive_exact(conn, exchange_channel.TOKEN_BYTES, None)
            exchange_channel._send(conn, ("ok", None))
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


def test_averaged_runs_accept_no_boosting_messages_and_load_no_kernels() -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import tasks.averaging.averaged, tasks.protocol.codec as codec\n"
        "assert 'numba' not in sys.modules\n"
        "assert 'NodeHistograms' not in codec.message_types()\n"
        "import tasks.boosting.federation\n"
        "assert 'NodeHistograms' in codec.message_types()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
