"""Compression of a silo's update: float16, or 8-bit stochastic quantization.

A silo sends the *change* of its model (local parameters minus the global ones
it received), encoded; the coordinator decodes it and adds the global model
back. Methods, per tensor:

- ``float16``: the change divided by a power of two (one per tensor, so that
  its largest magnitude sits below 2**14, well inside float16's range and
  away from its subnormals), then cast. Relative error at most 2**-11.
- ``int8``: 8-bit stochastic quantization. Each chunk of ``chunk`` values is
  mapped onto 256 levels between its minimum and maximum; a value between
  two levels goes to the upper one with probability equal to its distance
  from the lower one (unbiased: the expected decoded value is the value), drawn
  from a seeded generator. Sent: one uint8 per value plus each chunk's
  minimum and maximum (float64).
- ``raw``: the change as float64. Used for the tensors the caller names (state
  counters), for tensors holding non-finite values (the coordinator's
  validation rejects them) and wherever an encoding would not be smaller
  (a one-element tensor).

Error feedback (Seide et al. 2014; Karimireddy et al. 2019): the silo keeps the
residual, what compression lost (the corrected change minus its decoded
value), and adds it to the next round's change before encoding. The residual
stays in :class:`SiloCompressor`, on the silo's worker: it never crosses the
network. Summed over rounds, decoded changes plus the final residual equal the
true changes.

Plain numpy; no Prefect or Dask import.
"""

from __future__ import annotations

import zlib
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

Params = dict[str, np.ndarray]
Kind = Literal["none", "float16", "int8"]
Method = Literal["raw", "float16", "int8"]
KINDS: tuple[Kind, ...] = ("none", "float16", "int8")

#: Values per int8 chunk (each chunk has its own minimum and maximum).
CHUNK = 1024
#: Highest int8 code: 256 levels, 0..255, stored as uint8.
LEVELS = 255
#: Largest magnitude of a scaled float16 tensor is below 2**F16_TOP.
F16_TOP = 14


def _empty() -> np.ndarray:
    return np.zeros(0)


@dataclass(frozen=True, slots=True)
class EncodedTensor:
    """One tensor's change as sent: values or codes plus what decodes them.

    ``raw``: ``data`` float64. ``float16``: ``data`` float16, ``scale`` the
    tensor's power-of-two scale (shape ``()``). ``int8``: ``data`` uint8 codes,
    ``low``/``high`` each chunk's minimum and maximum.
    """

    method: Method
    shape: tuple[int, ...]
    data: np.ndarray
    scale: np.ndarray = field(default_factory=_empty)
    low: np.ndarray = field(default_factory=_empty)
    high: np.ndarray = field(default_factory=_empty)
    chunk: int = CHUNK

    @property
    def nbytes(self) -> int:
        """Return the bytes of every array this tensor sends."""
        return int(
            self.data.nbytes + self.scale.nbytes + self.low.nbytes + self.high.nbytes
        )


@dataclass(frozen=True, slots=True)
class EncodedUpdate:
    """A silo's compressed change, tensor by tensor (no residual, ever)."""

    kind: Kind
    tensors: dict[str, EncodedTensor]

    @property
    def nbytes(self) -> int:
        """Return the bytes of every array sent."""
        return sum(t.nbytes for t in self.tensors.values())


def quantization_rng(seed: int, round_number: int, silo: str) -> np.random.Generator:
    """Return the generator of a silo's stochastic rounding in one round.

    Its own stream (not the training one), the same on every rerun.
    """
    return np.random.default_rng([seed, round_number, zlib.crc32(silo.encode()), 8])


def _raw(x: np.ndarray) -> EncodedTensor:
    return EncodedTensor("raw", x.shape, np.array(x, dtype=np.float64))


def encode_float16(x: np.ndarray) -> EncodedTensor:
    """Encode a finite array as float16 after a power-of-two scale."""
    x = np.asarray(x, dtype=np.float64)
    top = float(np.max(np.abs(x))) if x.size else 0.0
    exponent = np.frexp(top)[1] if top > 0.0 else F16_TOP  # top < 2**exponent
    scale = np.ldexp(1.0, int(exponent) - F16_TOP)
    data = (x / scale).astype(np.float16)
    return EncodedTensor("float16", x.shape, data, scale=np.array(scale))


def encode_int8(
    x: np.ndarray, rng: np.random.Generator, chunk: int = CHUNK
) -> EncodedTensor:
    """Encode a finite array as unbiased stochastic 8-bit codes, chunk by chunk."""
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1, got {chunk}")
    x = np.asarray(x, dtype=np.float64)
    flat = x.ravel()
    if flat.size == 0:
        return EncodedTensor("int8", x.shape, np.zeros(0, np.uint8), chunk=chunk)
    starts = np.arange(0, flat.size, chunk)
    low = np.minimum.reduceat(flat, starts)
    high = np.maximum.reduceat(flat, starts)
    which = np.arange(flat.size) // chunk
    step = ((high - low) / LEVELS)[which]
    safe = np.where(step > 0.0, step, 1.0)
    level = np.where(step > 0.0, (flat - low[which]) / safe, 0.0)
    floor = np.floor(level)
    up = rng.random(flat.size) < (level - floor)
    codes = np.clip(floor + up, 0, LEVELS).astype(np.uint8)
    return EncodedTensor("int8", x.shape, codes, low=low, high=high, chunk=chunk)


