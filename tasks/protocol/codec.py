"""The codec of what crosses the silo boundary: msgpack plus numpy buffers.

Nothing on either side unpickles what the other sends. A message is built
from plain values (None, bool, int, float, str, bytes, lists, tuples, dicts),
numpy arrays and scalars of plain dtypes, and the frozen dataclasses listed in
:func:`message_types`; anything else is refused when it is encoded, and a
payload naming anything else is refused when it is decoded. An exception
crosses as :class:`RemoteError` (its type's name and its message only).

A message encodes to a header (msgpack) and a list of buffers: arrays of at
least :data:`INBAND_BYTES` travel as buffers of their own, without a copy; the
header holds everything else. :func:`pack` joins both into one bytes object for
transports that carry one (Dask's comm); :func:`decode` checks every array's
dtype, shape and size against its buffer before it makes the array.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Sequence
from typing import Any, cast

import msgpack
import numpy as np
from pydantic import BaseModel

from fedsilo.errors import (
    CheckpointError,
    EmptyAggregationError,
    FedsiloError,
    InconsistentUpdatesError,
    SiloDataError,
    SpecError,
)
from tasks.averaging.compression import EncodedTensor, EncodedUpdate
from tasks.privacy.secagg import MaskContext, MaskedUpdate
from tasks.protocol.messages import (
    ColumnInfo,
    Evaluation,
    FeatureMoments,
    FitConfig,
    LocalUpdate,
    PrivacyRequest,
    Resident,
    SiloFault,
    SiloSchema,
)

#: Arrays smaller than this travel inside the header, larger ones as buffers.
INBAND_BYTES = 64 * 1024
#: The dtypes an array or scalar may have (no objects, no pointers).
DTYPES = frozenset(
    np.dtype(t).str
    for t in (
        "bool",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "float16",
        "float32",
        "float64",
    )
)
#: At most this many buffers in one message.
MAX_BUFFERS = 1 << 16

_TUPLE, _ARRAY, _MESSAGE, _ERROR, _SCALAR, _BUFFER = range(1, 7)
_COUNT = struct.Struct("<I")


class CodecError(FedsiloError):
    """A message that cannot be encoded, or a payload that is not a message."""


class RemoteError(FedsiloError):
    """An exception raised on the other side of the silo boundary."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}" if message else kind)
        self.kind = kind
        self.message = message


_TYPES: dict[str, type] = {}

#: fedsilo's errors that cross as themselves: a user's mistake found at a silo
#: reads the same as one found here. Any other exception is a RemoteError.
_ERRORS: dict[str, type[FedsiloError]] = {
    cls.__name__: cls
    for cls in (
        SpecError,
        InconsistentUpdatesError,
        EmptyAggregationError,
        CheckpointError,
        CodecError,
    )
}


def _error(kind: str, text: str, fields: Any) -> FedsiloError:
    """Return the error a decoded (kind, text, fields) names."""
    if kind == SiloDataError.__name__ and isinstance(fields, dict):
        silo, column = fields.get("silo"), fields.get("column")
        if isinstance(silo, str) and (column is None or isinstance(column, str)):
            where = f"silo {silo!r}" + (f", column {column!r}" if column else "")
            return SiloDataError(silo, text.removeprefix(f"{where}: "), column)
    cls = _ERRORS.get(kind)
    return cls(text) if cls is not None else RemoteError(kind, text)


def register(*types: type) -> None:
    """Allow these frozen dataclasses (or pydantic models) across, by their names.

    The core messages are registered here; a model family registers its own
    in its messages module, so a process accepts them once it runs that
    family. A name stays bound to one class. A pydantic model crosses as its
    fields and is validated again on arrival.
    """
    for cls in types:
        if not (dataclasses.is_dataclass(cls) or issubclass(cls, BaseModel)):
            raise TypeError(f"{cls.__name__} is not a dataclass")
        known = _TYPES.setdefault(cls.__name__, cls)
        if known is not cls:
            raise TypeError(f"another message type is already named {cls.__name__}")


def message_types() -> dict[str, type]:
    """Return the dataclasses that may cross the boundary, by name."""
    return dict(_TYPES)


register(
    ColumnInfo,
    EncodedTensor,
    EncodedUpdate,
    Evaluation,
    FeatureMoments,
    FitConfig,
    LocalUpdate,
    MaskContext,
    MaskedUpdate,
    PrivacyRequest,
    Resident,
    SiloFault,
    SiloSchema,
)


def encode(value: Any) -> tuple[bytes, list[memoryview]]:
    """Return a message's header and its large array buffers (not copied)."""
    buffers: list[memoryview] = []

    def default(obj: Any) -> Any:
        return _to_ext(obj, buffers, default)

    try:
        header = _pack(value, default)
    except (TypeError, ValueError, OverflowError) as error:
        raise CodecError(f"cannot send {type(value).__name__}: {error}") from None
    return header, buffers


def _pack(value: Any, default: Any) -> bytes:
    return msgpack.packb(value, default=default, use_bin_type=True, strict_types=True)


