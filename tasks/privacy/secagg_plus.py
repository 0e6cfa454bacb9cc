"""Secure aggregation that holds against the coordinator and survives dropouts.

Bonawitz et al. (2017) double masking over the sparse neighbour graph of Bell
et al. (2020, "SecAgg+"); docs/secure-aggregation.md describes the protocol,
what each party sees, and what it does not protect. The coordinator learns
the sum of the surviving silos' inputs (integers modulo ``2**64`` in the
fixed point of :mod:`tasks.privacy.encoding`) and nothing about one silo's.

Parties, one object per aggregation context (run, round, step):

- :class:`SiloRound`, made by :meth:`SecAggPlusSilo.open` at the silo, keeps
  the silo's secrets (two X25519 key pairs and a self-mask seed) and checks
  every message the coordinator relays before it acts on it;
- :class:`CoordinatorRound` collects, relays and finally unmasks.

A silo's input ``x`` leaves it as ``y = x + PRG(b) + sum over neighbours v of
+-PRG(s_uv)`` where ``b`` is its self-mask seed and ``s_uv`` the seed it agrees
with neighbour ``v`` (X25519 of its masking key with ``v``'s, then HKDF); the
lower-named silo of a pair adds the stream, the other subtracts it. Before
masking, each silo gives each neighbour a Shamir share of ``b`` and of its
masking private key, encrypted under a key only the two share (X25519 of
their encryption keys, HKDF, AES-256-GCM), so the coordinator relays shares
it cannot read. At unmasking each survivor signs the list of survivors and
dropped silos it was sent and, once ``t`` of its neighbours signed the same
list, reveals for each neighbour the share of ``b`` if the neighbour survived
or the share of its masking key if it dropped, never both; ``t`` shares
rebuild either. The coordinator removes the survivors' self masks and, from
the dropped silos' rebuilt keys, the pairwise masks survivors made with them;
the survivors' pairwise masks with each other cancel in the sum.

Streams are those of :func:`tasks.privacy.secagg.mask_stream` (AES-256-CTR,
written into a reused buffer by :class:`Keystreams`) keyed by HKDF-SHA256
outputs whose ``info`` names the protocol, the session (context,
configuration and the roster of signed keys) and the silos, so no key is used
twice and the all-zero nonce is safe; the share-encryption keys likewise
encrypt one message each.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import struct
from collections.abc import Iterable, Mapping, Sequence
from enum import StrEnum

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tasks.privacy.encoding import FixedPoint
from tasks.privacy.errors import SecureAggregationError
from tasks.privacy.identity import SiloIdentity, TrustStore
from tasks.privacy.neighbours import NeighbourGraph, neighbour_graph
from tasks.privacy.secagg import generate_keypair
from tasks.privacy.secagg_plus_messages import (
    PROTOCOL,
    AggregateResult,
    EncryptedShare,
    KeyAdvertisement,
    KeyRoster,
    MaskedInput,
    MaskRequest,
    MessageError,
    RevealedShare,
    RevealRequest,
    RosterEntry,
    SecAggConfig,
    SecAggContext,
    Secret,
    ShareBundle,
    SurvivorsSignature,
    UnmaskRequest,
    UnmaskResponse,
    advertisement_payload,
    survivors_payload,
)
from tasks.privacy.shamir import SHARE_BYTES, ShamirError, Share, combine, split

SEED_BYTES = 32
_NONCE = bytes(12)
_NO_SALT = bytes(32)
_PROTOCOL_BYTES = PROTOCOL.encode()


class StageError(SecureAggregationError):
    """A stage asked for out of order, or a second time."""


class ContextReusedError(StageError):
    """A silo was asked to open an aggregation context it opened before."""


class DoubleMaskError(StageError):
    """A silo was asked to mask a second input in one context."""


class AlreadyUnmaskedError(StageError):
    """A silo was asked to unmask again, for another set of survivors."""


class BelowThresholdError(SecureAggregationError):
    """Too few silos in the roster, among the sharers or among the survivors."""


class DoubleRevealError(SecureAggregationError):
    """Both shares of one silo were asked for: that would unmask its input."""


class DisconnectedSurvivorsError(SecureAggregationError):
    """The survivors' neighbour graph falls apart: the sum of a part would leak."""


class ShareDecryptionError(SecureAggregationError):
    """An encrypted share does not decrypt: tampered, misrouted or replayed."""


class ReconstructionError(SecureAggregationError):
    """The coordinator cannot rebuild a silo's secret from the shares revealed."""


class Stage(StrEnum):
    """Where a party is in one aggregation context."""

    OPEN = "open"
    ADVERTISED = "advertised"
    SHARED = "shared"
    MASKED = "masked"
    CONFIRMED = "confirmed"
    UNMASKED = "unmasked"


