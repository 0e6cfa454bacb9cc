"""Secure aggregation by pairwise masking (Bonawitz et al. 2017), abort on dropout.

What the coordinator learns is the sum of the silos' updates, never one silo's.
One attempt at aggregating a vector goes:

1. Each silo makes an X25519 key pair for the run (``generate_keypair``) and
   sends the public half to the coordinator, which relays the roster of public
   keys ``{silo index: public key}`` to every silo taking part.
2. Each pair of silos ``i < j`` derives the same 32-byte seed without talking:
   HKDF-SHA256 over their X25519 shared secret, with the run id, round, attempt,
   step label, pair and roster as HKDF ``info`` (``shared_seed``). A new attempt
   or step gives unrelated seeds.
3. The seed keys a mask stream of uint64 words (``mask_stream``).
4. Silo ``i`` encodes its vector in fixed point modulo ``2**64``
   (``encoding.FixedPoint``), adds the streams it shares with higher-numbered
   silos and subtracts those it shares with lower-numbered ones
   (``mask_update``). Alone, a masked vector is uniformly distributed and says
   nothing of the update; summed over the whole roster, every mask appears once
   with ``+`` and once with ``-`` and cancels (``unmask_sum``).

Weighted averaging masks ``w * x`` and ``w`` together (``mask_weighted_update``,
``unmask_weighted_average``): the coordinator learns the total weight and the
weighted mean, not one silo's weight.

Mask stream: AES-256 in counter mode (``cryptography``) keyed by the seed, the
keystream read as little-endian uint64. Not numpy's PCG64/Philox: those are
statistical generators without a security claim (PCG64's state can be
recovered from its output), numpy seeds them through SeedSequence, and a
silo's mask must be unpredictable to the coordinator and bitwise identical on
two silos that may run different numpy versions on different platforms. AES-CTR
is a standard PRF-based stream, hardware accelerated, and fixed by its spec.
Every key is used once (the HKDF ``info`` is unique per pair, attempt and step),
so the all-zero nonce is safe.

Dropouts: this is Bonawitz et al.'s protocol without the secret-sharing recovery
phase. A silo of the roster that sends nothing leaves its masks uncancelled, so
``unmask_sum`` refuses the round with ``SiloDropoutError``; the model families
(``tasks/averaging/averaged.py``, ``tasks/boosting/boosted.py``) retry the round
with the silos present under ``MaskContext.next_attempt()``, whose masks are
fresh because the attempt number is in the seed's context. Masking a vector
twice under one context would leak the difference of the two vectors: every
message of a round (each GBDT histogram exchange, for example) needs its own
``step`` label.

Threat model: an honest-but-curious coordinator that relays public keys
faithfully and does not collude with silos. Without a PKI the coordinator could
swap public keys (a man in the middle) or announce different rosters to
different silos; Bonawitz et al.'s signatures and consistency checks against
that are not implemented. A sum over two silos tells each silo the other's
update: a secure round needs at least ``max(strategy.min_silos, 2)`` silos,
and a ``min_silos`` of 3 or more is the setting to use.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedsilo.errors import EmptyAggregationError
from tasks.privacy.encoding import FixedPoint
from tasks.privacy.errors import SecureAggregationError, SiloDropoutError

PROTOCOL = "fedsilo/secagg/v1"
SEED_BYTES = 32
DEFAULT_FIXED_POINT = FixedPoint()


class KeyPair(NamedTuple):
    """A silo's X25519 key pair as raw 32-byte strings; the private half stays home."""

    private: bytes
    public: bytes


@dataclass(frozen=True, slots=True)
class MaskContext:
    """What makes a masking unique: run, round, attempt and step within the round."""

    run_id: str
    round: int
    attempt: int = 0
    step: str = "update"

    def next_attempt(self) -> MaskContext:
        """Return the context of the retry of this attempt."""
        return replace(self, attempt=self.attempt + 1)


@dataclass(frozen=True, slots=True)
class MaskedUpdate:
    """What a silo sends: its masked vector and the roster it was masked for."""

    silo_index: int
    context: MaskContext
    roster: tuple[int, ...]
    values: np.ndarray  # uint64, fixed point plus masks, modulo 2**64
    weighted: bool = False


def generate_keypair() -> KeyPair:
    """Return a fresh X25519 key pair (raw bytes)."""
    private = X25519PrivateKey.generate()
    return KeyPair(
        private=private.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        ),
        public=private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        ),
    )


def _info(
    context: MaskContext, pair: tuple[int, int], roster: tuple[int, ...]
) -> bytes:
    fields = [PROTOCOL, context.run_id, context.round, context.attempt, context.step]
    return json.dumps([*fields, list(pair), list(roster)]).encode()


def shared_seed(
    my_private: bytes,
    peer_public: bytes,
    *,
    context: MaskContext,
    pair: tuple[int, int],
    roster: Sequence[int],
) -> bytes:
    """Return the 32-byte seed two silos share: X25519, then HKDF-SHA256."""
    low, high = sorted(pair)
    if low == high:
        raise SecureAggregationError(f"a silo cannot pair with itself ({low})")
    try:
        secret = X25519PrivateKey.from_private_bytes(my_private).exchange(
            X25519PublicKey.from_public_bytes(peer_public)
        )
    except ValueError as error:
        raise SecureAggregationError(
            f"key agreement for pair ({low}, {high}) failed: {error}"
        ) from None
    hkdf = HKDF(
        algorithm=hashes.SHA256(),
        length=SEED_BYTES,
        salt=None,
        info=_info(context, (low, high), tuple(sorted(roster))),
    )
    return hkdf.derive(secret)