def _to_ext(obj: Any, buffers: list[memoryview], default: Any) -> Any:
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return msgpack.ExtType(_TUPLE, _pack(list(obj), default))
    if isinstance(obj, np.ndarray):
        return _array_ext(obj, buffers, default)
    if isinstance(obj, np.str_ | np.bytes_):
        return obj.item()
    if isinstance(obj, np.generic):
        dtype = obj.dtype.str
        if dtype not in DTYPES:
            raise TypeError(f"numpy scalar of dtype {dtype!r}")
        return msgpack.ExtType(_SCALAR, _pack([dtype, obj.tobytes()], default))
    if isinstance(obj, BaseException):
        kind = obj.kind if isinstance(obj, RemoteError) else type(obj).__name__
        text = obj.message if isinstance(obj, RemoteError) else str(obj)
        fields = (
            {"silo": obj.silo, "column": obj.column}
            if isinstance(obj, SiloDataError)
            else {}
        )
        return msgpack.ExtType(_ERROR, _pack([kind, text, fields], default))
    if isinstance(obj, BaseModel):
        name = type(obj).__name__
        if _TYPES.get(name) is not type(obj):
            raise TypeError(f"{name} is not a message type")
        return msgpack.ExtType(_MESSAGE, _pack([name, obj.model_dump()], default))
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        name = type(obj).__name__
        if _TYPES.get(name) is not type(obj):
            raise TypeError(f"{name} is not a message type")
        values = {
            f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.init
        }
        return msgpack.ExtType(_MESSAGE, _pack([name, values], default))
    plain: type
    for plain in (bool, int, float, str, bytes, list, dict):
        if isinstance(obj, plain):  # a subclass (an enum, an ordered dict)
            return plain(cast(Any, obj))
    raise TypeError(f"{type(obj).__name__} cannot cross the silo boundary")


def _array_ext(
    array: np.ndarray, buffers: list[memoryview], default: Any
) -> msgpack.ExtType:
    dtype = array.dtype.str
    if dtype not in DTYPES:
        raise TypeError(f"array of dtype {dtype!r}")
    shape = list(array.shape)
    data = np.ascontiguousarray(array).reshape(array.shape)  # keeps 0-d arrays
    if data.nbytes >= INBAND_BYTES:
        buffers.append(memoryview(cast(Any, data)).cast("B"))
        return msgpack.ExtType(
            _ARRAY, _pack([dtype, shape, _BUFFER, len(buffers) - 1], default)
        )
    return msgpack.ExtType(_ARRAY, _pack([dtype, shape, 0, data.tobytes()], default))


def decode(header: bytes | bytearray | memoryview, buffers: Sequence[Any] = ()) -> Any:
    """Return the message in ``header`` and ``buffers``; refuse anything else."""
    if len(buffers) > MAX_BUFFERS:
        raise CodecError(f"a message of {len(buffers)} buffers")
    views = [memoryview(b).cast("B") for b in buffers]

    def hook(code: int, data: bytes) -> Any:
        return _from_ext(code, data, views, hook)

    try:
        return _unpack(header, hook)
    except CodecError:
        raise
    except Exception as error:  # malformed msgpack, bad shapes, wrong fields
        raise CodecError(f"not a message: {type(error).__name__}: {error}") from None


def _unpack(data: Any, hook: Any) -> Any:
    return msgpack.unpackb(
        data,
        ext_hook=hook,
        raw=False,
        strict_map_key=False,
        use_list=True,
    )


def _from_ext(code: int, data: bytes, views: list[memoryview], hook: Any) -> Any:
    items = _unpack(data, hook)
    if code == _TUPLE:
        return tuple(items)
    if code == _ARRAY:
        return _array(items, views)
    if code == _SCALAR:
        dtype, raw = items
        if dtype not in DTYPES:
            raise CodecError(f"a scalar of dtype {dtype!r}")
        return np.frombuffer(raw, dtype=np.dtype(dtype), count=1)[0]
    if code == _ERROR:
        kind, text, *rest = items
        return _error(str(kind), str(text), rest[0] if rest else {})
    if code == _MESSAGE:
        name, values = items
        cls = _TYPES.get(name)
        if cls is None or not isinstance(values, dict):
            raise CodecError(f"{name!r} is not a message type")
        return cls(**values)
    raise CodecError(f"unknown extension {code}")


def _array(items: list[Any], views: list[memoryview]) -> np.ndarray:
    dtype_str, shape, where, data = items
    if dtype_str not in DTYPES:
        raise CodecError(f"an array of dtype {dtype_str!r}")
    dtype = np.dtype(dtype_str)
    if not all(isinstance(n, int) and n >= 0 for n in shape):
        raise CodecError(f"an array of shape {shape!r}")
    raw = views[data] if where == _BUFFER else memoryview(data)
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if raw.nbytes != expected:
        raise CodecError(
            f"an array of shape {tuple(shape)} and dtype {dtype} in {raw.nbytes} bytes"
        )
    array = np.frombuffer(raw, dtype=dtype).reshape(shape)
    # Received arrays are the receiver's own, as an unpickled one would be.
    return array.copy() if raw.readonly else array


def pack(value: Any) -> bytes:
    """Return a message as one bytes object: part count, part sizes, parts."""
    header, buffers = encode(value)
    parts: list[bytes | memoryview] = [header, *buffers]
    sizes = struct.pack(f"<{len(parts)}Q", *(memoryview(p).nbytes for p in parts))
    return b"".join([_COUNT.pack(len(parts)), sizes, *parts])


def unpack(blob: bytes | bytearray | memoryview) -> Any:
    """Return the message :func:`pack` made; refuse anything else."""
    view = memoryview(blob).cast("B")
    if view.nbytes < _COUNT.size:
        raise CodecError("an empty message")
    (count,) = _COUNT.unpack(view[: _COUNT.size])
    if not 1 <= count <= MAX_BUFFERS + 1:
        raise CodecError(f"a message of {count} parts")
    start = _COUNT.size + 8 * count
    if view.nbytes < start:
        raise CodecError("a truncated message")
    sizes = struct.unpack(f"<{count}Q", view[_COUNT.size : start])
    if start + sum(sizes) != view.nbytes:
        raise CodecError("a message whose parts do not add up to its size")
    parts = []
    for size in sizes:
        parts.append(view[start : start + size])
        start += size
    return decode(parts[0], parts[1:])