def decode_tensor(tensor: EncodedTensor) -> np.ndarray:
    """Return a tensor's decoded change (float64); ValueError if malformed."""
    size = int(np.prod(tensor.shape, dtype=np.int64))
    if tensor.data.size != size:
        raise ValueError(f"{tensor.data.size} values for shape {tensor.shape}")
    if tensor.method == "raw":
        return np.asarray(tensor.data, dtype=np.float64).reshape(tensor.shape)
    if tensor.method == "float16":
        if tensor.scale.size != 1:
            raise ValueError("a float16 tensor needs one scale")
        values = tensor.data.astype(np.float64) * float(tensor.scale)
        return values.reshape(tensor.shape)
    if tensor.method == "int8":
        if tensor.chunk < 1:
            raise ValueError(f"chunk must be at least 1, got {tensor.chunk}")
        n_chunks = -(-size // tensor.chunk)
        if tensor.low.size != n_chunks or tensor.high.size != n_chunks:
            raise ValueError(f"an int8 tensor of {size} values needs {n_chunks} ranges")
        which = np.arange(size) // tensor.chunk
        low, high = tensor.low[which], tensor.high[which]
        codes = tensor.data.astype(np.float64)
        values = np.clip(low + codes * ((high - low) / LEVELS), low, high)
        return values.reshape(tensor.shape)
    raise ValueError(f"unknown method {tensor.method!r}")


def encode(
    delta: Mapping[str, np.ndarray],
    kind: Kind,
    rng: np.random.Generator | None = None,
    *,
    raw: Collection[str] = (),
    chunk: int = CHUNK,
) -> EncodedUpdate:
    """Encode a change tensor by tensor (in name order); ``raw`` names go as is.

    A tensor is encoded only when that makes it smaller and all its values are
    finite; otherwise it is sent raw.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown compression {kind!r}; use one of {list(KINDS)}")
    if kind == "int8" and rng is None:
        raise ValueError("int8 quantization needs a generator")
    out: dict[str, EncodedTensor] = {}
    for name in sorted(delta):
        x = np.asarray(delta[name], dtype=np.float64)
        plain = _raw(x)
        if kind == "none" or name in raw or not np.all(np.isfinite(x)):
            out[name] = plain
            continue
        if kind == "float16":
            packed = encode_float16(x)
        else:
            assert rng is not None
            packed = encode_int8(x, rng, chunk)
        out[name] = packed if packed.nbytes < plain.nbytes else plain
    return EncodedUpdate(kind, out)


def decode(encoded: EncodedUpdate) -> Params:
    """Return the decoded change of every tensor (float64)."""
    return {name: decode_tensor(t) for name, t in encoded.tensors.items()}


def compress_with_feedback(
    delta: Mapping[str, np.ndarray],
    residual: Mapping[str, np.ndarray],
    kind: Kind,
    rng: np.random.Generator | None = None,
    *,
    raw: Collection[str] = (),
    chunk: int = CHUNK,
) -> tuple[EncodedUpdate, Params]:
    """Encode ``delta + residual``; return it and the new residual (kept at the silo).

    A non-finite residual value (from a non-finite change) restarts at zero.
    """
    corrected = {
        name: np.asarray(value, dtype=np.float64)
        + np.asarray(residual.get(name, 0.0), dtype=np.float64)
        for name, value in delta.items()
    }
    encoded = encode(corrected, kind, rng, raw=raw, chunk=chunk)
    decoded = decode(encoded)
    left = {}
    for name, value in corrected.items():
        lost = value - decoded[name]
        left[name] = np.where(np.isfinite(lost), lost, 0.0)
    return encoded, left


def _same_names(names: Collection[str], global_params: Mapping[str, object]) -> None:
    if sorted(names) != sorted(global_params):
        raise ValueError(
            f"tensors {sorted(names)} do not match the global {sorted(global_params)}"
        )


def change_of(
    params: Mapping[str, np.ndarray], global_params: Mapping[str, np.ndarray]
) -> Params:
    """Return ``params - global`` tensor by tensor (float64); ValueError on names."""
    _same_names(list(params), global_params)
    return {
        name: np.asarray(params[name], dtype=np.float64)
        - np.asarray(global_params[name], dtype=np.float64)
        for name in params
    }


@dataclass(slots=True)
class SiloCompressor:
    """A silo's update encoder for one run, with its error-feedback residual.

    It lives on the silo's worker, held by a Dask future the coordinator passes
    to every fit and never resolves; it is freed when the run releases that
    future. The residual is never part of a reply.
    """

    kind: Kind
    error_feedback: bool = False
    chunk: int = CHUNK
    residual: Params = field(default_factory=dict)

    def compress(
        self,
        params: Mapping[str, np.ndarray],
        global_params: Mapping[str, np.ndarray],
        rng: np.random.Generator,
        *,
        raw: Collection[str] = (),
    ) -> EncodedUpdate:
        """Encode the change from the global model (plus the residual, if kept)."""
        delta = change_of(params, global_params)
        if not self.error_feedback:
            return encode(delta, self.kind, rng, raw=raw, chunk=self.chunk)
        encoded, self.residual = compress_with_feedback(
            delta, self.residual, self.kind, rng, raw=raw, chunk=self.chunk
        )
        return encoded


def apply_change(
    global_params: Mapping[str, np.ndarray], change: Mapping[str, np.ndarray]
) -> Params:
    """Return ``global + change`` in the global tensors' dtypes.

    ValueError if names or shapes differ.
    """
    _same_names(list(change), global_params)
    out = {}
    for name, base in global_params.items():
        base = np.asarray(base)
        if np.shape(change[name]) != base.shape:
            raise ValueError(
                f"tensor {name!r} has shape {np.shape(change[name])}, "
                f"expected {base.shape}"
            )
        total = base.astype(np.float64) + change[name]
        out[name] = total.astype(base.dtype, copy=False)
    return out