# -- what silos and coordinator compute alike ------------------------------


def _hkdf(secret: bytes, info: bytes) -> bytes:
    """Return 32 bytes of HKDF-SHA256 (RFC 5869) with no salt: extract, then expand.

    One output block, written with :func:`hmac.digest` (equal to
    ``cryptography``'s HKDF, tests/test_secagg_plus.py checks it), because a
    silo derives a few keys per neighbour and the object's setup dominated.
    """
    prk = hmac.digest(_NO_SALT, secret, "sha256")
    return hmac.digest(prk, info + b"\x01", "sha256")


def _info(session: bytes, *parts: str) -> bytes:
    """Return the protocol, the session and ``parts``, each length-prefixed."""
    fields = [_PROTOCOL_BYTES, session, *(part.encode() for part in parts)]
    return b"".join(struct.pack("<H", len(field)) + field for field in fields)


def _private(raw: bytes) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(raw)


def _agree(private: X25519PrivateKey, public: bytes, a: str, b: str) -> bytes:
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError as error:
        raise SecureAggregationError(
            f"key agreement of silos {a!r} and {b!r} failed: {error}"
        ) from None


def _public_of(private: X25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


class Keystreams:
    """AES-256-CTR keystreams of one length, written into one reused buffer.

    The stream of a seed is :func:`tasks.privacy.secagg.mask_stream`'s
    (tests/test_secagg_plus.py checks they are equal); writing each into the
    same buffer saves an allocation and a copy per stream, which at 10**5
    values and one stream per neighbour is most of a silo's masking. An
    array returned is valid until the next call.
    """

    __slots__ = ("_buffer", "_words", "_zeros")

    def __init__(self, length: int) -> None:
        self._zeros = bytes(8 * length)
        self._buffer = bytearray(8 * length + 15)  # update_into wants a block spare
        self._words = np.frombuffer(self._buffer, dtype="<u8", count=length)

    def __call__(self, seed: bytes) -> np.ndarray:
        """Return the keystream of ``seed`` as uint64 words."""
        if len(seed) != SEED_BYTES:
            raise SecureAggregationError(
                f"a seed has {SEED_BYTES} bytes, got {len(seed)}"
            )
        cipher = Cipher(algorithms.AES256(seed), modes.CTR(bytes(16))).encryptor()
        cipher.update_into(self._zeros, self._buffer)
        cipher.finalize()
        return self._words


def _self_mask(
    streams: Keystreams, seed: bytes, session: bytes, silo: str
) -> np.ndarray:
    return streams(_hkdf(seed, _info(session, "self-mask", silo)))


def _pair_mask(
    streams: Keystreams,
    private: X25519PrivateKey,
    public: bytes,
    session: bytes,
    a: str,
    b: str,
) -> np.ndarray:
    low, high = sorted((a, b))
    secret = _agree(private, public, low, high)
    return streams(_hkdf(secret, _info(session, "pair-mask", low, high)))


def _share_cipher(
    private: X25519PrivateKey,
    public: bytes,
    session: bytes,
    sender: str,
    receiver: str,
) -> tuple[AESGCM, bytes]:
    info = _info(session, "share", sender, receiver)
    secret = _agree(private, public, sender, receiver)
    return AESGCM(_hkdf(secret, info)), info


def _sorted_roster(
    context: SecAggContext, advertisements: Iterable[KeyAdvertisement]
) -> dict[str, KeyAdvertisement]:
    by_name: dict[str, KeyAdvertisement] = {}
    for ad in advertisements:
        if ad.context != context:
            raise MessageError(
                f"silo {ad.silo!r}'s advertisement is for {ad.context.label()}, "
                f"not {context.label()}"
            )
        if ad.silo in by_name:
            raise MessageError(f"silo {ad.silo!r} advertised twice")
        by_name[ad.silo] = ad
    return {name: by_name[name] for name in sorted(by_name)}


def _entries(entries: Sequence[RosterEntry]) -> dict[str, bytes]:
    """Return the roster's digests by name; refuse repeats and disorder."""
    names = [entry.silo for entry in entries]
    if names != sorted(set(names)):
        raise MessageError("the roster's entries are not unique names in sorted order")
    return {entry.silo: entry.digest for entry in entries}


def session_of(
    context: SecAggContext, config: SecAggConfig, entries: Mapping[str, bytes]
) -> tuple[bytes, NeighbourGraph]:
    """Return the session digest and the neighbour graph of a roster.

    The digest is SHA-256 over the protocol, the context, the configuration
    and every advertisement's digest in name order; the graph's seed is
    derived from it, so neither is the coordinator's to choose beyond which
    silos it puts in the roster.
    """
    parts = [_info(config.digest(), context.run_id, str(context.round), context.step)]
    for name, digest in entries.items():
        label = name.encode()
        parts += (len(label).to_bytes(4, "little"), label, digest)
    session = hashlib.sha256(b"".join(parts)).digest()
    seed = hashlib.sha256(b"neighbour-graph" + session).digest()
    graph = neighbour_graph(
        list(entries),
        seed,
        dropout=config.dropout,
        colluding=config.colluding,
        failure_bits=config.failure_bits,
    )
    return session, graph


def _names(values: Sequence[str], what: str) -> list[str]:
    names = list(values)
    if len(set(names)) != len(names):
        raise MessageError(f"{what} names a silo twice")
    return names


# -- the silo -------------------------------------------------------------


class SecAggPlusSilo:
    """A silo's side of secure aggregation: its identity and the contexts it opened.

    One per silo process. :meth:`open` refuses a context it opened before, so
    a silo never masks two inputs (or one input twice) under one context
    whatever the coordinator asks. ``min_silos`` is the silo's own floor on
    roster and survivors, applied on top of the configuration's.
    """

    def __init__(
        self, identity: SiloIdentity, trust: TrustStore, *, min_silos: int = 3
    ) -> None:
        if min_silos < 3:
            raise MessageError(f"min_silos {min_silos}: give 3 or more")
        self.identity = identity
        self.trust = trust
        self.min_silos = min_silos
        self._opened: set[SecAggContext] = set()

    @property
    def name(self) -> str:
        """Return the silo's name."""
        return self.identity.name

    def opened(self, context: SecAggContext) -> bool:
        """Return whether this silo opened ``context`` before."""
        return context in self._opened

    def open(self, context: SecAggContext, config: SecAggConfig) -> SiloRound:
        """Return the silo's state for a new context; refuse one opened before."""
        if context in self._opened:
            raise ContextReusedError(
                f"silo {self.name!r} already took part in {context.label()}; a "
                "context is used once"
            )
        self._opened.add(context)
        return SiloRound(self, context, config)


class SiloRound:
    """One silo's secrets and checks for one aggregation context."""

    def __init__(
        self, silo: SecAggPlusSilo, context: SecAggContext, config: SecAggConfig
    ) -> None:
        self.name = silo.name
        self.context = context
        self.config = config
        self.stage = Stage.OPEN
        self._identity = silo.identity
        self._trust = silo.trust
        self._floor = max(config.min_silos, silo.min_silos)
        self._encryption = generate_keypair()
        self._masking = generate_keypair()
        self._encryption_key = _private(self._encryption.private)
        self._masking_key = _private(self._masking.private)
        self._self_seed = secrets.token_bytes(SEED_BYTES)
        self._advertisement: KeyAdvertisement | None = None
        self._session = b""
        self._graph: NeighbourGraph | None = None
        self._roster: dict[str, KeyAdvertisement] = {}  # the neighbours'
        self._names: frozenset[str] = frozenset()
        self._sharing: frozenset[str] = frozenset()
        self._held: dict[str, tuple[bytes, bytes]] = {}
        self._revealed: dict[str, Secret] = {}
        self._view: tuple[UnmaskRequest, SurvivorsSignature] | None = None
        self._view_payload = b""
        self._survivors: frozenset[str] = frozenset()
        self._answer: tuple[RevealRequest, UnmaskResponse] | None = None

    @property
    def graph(self) -> NeighbourGraph:
        """Return the neighbour graph (after :meth:`share`)."""
        if self._graph is None:
            raise StageError(f"silo {self.name!r} has no roster yet")
        return self._graph

    def _expect(self, stage: Stage, doing: str) -> None:
        if self.stage != stage:
            raise StageError(
                f"silo {self.name!r} in {self.context.label()}: cannot {doing} at "
                f"stage {self.stage.value!r} (needs {stage.value!r})"
            )

    def _check_context(self, context: SecAggContext, what: str) -> None:
        if context != self.context:
            raise MessageError(
                f"silo {self.name!r}: a {what} for {context.label()} in "
                f"{self.context.label()}"
            )

    # stage 1 ---------------------------------------------------------------

    def advertise(self) -> KeyAdvertisement:
        """Return the silo's public keys for this context, signed."""
        self._expect(Stage.OPEN, "advertise its keys")
        payload_fields = (
            self.context,
            self.config.digest(),
            self.name,
            self._encryption.public,
            self._masking.public,
        )
        signature = self._identity.sign(advertisement_payload(*payload_fields))
        self._advertisement = KeyAdvertisement(
            context=self.context,
            silo=self.name,
            encryption_key=self._encryption.public,
            masking_key=self._masking.public,
            certificate=self._identity.certificate_der,
            signature=signature,
        )
        self.stage = Stage.ADVERTISED
        return self._advertisement

    # stage 2 ---------------------------------------------------------------

    def share(self, roster: KeyRoster) -> ShareBundle:
        """Check the roster and the neighbours' signed keys; return shares for them."""
        self._expect(Stage.ADVERTISED, "share its secrets")
        self._check_context(roster.context, "roster")
        entries = _entries(roster.entries)
        assert self._advertisement is not None
        if entries.get(self.name) != self._advertisement.digest():
            raise MessageError(
                f"silo {self.name!r}: the roster does not hold its advertisement "
                "as it sent it"
            )
        if len(entries) < self._floor:
            raise BelowThresholdError(
                f"silo {self.name!r}: a roster of {len(entries)} silos, below the "
                f"minimum of {self._floor}"
            )
        self.config.fixed_point.check_capacity(len(entries))
        session, graph = session_of(self.context, self.config, entries)
        neighbours = graph.neighbours(self.name)
        by_name = _sorted_roster(self.context, roster.advertisements)
        strangers = sorted(set(by_name) - set(neighbours))
        missing = sorted(set(neighbours) - set(by_name))
        if strangers or missing:
            raise MessageError(
                f"silo {self.name!r}: the roster gives the advertisements of "
                f"{strangers} that are not its neighbours, and lacks {missing}"
            )
        config_digest = self.config.digest()
        for peer in neighbours:
            ad = by_name[peer]
            if ad.digest() != entries[peer]:
                raise MessageError(
                    f"silo {self.name!r}: silo {peer!r}'s advertisement does not "
                    "match its digest in the roster"
                )
            self._trust.verify(
                ad.certificate,
                peer,
                ad.payload(config_digest),
                ad.signature,
                f"advertised keys for {self.context.label()}",
            )
        points = [graph.point(peer) for peer in neighbours]
        self_shares = split(self._self_seed, graph.threshold, points)
        key_shares = split(self._masking.private, graph.threshold, points)
        encrypted = []
        for peer, self_share, key_share in zip(
            neighbours, self_shares, key_shares, strict=True
        ):
            cipher, info = _share_cipher(
                self._encryption_key,
                by_name[peer].encryption_key,
                session,
                self.name,
                peer,
            )
            plaintext = self_share.value_bytes() + key_share.value_bytes()
            encrypted.append(
                EncryptedShare(
                    sender=self.name,
                    receiver=peer,
                    ciphertext=cipher.encrypt(_NONCE, plaintext, info),
                )
            )
        self._session, self._graph, self._roster = session, graph, by_name
        self._names = frozenset(entries)
        self.stage = Stage.SHARED
        return ShareBundle(
            context=self.context, sender=self.name, shares=tuple(encrypted)
        )

    # stage 3 ---------------------------------------------------------------

    def _receive_shares(
        self, request: MaskRequest, expected: set[str]
    ) -> dict[str, tuple[bytes, bytes]]:
        held: dict[str, tuple[bytes, bytes]] = {}
        point = self.graph.point(self.name)
        for share in request.shares:
            if share.receiver != self.name:
                raise MessageError(
                    f"silo {self.name!r} was sent a share for {share.receiver!r}"
                )
            if share.sender not in expected:
                raise MessageError(
                    f"silo {self.name!r} was sent a share from {share.sender!r}, "
                    "which is not a neighbour that shared"
                )
            if share.sender in held:
                raise MessageError(
                    f"silo {self.name!r} was sent two shares from {share.sender!r}"
                )
            cipher, info = _share_cipher(
                self._encryption_key,
                self._roster[share.sender].encryption_key,
                self._session,
                share.sender,
                self.name,
            )
            try:
                plaintext = cipher.decrypt(_NONCE, share.ciphertext, info)
            except InvalidTag:
                raise ShareDecryptionError(
                    f"silo {self.name!r}: the share from {share.sender!r} does not "
                    f"decrypt for {self.context.label()}"
                ) from None
            if len(plaintext) != 2 * SHARE_BYTES:
                raise ShareDecryptionError(
                    f"silo {self.name!r}: the share from {share.sender!r} has "
                    f"{len(plaintext)} bytes"
                )
            self_value, key_value = plaintext[:SHARE_BYTES], plaintext[SHARE_BYTES:]
            Share.from_bytes(point, self_value)
            Share.from_bytes(point, key_value)
            held[share.sender] = (self_value, key_value)
        missing = sorted(expected - set(held))
        if missing:
            raise MessageError(
                f"silo {self.name!r}: no shares from neighbours {missing} that shared"
            )
        return held

    def mask(self, request: MaskRequest, vector: np.ndarray) -> MaskedInput:
        """Return ``vector`` masked; refuse a second input and thin neighbourhoods."""
        if self.stage in (Stage.MASKED, Stage.CONFIRMED, Stage.UNMASKED):
            raise DoubleMaskError(
                f"silo {self.name!r} already masked its input for "
                f"{self.context.label()}; it masks one input per context"
            )
        self._expect(Stage.SHARED, "mask its input")
        self._check_context(request.context, "mask request")
        if request.receiver != self.name:
            raise MessageError(
                f"silo {self.name!r} was sent the mask request of {request.receiver!r}"
            )
        sharing = set(_names(request.sharing, "the mask request's sharing list"))
        unknown = sorted(sharing - self._names)
        if unknown:
            raise MessageError(f"silos {unknown} shared but are not in the roster")
        if self.name not in sharing:
            raise MessageError(f"silo {self.name!r} is missing from the sharers")
        if len(sharing) < self._floor:
            raise BelowThresholdError(
                f"silo {self.name!r}: {len(sharing)} silos shared, below the "
                f"minimum of {self._floor}"
            )
        graph = self.graph
        expected = {peer for peer in graph.neighbours(self.name) if peer in sharing}
        if len(expected) < graph.threshold:
            raise BelowThresholdError(
                f"silo {self.name!r}: {len(expected)} of its {graph.degree} "
                f"neighbours shared, below the threshold of {graph.threshold}"
            )
        held = self._receive_shares(request, expected)
        x = np.asarray(vector, dtype=np.float64)
        if x.shape != (self.config.length,):
            raise MessageError(
                f"silo {self.name!r}: input of shape {x.shape}, the configuration "
                f"says {self.config.length} values"
            )
        masked = self.config.fixed_point.encode(x)
        streams = Keystreams(x.size)
        masked += _self_mask(streams, self._self_seed, self._session, self.name)
        for peer in sorted(expected):
            stream = _pair_mask(
                streams,
                self._masking_key,
                self._roster[peer].masking_key,
                self._session,
                self.name,
                peer,
            )
            if self.name < peer:
                masked += stream  # uint64 wraps modulo 2**64
            else:
                masked -= stream
        self._held = held
        self._sharing = frozenset(sharing)
        self.stage = Stage.MASKED
        return MaskedInput(context=self.context, silo=self.name, values=masked)

    # stage 4 ---------------------------------------------------------------

    def confirm(self, request: UnmaskRequest) -> SurvivorsSignature:
        """Check the survivors and dropped silos; sign them (once per context)."""
        if self._view is not None:
            view, signature = self._view
            if request == view:
                return signature
            raise AlreadyUnmaskedError(
                f"silo {self.name!r} already confirmed survivors "
                f"{list(view.survivors)} for {self.context.label()}; it confirms once"
            )
        self._expect(Stage.MASKED, "confirm the survivors")
        self._check_context(request.context, "unmask request")
        survivors = set(_names(request.survivors, "the unmask request's survivors"))
        dropped = set(_names(request.dropped, "the unmask request's dropped silos"))
        both = sorted(survivors & dropped)
        if both:
            raise DoubleRevealError(
                f"silo {self.name!r}: silos {both} are listed as survivors and as "
                "dropped; revealing both of their shares would unmask their inputs"
            )
        if survivors | dropped != self._sharing:
            unknown = sorted((survivors | dropped) - self._sharing)
            missing = sorted(self._sharing - (survivors | dropped))
            raise MessageError(
                f"silo {self.name!r}: survivors and dropped must be the silos that "
                f"shared; unknown {unknown}, missing {missing}"
            )
        if self.name not in survivors:
            raise MessageError(
                f"silo {self.name!r} sent its masked input but is listed as dropped"
            )
        if len(survivors) < self._floor:
            raise BelowThresholdError(
                f"silo {self.name!r}: {len(survivors)} survivors, below the minimum "
                f"of {self._floor}"
            )
        graph = self.graph
        alive = [peer for peer in self._held if peer in survivors]
        if len(alive) < graph.threshold:
            raise BelowThresholdError(
                f"silo {self.name!r}: the dropped set would leave {len(alive)} of "
                f"its neighbours, fewer than the threshold of {graph.threshold}"
            )
        if not graph.connected(survivors):
            raise DisconnectedSurvivorsError(
                f"silo {self.name!r}: the survivors' neighbour graph is not "
                "connected; unmasking would reveal the sums of its parts"
            )
        payload = survivors_payload(
            self._session, tuple(sorted(survivors)), tuple(sorted(dropped))
        )
        signature = SurvivorsSignature(
            context=self.context, silo=self.name, signature=self._identity.sign(payload)
        )
        self._view = (request, signature)
        self._view_payload = payload
        self._survivors = frozenset(survivors)
        self.stage = Stage.CONFIRMED
        return signature

    def unmask(self, reveal: RevealRequest) -> UnmaskResponse:
        """Reveal one share per neighbour once ``t`` neighbours confirmed the same view.

        Every honest silo confirms one view; a silo reveals only when at least
        ``t`` of its neighbours signed exactly the survivors and dropped silos
        it signed. Two silos sharing a neighbour ``v`` then cannot act on
        different verdicts about ``v``: to rebuild ``v``'s masking key while
        ``v`` reveals as a survivor would take ``t`` of ``v``'s neighbours
        confirming each view, ``2t > k`` of them.
        """
        if self.stage == Stage.UNMASKED and self._answer is not None:
            answered, response = self._answer
            if reveal == answered:
                return response
            raise AlreadyUnmaskedError(
                f"silo {self.name!r} already unmasked {self.context.label()}; it "
                "answers once"
            )
        self._expect(Stage.CONFIRMED, "unmask")
        self._check_context(reveal.context, "reveal request")
        graph = self.graph
        confirmed: set[str] = set()
        for signed in reveal.signatures:
            self._check_context(signed.context, "confirmation")
            peer = signed.silo
            if peer not in self._roster or peer not in self._survivors:
                raise MessageError(
                    f"silo {self.name!r} was sent the confirmation of {peer!r}, not "
                    "a surviving neighbour"
                )
            if peer in confirmed:
                raise MessageError(
                    f"silo {self.name!r} was sent two confirmations of {peer!r}"
                )
            ad = self._roster[peer]
            self._trust.verify(
                ad.certificate,
                peer,
                self._view_payload,
                signed.signature,
                f"confirmation of the survivors of {self.context.label()} (it "
                "confirmed another view, or the signature was altered)",
            )
            confirmed.add(peer)
        if len(confirmed) < graph.threshold:
            raise BelowThresholdError(
                f"silo {self.name!r}: {len(confirmed)} of its neighbours confirmed "
                f"the survivors it confirmed, below the threshold of {graph.threshold}"
            )
        revealed = []
        for owner, (self_value, key_value) in self._held.items():
            survived = owner in self._survivors
            secret = Secret.SELF_MASK if survived else Secret.MASKING_KEY
            if self._revealed.setdefault(owner, secret) != secret:
                raise DoubleRevealError(
                    f"silo {self.name!r} revealed silo {owner!r}'s "
                    f"{self._revealed[owner].value} share; it never reveals both"
                )
            value = self_value if survived else key_value
            revealed.append(
                RevealedShare(owner=owner, secret=secret.value, value=value)
            )
        response = UnmaskResponse(
            context=self.context, silo=self.name, shares=tuple(revealed)
        )
        self._answer = (reveal, response)
        self.stage = Stage.UNMASKED
        return response


# -- the coordinator --------------------------------------------------------


class CoordinatorRound:
    """The coordinator's side of one context: collect, relay, then unmask.

    With a ``trust`` store it also checks each advertisement's signature when
    it arrives and refuses a bad one, so one misconfigured silo does not make
    its neighbours refuse the roster; the silos check regardless.
    """

    def __init__(
        self,
        context: SecAggContext,
        config: SecAggConfig,
        *,
        trust: TrustStore | None = None,
    ) -> None:
        self.context = context
        self.config = config
        self.stage = Stage.OPEN
        self._trust = trust
        self._ads: dict[str, KeyAdvertisement] = {}
        self._roster: dict[str, KeyAdvertisement] = {}
        self._session = b""
        self._graph: NeighbourGraph | None = None
        self._bundles: dict[str, ShareBundle] = {}
        self._sharing: tuple[str, ...] = ()
        self._masked: dict[str, np.ndarray] = {}
        self._request: UnmaskRequest | None = None
        self._revealed: dict[tuple[str, Secret], list[Share]] = {}
        self._confirmations: dict[str, SurvivorsSignature] = {}
        self._responders: set[str] = set()

    @property
    def graph(self) -> NeighbourGraph:
        """Return the neighbour graph (after :meth:`rosters`)."""
        if self._graph is None:
            raise StageError("the coordinator has no roster yet")
        return self._graph

    def _expect(self, stage: Stage, doing: str) -> None:
        if self.stage != stage:
            raise StageError(
                f"coordinator in {self.context.label()}: cannot {doing} at stage "
                f"{self.stage.value!r} (needs {stage.value!r})"
            )

    def _check_context(self, context: SecAggContext, what: str, silo: str) -> None:
        if context != self.context:
            raise MessageError(
                f"silo {silo!r} sent a {what} for {context.label()}, not "
                f"{self.context.label()}"
            )

    def collect_advertisement(self, ad: KeyAdvertisement) -> None:
        """Take a silo's signed keys."""
        self._expect(Stage.OPEN, "take advertisements")
        self._check_context(ad.context, "key advertisement", ad.silo)
        if ad.silo in self._ads:
            raise MessageError(f"silo {ad.silo!r} advertised twice")
        if self._trust is not None:
            self._trust.verify(
                ad.certificate,
                ad.silo,
                ad.payload(self.config.digest()),
                ad.signature,
                f"advertised keys for {self.context.label()}",
            )
        self._ads[ad.silo] = ad

    def rosters(self) -> dict[str, KeyRoster]:
        """Close stage 1: return each silo's roster (digests, neighbours in full)."""
        self._expect(Stage.OPEN, "close the roster")
        if len(self._ads) < self.config.min_silos:
            raise BelowThresholdError(
                f"{len(self._ads)} silos advertised keys for {self.context.label()}, "
                f"below the minimum of {self.config.min_silos}"
            )
        self.config.fixed_point.check_capacity(len(self._ads))
        self._roster = _sorted_roster(self.context, self._ads.values())
        digests = {name: ad.digest() for name, ad in self._roster.items()}
        self._session, self._graph = session_of(self.context, self.config, digests)
        entries = tuple(RosterEntry(name, digest) for name, digest in digests.items())
        self.stage = Stage.ADVERTISED
        return {
            name: KeyRoster(
                context=self.context,
                entries=entries,
                advertisements=tuple(
                    self._roster[peer] for peer in self._graph.neighbours(name)
                ),
            )
            for name in self._roster
        }

    def collect_shares(self, bundle: ShareBundle) -> None:
        """Take a silo's encrypted shares for its neighbours."""
        self._expect(Stage.ADVERTISED, "take shares")
        self._check_context(bundle.context, "share bundle", bundle.sender)
        if bundle.sender not in self._roster:
            raise MessageError(f"silo {bundle.sender!r} is not in the roster")
        if bundle.sender in self._bundles:
            raise MessageError(f"silo {bundle.sender!r} sent its shares twice")
        receivers = [share.receiver for share in bundle.shares]
        if sorted(receivers) != sorted(self.graph.neighbours(bundle.sender)) or any(
            share.sender != bundle.sender for share in bundle.shares
        ):
            raise MessageError(
                f"silo {bundle.sender!r} sent shares for {receivers}, not one for "
                "each of its neighbours"
            )
        self._bundles[bundle.sender] = bundle

    def mask_requests(self) -> dict[str, MaskRequest]:
        """Close stage 2: return each sharer's mask request, with its shares."""
        self._expect(Stage.ADVERTISED, "close the sharing")
        self._sharing = tuple(name for name in self._roster if name in self._bundles)
        if len(self._sharing) < self.config.min_silos:
            raise BelowThresholdError(
                f"{len(self._sharing)} silos shared for {self.context.label()}, "
                f"below the minimum of {self.config.min_silos}"
            )
        inbox: dict[str, list[EncryptedShare]] = {name: [] for name in self._sharing}
        for sender in self._sharing:
            for share in self._bundles[sender].shares:
                if share.receiver in inbox:
                    inbox[share.receiver].append(share)
        self.stage = Stage.SHARED
        return {
            name: MaskRequest(
                context=self.context,
                receiver=name,
                sharing=self._sharing,
                shares=tuple(inbox[name]),
            )
            for name in self._sharing
        }

    def collect_masked(self, masked: MaskedInput) -> None:
        """Take a silo's masked input."""
        self._expect(Stage.SHARED, "take masked inputs")
        self._check_context(masked.context, "masked input", masked.silo)
        if masked.silo not in self._sharing:
            raise MessageError(
                f"silo {masked.silo!r} sent a masked input but never shared"
            )
        if masked.silo in self._masked:
            raise MessageError(f"silo {masked.silo!r} sent two masked inputs")
        values = np.asarray(masked.values)
        if values.dtype != np.uint64 or values.shape != (self.config.length,):
            raise MessageError(
                f"silo {masked.silo!r}: masked input of dtype {values.dtype} and "
                f"shape {values.shape}, expected uint64 of ({self.config.length},)"
            )
        self._masked[masked.silo] = values

    def unmask_request(self) -> UnmaskRequest:
        """Close stage 3: return the request every survivor receives."""
        self._expect(Stage.SHARED, "close the masked inputs")
        survivors = tuple(name for name in self._sharing if name in self._masked)
        if len(survivors) < self.config.min_silos:
            raise BelowThresholdError(
                f"{len(survivors)} silos sent masked inputs for "
                f"{self.context.label()}, below the minimum of {self.config.min_silos}"
            )
        dropped = tuple(name for name in self._sharing if name not in self._masked)
        self._request = UnmaskRequest(
            context=self.context, survivors=survivors, dropped=dropped
        )
        self.stage = Stage.MASKED
        return self._request

    def collect_confirmation(self, signed: SurvivorsSignature) -> None:
        """Take a survivor's signature on the unmask request."""
        self._expect(Stage.MASKED, "take confirmations")
        self._check_context(signed.context, "confirmation", signed.silo)
        request = self._request
        assert request is not None
        if signed.silo not in request.survivors:
            raise MessageError(f"silo {signed.silo!r} is not a survivor")
        if signed.silo in self._confirmations:
            raise MessageError(f"silo {signed.silo!r} confirmed twice")
        self._confirmations[signed.silo] = signed

    def reveal_requests(self) -> dict[str, RevealRequest]:
        """Close the confirmations: each signer gets its neighbours' signatures."""
        self._expect(Stage.MASKED, "close the confirmations")
        self.stage = Stage.CONFIRMED
        return {
            name: RevealRequest(
                context=self.context,
                signatures=tuple(
                    self._confirmations[peer]
                    for peer in self.graph.neighbours(name)
                    if peer in self._confirmations
                ),
            )
            for name in self._confirmations
        }

    def collect_unmask(self, response: UnmaskResponse) -> None:
        """Take a survivor's revealed shares."""
        self._expect(Stage.CONFIRMED, "take revealed shares")
        self._check_context(response.context, "unmask response", response.silo)
        request = self._request
        assert request is not None
        if response.silo not in self._confirmations:
            raise MessageError(f"silo {response.silo!r} did not confirm the survivors")
        if response.silo in self._responders:
            raise MessageError(f"silo {response.silo!r} answered twice")
        survivors = set(request.survivors)
        point = self.graph.point(response.silo)
        shares: list[tuple[tuple[str, Secret], Share]] = []
        for revealed in response.shares:
            try:
                secret = Secret(revealed.secret)
            except ValueError:
                raise MessageError(
                    f"silo {response.silo!r} revealed a share of {revealed.secret!r}"
                ) from None
            owner = revealed.owner
            wanted = Secret.SELF_MASK if owner in survivors else Secret.MASKING_KEY
            if secret != wanted or not self.graph.adjacent(owner, response.silo):
                raise MessageError(
                    f"silo {response.silo!r} revealed {owner!r}'s {secret.value} share"
                )
            try:
                share = Share.from_bytes(point, revealed.value)
            except ShamirError as error:
                raise MessageError(f"silo {response.silo!r}: {error}") from None
            shares.append(((owner, secret), share))
        self._responders.add(response.silo)
        for key, share in shares:
            self._revealed.setdefault(key, []).append(share)

    def _rebuild(self, owner: str, secret: Secret) -> bytes:
        """Rebuild from ``t`` shares, checked against one more where there is one.

        A wrong share among those used then fails the check (its polynomial
        misses the extra point); shares beyond ``t + 1`` would change nothing.
        """
        shares = self._revealed.get((owner, secret), [])
        threshold = self.graph.threshold
        try:
            return combine(shares[: threshold + 1], threshold)
        except ShamirError as error:
            raise ReconstructionError(
                f"silo {owner!r}'s {secret.value} cannot be rebuilt: {error}"
            ) from None

    def result(self) -> AggregateResult:
        """Close stage 4: return the exact sum of the survivors' inputs."""
        self._expect(Stage.CONFIRMED, "unmask")
        request = self._request
        assert request is not None
        length = self.config.length
        streams = Keystreams(length)
        total = np.zeros(length, dtype=np.uint64)
        for name in request.survivors:
            total += self._masked[name]
            seed = self._rebuild(name, Secret.SELF_MASK)
            total -= _self_mask(streams, seed, self._session, name)
        survivors = set(request.survivors)
        for gone in request.dropped:
            private = _private(self._rebuild(gone, Secret.MASKING_KEY))
            if _public_of(private) != self._roster[gone].masking_key:
                raise ReconstructionError(
                    f"silo {gone!r}'s masking key rebuilt from the shares does not "
                    "match the key it advertised"
                )
            for peer in self.graph.neighbours(gone):
                if peer not in survivors:
                    continue
                stream = _pair_mask(
                    streams,
                    private,
                    self._roster[peer].masking_key,
                    self._session,
                    gone,
                    peer,
                )
                if peer < gone:  # the survivor added this stream
                    total -= stream
                else:
                    total += stream
        self.stage = Stage.UNMASKED
        return AggregateResult(
            context=self.context,
            survivors=request.survivors,
            dropped=request.dropped,
            total=total,
        )

    def decode(self, result: AggregateResult) -> np.ndarray:
        """Return the float sum of a result, in the configuration's fixed point."""
        fixed_point: FixedPoint = self.config.fixed_point
        fixed_point.check_capacity(len(result.survivors))
        return fixed_point.decode(result.total)