def mask_stream(seed: bytes, length: int) -> np.ndarray:
    """Return ``length`` uint64 words of the AES-256-CTR keystream keyed by ``seed``."""
    if len(seed) != SEED_BYTES:
        raise SecureAggregationError(f"a seed has {SEED_BYTES} bytes, got {len(seed)}")
    encryptor = Cipher(algorithms.AES256(seed), modes.CTR(bytes(16))).encryptor()
    keystream = encryptor.update(bytes(8 * length)) + encryptor.finalize()
    return np.frombuffer(keystream, dtype="<u8").astype(np.uint64)


def pairwise_mask(
    silo_index: int,
    my_private: bytes,
    peers_public: Mapping[int, bytes],
    length: int,
    *,
    context: MaskContext,
) -> np.ndarray:
    """Return the silo's total mask: + streams of higher peers, - of lower ones."""
    roster = tuple(sorted({silo_index, *peers_public}))
    total = np.zeros(length, dtype=np.uint64)
    for peer, public in sorted(peers_public.items()):
        if peer == silo_index:
            continue
        seed = shared_seed(
            my_private, public, context=context, pair=(silo_index, peer), roster=roster
        )
        stream = mask_stream(seed, length)
        if peer > silo_index:
            total += stream  # uint64 arrays wrap modulo 2**64
        else:
            total -= stream
    return total


def mask_update(
    silo_index: int,
    my_private: bytes,
    peers_public: Mapping[int, bytes],
    vector: np.ndarray,
    *,
    context: MaskContext,
    fixed_point: FixedPoint = DEFAULT_FIXED_POINT,
) -> MaskedUpdate:
    """Return the silo's vector in fixed point plus its pairwise masks."""
    roster = tuple(sorted({silo_index, *peers_public}))
    if len(roster) < 2:
        raise SecureAggregationError(
            "secure aggregation needs at least two silos; alone, the update "
            "would be sent in the clear"
        )
    fixed_point.check_capacity(len(roster))
    vector = np.asarray(vector, dtype=np.float64)
    if vector.ndim != 1:
        raise SecureAggregationError(
            f"expected a flat vector, got shape {vector.shape}"
        )
    encoded = fixed_point.encode(vector)
    mask = pairwise_mask(
        silo_index, my_private, peers_public, encoded.size, context=context
    )
    return MaskedUpdate(
        silo_index=silo_index, context=context, roster=roster, values=encoded + mask
    )


def mask_weighted_update(
    silo_index: int,
    my_private: bytes,
    peers_public: Mapping[int, bytes],
    vector: np.ndarray,
    weight: float,
    *,
    context: MaskContext,
    fixed_point: FixedPoint = DEFAULT_FIXED_POINT,
) -> MaskedUpdate:
    """Return ``weight * vector`` and ``weight`` masked together (weight last)."""
    if not (np.isfinite(weight) and weight >= 0):
        raise SecureAggregationError(f"a weight must be finite and >= 0, got {weight}")
    joint = np.append(np.asarray(vector, dtype=np.float64) * weight, weight)
    masked = mask_update(
        silo_index,
        my_private,
        peers_public,
        joint,
        context=context,
        fixed_point=fixed_point,
    )
    return replace(masked, weighted=True)


def modular_sum(vectors: Sequence[np.ndarray]) -> np.ndarray:
    """Return the element-wise sum of uint64 vectors modulo ``2**64`` (no checks)."""
    total = np.zeros_like(np.asarray(vectors[0], dtype=np.uint64))
    for vector in vectors:
        total += np.asarray(vector, dtype=np.uint64)
    return total


def missing_silos(masked: Sequence[MaskedUpdate]) -> tuple[int, ...]:
    """Return the roster's silos that sent no masked vector; raise if inconsistent."""
    if not masked:
        raise EmptyAggregationError("no masked updates to unmask")
    first = masked[0]
    senders: set[int] = set()
    for update in masked:
        if (update.context, update.roster) != (first.context, first.roster):
            raise SecureAggregationError(
                f"silo {update.silo_index} masked for {update.context} and roster "
                f"{list(update.roster)}, silo {first.silo_index} for {first.context} "
                f"and roster {list(first.roster)}"
            )
        if update.weighted != first.weighted:
            raise SecureAggregationError("weighted and unweighted updates are mixed")
        if update.values.shape != first.values.shape:
            raise SecureAggregationError(
                f"silo {update.silo_index} sent {update.values.shape[0]} values, "
                f"silo {first.silo_index} {first.values.shape[0]}"
            )
        if update.silo_index not in first.roster:
            raise SecureAggregationError(
                f"silo {update.silo_index} is not in the roster {list(first.roster)}"
            )
        if update.silo_index in senders:
            raise SecureAggregationError(f"silo {update.silo_index} sent twice")
        senders.add(update.silo_index)
    return tuple(i for i in first.roster if i not in senders)


def unmask_sum(
    masked: Sequence[MaskedUpdate], fixed_point: FixedPoint = DEFAULT_FIXED_POINT
) -> np.ndarray:
    """Return the float sum of the silos' vectors; refuse if a silo dropped out."""
    missing = missing_silos(masked)
    if missing:
        raise SiloDropoutError(missing=missing, roster=masked[0].roster)
    fixed_point.check_capacity(len(masked))
    return fixed_point.decode(modular_sum([update.values for update in masked]))


def unmask_weighted_average(
    masked: Sequence[MaskedUpdate], fixed_point: FixedPoint = DEFAULT_FIXED_POINT
) -> tuple[np.ndarray, float]:
    """Return the weighted mean of the silos' vectors and their total weight."""
    if masked and not masked[0].weighted:
        raise SecureAggregationError("updates were masked without weights")
    total = unmask_sum(masked, fixed_point)
    weight = float(total[-1])
    if weight <= 0.0:
        raise EmptyAggregationError("the total weight of the updates is zero")
    return total[:-1] / weight, weight
