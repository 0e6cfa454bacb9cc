"""The silo boundary's codec: messages round-trip; nothing else gets through."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import tasks.boosting.messages  # noqa: F401  (registers the boosting messages)
from fedsilo.errors import SiloFailedError
from tasks.gbdt.histogram import NodeHistograms
from tasks.gbdt.silo_state import LossSum, NodeSplit
from tasks.privacy.secagg import MaskContext, generate_keypair
from tasks.protocol import codec
from tasks.protocol.codec import CodecError, RemoteError
from tasks.protocol.messages import Evaluation, LocalUpdate, Resident


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
        "resident": Resident("run-1", "a", "prepared"),
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
    assert back["resident"] == Resident("run-1", "a", "prepared")
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


def test_forged_arrays_and_types_are_refused() -> None:
    good_header, _ = codec.encode(np.arange(4.0))
    forged = good_header.replace(b"<f8", b"|O8")  # an object array
    with pytest.raises(CodecError, match="dtype"):
        codec.decode(forged)
    header, buffers = codec.encode(np.arange(20_000.0))
    with pytest.raises(CodecError, match="bytes"):  # a buffer too short
        codec.decode(header, [bytes(buffers[0])[:-8]])
    fake = codec.encode(Resident("r", "s", "x"))[0].replace(
        b"Resident", b"Popen\x00\x00\x00"
    )
    with pytest.raises(CodecError):
        codec.decode(fake)


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


def test_a_silos_data_error_crosses_as_itself_with_its_silo_and_column() -> None:
    from fedsilo.errors import SiloDataError, SpecError

    sent = SiloDataError("silo-2", "holds inf in 2 train rows", column="age")
    back = codec.unpack(codec.pack(("error", sent)))[1]
    assert isinstance(back, SiloDataError) and not isinstance(back, RemoteError)
    assert (back.silo, back.column, back.reason) == ("silo-2", "age", sent.reason)

    spec = codec.unpack(codec.pack(("error", SpecError("rounds must be > 0"))))[1]
    assert isinstance(spec, SpecError) and spec.reason == "rounds must be > 0"
    # Anything else, fedsilo's or not, is a RemoteError: a name and a message.
    other = codec.unpack(codec.pack(("error", SiloFailedError("s", "gone"))))[1]
    assert isinstance(other, RemoteError) and other.kind == "SiloFailedError"


def test_forged_error_fields_give_a_remote_error() -> None:
    import msgpack

    forged = msgpack.ExtType(4, codec._pack(["SiloDataError", "x", {"silo": 7}], None))
    back = codec.decode(msgpack.packb(forged))
    assert isinstance(back, RemoteError) and back.kind == "SiloDataError"
