"""The messages of secure aggregation with dropouts (SecAgg+), one per stage.

Every message is a frozen dataclass of plain values (str, int, bytes, tuples,
uint64 arrays) and nested messages, so the silo channel's codec carries it
once the types of :data:`MESSAGE_TYPES` are registered
(``tasks.protocol.codec.register(*MESSAGE_TYPES)``). Every message names its
:class:`SecAggContext`; a party refuses a message of another context.

The stages (docs/secure-aggregation.md):

1. silo -> coordinator: :class:`KeyAdvertisement` (two X25519 public keys,
   signed with the silo's certificate key);
   coordinator -> each silo: :class:`KeyRoster` (the digests of every
   advertisement received, its neighbours' in full).
2. silo -> coordinator: :class:`ShareBundle` (one :class:`EncryptedShare` per
   neighbour: shares of the silo's self-mask seed and masking key, encrypted
   with AES-GCM under a key only that neighbour shares);
   coordinator -> each silo: :class:`MaskRequest` (who shared, and the shares
   addressed to it).
3. silo -> coordinator: :class:`MaskedInput`.
4. coordinator -> every survivor: :class:`UnmaskRequest` (who survived, who
   dropped); silo -> coordinator: :class:`SurvivorsSignature` (its signature
   on that request); coordinator -> each signer: :class:`RevealRequest` (its
   neighbours' signatures); silo -> coordinator: :class:`UnmaskResponse`
   (:class:`RevealedShare` per neighbour: one of its two shares, never both).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from tasks.privacy.encoding import FixedPoint
from tasks.privacy.errors import SecureAggregationError
from tasks.privacy.neighbours import COLLUDING, DROPOUT, FAILURE_BITS

PROTOCOL = "fedsilo/secagg+/v1"
#: Length of an X25519 public key.
PUBLIC_KEY_BYTES = 32
_STEP = re.compile(r"^[A-Za-z0-9._:/-]{1,128}$")


class MessageError(SecureAggregationError):
    """A message is malformed, of another context, or from an unexpected party."""


class Secret(StrEnum):
    """Which of a silo's two shared secrets a revealed share belongs to."""

    SELF_MASK = "self-mask"
    MASKING_KEY = "masking-key"


@dataclass(frozen=True, slots=True)
class SecAggContext:
    """What one secure aggregation is of: a run, a round and a step within it.

    A silo masks at most one vector per context; each message a round
    aggregates (each GBDT histogram exchange, say) has its own ``step``.
    """

    run_id: str
    round: int
    step: str = "update"

    def __post_init__(self) -> None:
        if not (isinstance(self.run_id, str) and self.run_id):
            raise MessageError(f"context run_id {self.run_id!r}: give a non-empty name")
        if not (isinstance(self.round, int) and self.round >= 0):
            raise MessageError(f"context round {self.round!r}: give an integer >= 0")
        if not (isinstance(self.step, str) and _STEP.match(self.step)):
            raise MessageError(
                f"context step {self.step!r}: give 1-128 letters, digits or ._:/-"
            )

    def label(self) -> str:
        """Return ``run/round/step`` for messages."""
        return f"{self.run_id}/r{self.round}/{self.step}"


@dataclass(frozen=True, slots=True)
class SecAggConfig:
    """What every party of an aggregation agrees on before it starts.

    ``length`` values per input, encoded with ``FixedPoint(frac_bits,
    bound)``; at least ``min_silos`` silos in the roster and among the
    survivors; the neighbour graph's assumptions (``dropout``, ``colluding``,
    ``failure_bits``: :func:`tasks.privacy.neighbours.choose_parameters`).
    Its digest is part of what a silo signs, so parties with different
    configurations refuse each other's keys.
    """

    length: int
    min_silos: int = 3
    dropout: float = DROPOUT
    colluding: float = COLLUDING
    failure_bits: int = FAILURE_BITS
    frac_bits: int = 24
    bound: float = 2.0**31

    def __post_init__(self) -> None:
        if not (isinstance(self.length, int) and self.length >= 1):
            raise MessageError(f"config length {self.length!r}: give 1 or more")
        if not (isinstance(self.min_silos, int) and self.min_silos >= 3):
            raise MessageError(
                f"config min_silos {self.min_silos!r}: give 3 or more (with two, "
                "each silo learns the other's input from the sum)"
            )
        if not (math.isfinite(self.dropout) and 0.0 <= self.dropout < 1.0):
            raise MessageError(
                f"config dropout {self.dropout!r}: give a rate in [0, 1)"
            )
        if not (math.isfinite(self.colluding) and 0.0 <= self.colluding < 1.0):
            raise MessageError(
                f"config colluding {self.colluding!r}: give a fraction in [0, 1)"
            )
        _ = self.fixed_point  # checks frac_bits and bound

    @property
    def fixed_point(self) -> FixedPoint:
        """Return the fixed-point encoding of inputs."""
        try:
            return FixedPoint(frac_bits=self.frac_bits, bound=self.bound)
        except ValueError as error:
            raise MessageError(f"config fixed point: {error}") from None

    def digest(self) -> bytes:
        """Return the SHA-256 of the configuration's canonical JSON."""
        fields = [
            PROTOCOL,
            self.length,
            self.min_silos,
            repr(float(self.dropout)),
            repr(float(self.colluding)),
            self.failure_bits,
            self.frac_bits,
            repr(float(self.bound)),
        ]
        return hashlib.sha256(json.dumps(fields).encode()).digest()


def advertisement_payload(
    context: SecAggContext,
    config_digest: bytes,
    silo: str,
    encryption_key: bytes,
    masking_key: bytes,
) -> bytes:
    """Return the bytes a silo signs: protocol, context, config, name and keys."""
    fields = [
        PROTOCOL,
        "advertise",
        context.run_id,
        context.round,
        context.step,
        config_digest.hex(),
        silo,
        encryption_key.hex(),
        masking_key.hex(),
    ]
    return json.dumps(fields).encode()


@dataclass(frozen=True, slots=True)
class KeyAdvertisement:
    """A silo's two public keys for one context, signed with its certificate key.

    ``encryption_key`` agrees the keys that encrypt shares between two silos,
    ``masking_key`` the seeds of their pairwise masks; ``certificate`` is the
    silo's certificate (DER), ``signature`` covers
    :func:`advertisement_payload`.
    """

    context: SecAggContext
    silo: str
    encryption_key: bytes
    masking_key: bytes
    certificate: bytes
    signature: bytes

    def __post_init__(self) -> None:
        for name in ("encryption_key", "masking_key"):
            key = getattr(self, name)
            if not (isinstance(key, bytes) and len(key) == PUBLIC_KEY_BYTES):
                raise MessageError(
                    f"silo {self.silo!r}'s advertisement: {name} must be "
                    f"{PUBLIC_KEY_BYTES} bytes"
                )

    def payload(self, config_digest: bytes) -> bytes:
        """Return what the signature covers."""
        return advertisement_payload(
            self.context,
            config_digest,
            self.silo,
            self.encryption_key,
            self.masking_key,
        )

    def digest(self) -> bytes:
        """Return the SHA-256 of the name, keys, certificate and signature."""
        fields = (
            self.silo.encode(),
            self.encryption_key,
            self.masking_key,
            self.certificate,
            self.signature,
        )
        return hashlib.sha256(
            b"".join(len(f).to_bytes(4, "little") + f for f in fields)
        ).digest()


@dataclass(frozen=True, slots=True)
class RosterEntry:
    """A silo of the roster and the digest of its advertisement."""

    silo: str
    digest: bytes


@dataclass(frozen=True, slots=True)
class KeyRoster:
    """To one silo: every advertisement's digest, and its neighbours' in full.

    The digests (in name order) fix the session every party derives its
    graph and keys from; a silo checks its neighbours' advertisements against
    them and verifies their signatures. Sending the others only as digests
    keeps what a silo receives at 36 bytes and its name per silo of the
    roster.
    """

    context: SecAggContext
    entries: tuple[RosterEntry, ...]
    advertisements: tuple[KeyAdvertisement, ...]


@dataclass(frozen=True, slots=True)
class EncryptedShare:
    """Shares of ``sender``'s two secrets for ``receiver``, AES-256-GCM encrypted."""

    sender: str
    receiver: str
    ciphertext: bytes


@dataclass(frozen=True, slots=True)
class ShareBundle:
    """A silo's encrypted shares, one for each of its neighbours."""

    context: SecAggContext
    sender: str
    shares: tuple[EncryptedShare, ...]


@dataclass(frozen=True, slots=True)
class MaskRequest:
    """To one silo: the silos that shared (``sharing``) and their shares for it."""

    context: SecAggContext
    receiver: str
    sharing: tuple[str, ...]
    shares: tuple[EncryptedShare, ...]


@dataclass(frozen=True, slots=True, eq=False)
class MaskedInput:
    """A silo's input in fixed point plus its self mask and pairwise masks."""

    context: SecAggContext
    silo: str
    values: np.ndarray = field(repr=False)  # uint64, modulo 2**64


@dataclass(frozen=True, slots=True)
class UnmaskRequest:
    """To every survivor: who sent a masked input and who shared but did not."""

    context: SecAggContext
    survivors: tuple[str, ...]
    dropped: tuple[str, ...]


def survivors_payload(
    session: bytes, survivors: tuple[str, ...], dropped: tuple[str, ...]
) -> bytes:
    """Return the bytes a silo signs to confirm the unmask request it received."""
    return json.dumps(
        [PROTOCOL, "survivors", session.hex(), list(survivors), list(dropped)]
    ).encode()


@dataclass(frozen=True, slots=True)
class SurvivorsSignature:
    """A silo's signature on the unmask request it received (its view)."""

    context: SecAggContext
    silo: str
    signature: bytes


@dataclass(frozen=True, slots=True)
class RevealRequest:
    """To one silo: its neighbours' signatures on the unmask request they received.

    A silo reveals shares only when at least ``t`` of its neighbours signed
    the very request it signed (docs/secure-aggregation.md, "consistency").
    """

    context: SecAggContext
    signatures: tuple[SurvivorsSignature, ...]


@dataclass(frozen=True, slots=True)
class RevealedShare:
    """The share the revealing silo holds of ``owner``'s ``secret``."""

    owner: str
    secret: str  # a Secret value
    value: bytes


@dataclass(frozen=True, slots=True)
class UnmaskResponse:
    """A survivor's revealed shares: self-mask seeds of survivors, keys of dropped."""

    context: SecAggContext
    silo: str
    shares: tuple[RevealedShare, ...]


@dataclass(frozen=True, slots=True, eq=False)
class AggregateResult:
    """The sum of the survivors' inputs (uint64, modulo 2**64) and who they are."""

    context: SecAggContext
    survivors: tuple[str, ...]
    dropped: tuple[str, ...]
    total: np.ndarray = field(repr=False)


#: The message types to register with the silo channel's codec.
MESSAGE_TYPES: tuple[type, ...] = (
    SecAggContext,
    SecAggConfig,
    KeyAdvertisement,
    RosterEntry,
    KeyRoster,
    EncryptedShare,
    ShareBundle,
    MaskRequest,
    MaskedInput,
    UnmaskRequest,
    SurvivorsSignature,
    RevealRequest,
    RevealedShare,
    UnmaskResponse,
    AggregateResult,
)
