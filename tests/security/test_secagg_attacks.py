"""Attacks of a curious or active coordinator on secure aggregation (SecAgg+).

Issue 15 found three attacks that succeeded against the pairwise-masking
protocol: the coordinator read every silo's private keys (they were Dask data
it owned) and unmasked one silo's update; after a dropout the retry masked the
same update again, so two rosters gave one silo's update by subtraction; and
public keys were not bound to silos. Each test here is an attack the
coordinator can mount on :mod:`tasks.privacy.secagg_plus` with what it holds
(the messages it relays, the requests it writes) and would succeed if a
promise of SECURITY.md broke. Certificates are real: a CA and leaf
certificates made by ``fedsilo.certs`` in ``tmp_path``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedsilo import certs
from tasks.privacy.identity import IdentityError, TrustStore
from tasks.privacy.secagg import generate_keypair
from tasks.privacy.secagg_plus import (
    AlreadyUnmaskedError,
    BelowThresholdError,
    ContextReusedError,
    CoordinatorRound,
    DisconnectedSurvivorsError,
    DoubleMaskError,
    DoubleRevealError,
    Keystreams,
    SecAggPlusSilo,
    SiloRound,
    _pair_mask,
    _self_mask,
)
from tasks.privacy.secagg_plus_messages import (
    MESSAGE_TYPES,
    KeyRoster,
    MaskedInput,
    MessageError,
    RevealRequest,
    RosterEntry,
    SecAggConfig,
    SecAggContext,
    UnmaskRequest,
)
from tasks.privacy.shamir import SHARE_BYTES, Share, combine
from tasks.protocol import codec
from tests._secagg_plus import (
    exact_sum,
    federation,
    inputs_for,
    play,
    silo_names,
    silos_of,
)

LENGTH = 32
CONFIG = SecAggConfig(length=LENGTH)
#: 20 silos on a sparse graph: degree 6, threshold 4.
SPARSE = SecAggConfig(length=LENGTH, dropout=0.01, failure_bits=10)
CONFIG_SPARSE_FP = SPARSE.fixed_point


def parties(tmp_path: Path, n: int) -> dict[str, SecAggPlusSilo]:
    trust, identities = federation(tmp_path / "ca", silo_names(n))
    return silos_of(identities, trust)


def advertised(
    silos: dict[str, SecAggPlusSilo], context: SecAggContext, config: SecAggConfig
) -> tuple[CoordinatorRound, dict[str, SiloRound], dict[str, KeyRoster]]:
    """Open the context at every silo and close the roster."""
    coordinator = CoordinatorRound(context, config)
    rounds = {name: silo.open(context, config) for name, silo in silos.items()}
    for silo_round in rounds.values():
        coordinator.collect_advertisement(silo_round.advertise())
    return coordinator, rounds, coordinator.rosters()


def masked_round(
    silos: dict[str, SecAggPlusSilo],
    context: SecAggContext,
    config: SecAggConfig,
    inputs: dict[str, np.ndarray],
) -> tuple[CoordinatorRound, dict[str, SiloRound], dict[str, MaskedInput]]:
    """Run stages 1 to 3 honestly; every silo's masked input arrives."""
    coordinator, rounds, rosters = advertised(silos, context, config)
    for name, silo_round in rounds.items():
        coordinator.collect_shares(silo_round.share(rosters[name]))
    masked = {}
    for name, request in coordinator.mask_requests().items():
        masked[name] = rounds[name].mask(request, inputs[name])
        coordinator.collect_masked(masked[name])
    return coordinator, rounds, masked


def test_the_coordinator_relays_no_secret_it_could_read(tmp_path: Path) -> None:
    """Issue 15, attack 1: the coordinator held every private key.

    Everything the coordinator sees (the transcript, as the codec sends it)
    holds none of a silo's private keys, its self-mask seed or a share of
    them in the clear; the target's shares travel encrypted, and decrypting
    them needs a private key the coordinator never sees.
    """
    codec.register(*MESSAGE_TYPES)
    silos = parties(tmp_path, 5)
    inputs = inputs_for(list(silos), LENGTH)
    run = play(silos, SecAggContext("run", 1), CONFIG, inputs)
    revealing = [m for m in run.transcript if type(m).__name__ == "UnmaskResponse"]
    before = [m for m in run.transcript if m not in revealing]
    wire = b"".join(codec.pack(message) for message in run.transcript)
    wire_before = b"".join(codec.pack(message) for message in before)
    for name, silo_round in run.rounds.items():
        secrets_held = [
            silo_round._self_seed,
            silo_round._masking.private,
            silo_round._encryption.private,
        ]
        for value in secrets_held:
            assert value not in wire, name
        for self_share, key_share in silo_round._held.values():
            assert self_share not in wire_before, name
            assert key_share not in wire, name
    # At unmasking every silo survived, so each neighbour revealed the share
    # of its self-mask seed and nothing else.
    assert {s.secret for m in revealing for s in m.shares} == {"self-mask"}
    assert all(len(s.value) == SHARE_BYTES for m in revealing for s in m.shares)


def test_asking_for_both_shares_of_one_silo_is_refused(tmp_path: Path) -> None:
    """Listing a silo as survivor and as dropped asks for both its shares."""
    silos = parties(tmp_path, 5)
    context = SecAggContext("run", 1)
    coordinator, rounds, _ = masked_round(
        silos, context, CONFIG, inputs_for(list(silos), LENGTH)
    )
    honest = coordinator.unmask_request()
    greedy = dataclasses.replace(honest, dropped=("silo-02",))
    for name in honest.survivors:
        with pytest.raises(DoubleRevealError, match="'silo-02'"):
            rounds[name].confirm(greedy)


def test_a_split_view_cannot_rebuild_both_secrets_of_a_silo(tmp_path: Path) -> None:
    """Tell half of the target's neighbours it survived, the rest it dropped.

    Each honest neighbour would reveal one share of the target, so the
    coordinator could hold at most k shares split between the two secrets;
    with 2t > k one side always lacks shares. With the confirmations, no
    neighbour reveals at all: fewer than t neighbours confirmed either view.
    """
    silos = parties(tmp_path, 7)  # complete graph: k = 6, t = 4
    context = SecAggContext("run", 1)
    inputs = inputs_for(list(silos), LENGTH)
    coordinator, rounds, _ = masked_round(silos, context, CONFIG, inputs)
    graph = coordinator.graph
    assert (graph.degree, graph.threshold) == (6, 4)
    target = "silo-00"
    everyone = coordinator.unmask_request()
    without_target = UnmaskRequest(
        context,
        survivors=tuple(n for n in everyone.survivors if n != target),
        dropped=(target,),
    )
    neighbours = graph.neighbours(target)
    views = {n: everyone for n in (target, *neighbours[:3])}
    views.update({n: without_target for n in neighbours[3:]})
    confirmations = {n: rounds[n].confirm(view) for n, view in views.items()}
    for name, view in views.items():
        other = without_target if view is everyone else everyone
        with pytest.raises(AlreadyUnmaskedError, match="confirms once"):
            rounds[name].confirm(other)
    for name in neighbours:
        same = tuple(
            confirmations[peer]
            for peer in graph.neighbours(name)
            if views.get(peer) is views[name]
        )
        with pytest.raises(BelowThresholdError, match="below the threshold of 4"):
            rounds[name].unmask(RevealRequest(context, same))


def _max_flow(
    capacity: dict[tuple[object, object], int], source: str, sink: str
) -> dict[tuple[object, object], int]:
    """Return a maximum flow (Ford-Fulkerson with depth-first augmenting paths)."""
    flow: dict[tuple[object, object], int] = defaultdict(int)
    nodes: dict[object, set[object]] = defaultdict(set)
    for a, b in capacity:
        nodes[a].add(b)
        nodes[b].add(a)

    def residual(a: object, b: object) -> int:
        return capacity.get((a, b), 0) - flow[(a, b)] + flow[(b, a)]

    def augment(node: object, seen: set[object]) -> bool:
        if node == sink:
            return True
        seen.add(node)
        for nxt in nodes[node]:
            if nxt not in seen and residual(node, nxt) > 0 and augment(nxt, seen):
                back = min(flow[(nxt, node)], 1)
                flow[(nxt, node)] -= back
                flow[(node, nxt)] += 1 - back
                return True
        return False

    while augment(source, set()):
        pass
    return flow


def test_tailored_views_cannot_unmask_one_silo(tmp_path: Path) -> None:
    """Rebuild u's self-mask seed and the masking keys of all its neighbours.

    Every silo gets its own unmask request: u survives in all of them, and
    each silo declares at most k - t of u's neighbours dropped, so each
    request alone passes every check a silo makes. Spread over the silos
    near u, they would reveal t shares of u's seed and t shares of each
    neighbour's masking key: enough to strip every mask from u's input (the
    first half of the test does it with the shares the silos would reveal).
    Because a silo reveals only when t of its neighbours confirmed exactly
    its request, hardly any silo reveals, and the coordinator gets neither.
    """
    silos = parties(tmp_path, 20)
    context = SecAggContext("run", 1)
    inputs = inputs_for(list(silos), LENGTH)
    coordinator, rounds, masked = masked_round(silos, context, SPARSE, inputs)
    graph = coordinator.graph
    k, t = graph.degree, graph.threshold
    assert (k, t) == (6, 4)
    target = "silo-00"
    around = graph.neighbours(target)
    # Who declares which of u's neighbours dropped: at most k - t each, and
    # t declarations per neighbour, from silos that hold its shares.
    capacity: dict[tuple[object, object], int] = {}
    for z in graph.names:
        capacity[("source", z)] = k - t
        for v in around:
            if v != z and graph.adjacent(v, z):
                capacity[(z, ("v", v))] = 1
    for v in around:
        capacity[(("v", v), "sink")] = t
    flow = _max_flow(capacity, "source", "sink")
    assert sum(flow[(("v", v), "sink")] for v in around) == k * t
    marks = {
        z: tuple(sorted(v for v in around if flow[(z, ("v", v))] > 0))
        for z in graph.names
    }
    views = {
        z: UnmaskRequest(
            context,
            survivors=tuple(n for n in graph.names if n not in marks[z]),
            dropped=marks[z],
        )
        for z in graph.names
    }
    confirmations = {z: rounds[z].confirm(view) for z, view in views.items()}

    # Without the confirmations' check: the shares each silo would reveal.
    would: dict[tuple[str, str], list[Share]] = defaultdict(list)
    for z, view in views.items():
        for owner, (self_value, key_value) in rounds[z]._held.items():
            if owner in view.survivors:
                would[(owner, "self")].append(
                    Share.from_bytes(graph.point(z), self_value)
                )
            else:
                would[(owner, "key")].append(
                    Share.from_bytes(graph.point(z), key_value)
                )
    seed = combine(would[(target, "self")][:t], t)
    session = coordinator._session
    streams = Keystreams(LENGTH)
    exposed = masked[target].values - _self_mask(streams, seed, session, target)
    target_public = coordinator._roster[target].masking_key
    for v in around:
        private = X25519PrivateKey.from_private_bytes(combine(would[(v, "key")][:t], t))
        stream = _pair_mask(streams, private, target_public, session, v, target)
        if target < v:
            exposed -= stream
        else:
            exposed += stream
    np.testing.assert_array_equal(exposed, CONFIG_SPARSE_FP.encode(inputs[target]))

    # With it: each silo is sent the confirmations that match its request.
    got: dict[tuple[str, str], int] = defaultdict(int)
    refused = 0
    for z, view in views.items():
        same = tuple(
            confirmations[peer] for peer in graph.neighbours(z) if views[peer] == view
        )
        try:
            response = rounds[z].unmask(RevealRequest(context, same))
        except BelowThresholdError:
            refused += 1
            continue
        for share in response.shares:
            got[(share.owner, share.secret)] += 1
    assert refused > 0
    keys_rebuilt = all(got[(v, "masking-key")] >= t for v in around)
    assert not (got[(target, "self-mask")] >= t and keys_rebuilt)


def test_a_retry_after_a_dropout_cannot_subtract_two_rosters(tmp_path: Path) -> None:
    """Issue 15, attack 2: a retry masked the same update for a second roster.

    A dropout ends in the same round with the survivors' sum, so there is no
    retry to ask for; asking anyway, in the same context, is refused at every
    step a silo could leak through.
    """
    silos = parties(tmp_path, 6)
    context = SecAggContext("run", 4)
    names = list(silos)
    inputs = inputs_for(names, LENGTH)
    run = play(silos, context, CONFIG, inputs, dropped_after_masking=["silo-05"])
    assert run.result is not None and run.result.dropped == ("silo-05",)
    np.testing.assert_array_equal(
        run.result.total, exact_sum(inputs, names[:5], CONFIG)
    )
    for name, silo in silos.items():
        with pytest.raises(ContextReusedError):
            silo.open(context, CONFIG)
        with pytest.raises(DoubleMaskError):
            run.rounds[name].mask(run.mask_requests[name], inputs[name] * 2)


def _load(cert: Path, key: Path) -> tuple[bytes, ec.EllipticCurvePrivateKey]:
    """Return a certificate (DER) and its key as ``fedsilo certs`` wrote them."""
    certificate = x509.load_pem_x509_certificate(cert.read_bytes())
    private = serialization.load_pem_private_key(key.read_bytes(), None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    return certificate.public_bytes(serialization.Encoding.DER), private


def _forge(
    roster: KeyRoster,
    target: str,
    masking_key: bytes,
    signer: tuple[bytes, ec.EllipticCurvePrivateKey] | None,
) -> KeyRoster:
    """Return the roster with ``target``'s masking key replaced, maybe re-signed.

    The coordinator writes the roster, so the digests match the forgery.
    """
    ads = []
    for ad in roster.advertisements:
        if ad.silo == target:
            ad = dataclasses.replace(ad, masking_key=masking_key)
            if signer is not None:
                der, key = signer
                payload = ad.payload(CONFIG.digest())
                ad = dataclasses.replace(
                    ad,
                    certificate=der,
                    signature=key.sign(payload, ec.ECDSA(hashes.SHA256())),
                )
        ads.append(ad)
    digests = {ad.silo: ad.digest() for ad in ads}
    entries = tuple(
        RosterEntry(e.silo, digests.get(e.silo, e.digest)) for e in roster.entries
    )
    return KeyRoster(roster.context, entries, tuple(ads))


def test_substituted_public_keys_are_refused_by_every_honest_silo(
    tmp_path: Path,
) -> None:
    """Issue 15, attack 3: the coordinator swaps a silo's keys for its own.

    With silo-01's masking key replaced by one the coordinator made, it could
    compute silo-01's pairwise masks. Every other silo (all are neighbours
    here) refuses the roster, whether the forged key keeps silo-01's
    signature or is signed with another silo's certificate, the
    coordinator's, a certificate naming silo-01 from another CA, or silo-01's
    own once it has expired; silo-01 sees its advertisement changed.
    """
    directory = tmp_path / "ca"
    trust, identities = federation(directory, silo_names(4))
    coordinator = certs.issue_cert(directory, "coordinator")
    certs.init_ca(tmp_path / "rogue")
    rogue = certs.issue_cert(tmp_path / "rogue", "silo-01")
    silo_two = identities["silo-02"]
    signers: dict[str, tuple[tuple[bytes, ec.EllipticCurvePrivateKey] | None, str]] = {
        "kept signature": (None, "the signature on its advertised keys"),
        "another silo": (
            (silo_two.certificate_der, silo_two.key),
            "is silo 'silo-02'",
        ),
        "the coordinator": (
            _load(coordinator.cert, coordinator.key),
            "urn:fedsilo:coordinator",
        ),
        "another CA": (
            _load(rogue.cert, rogue.key),
            "not issued by the federation's CA",
        ),
    }
    mine = generate_keypair().public
    for step, (signer, refusal) in enumerate(signers.values()):
        silos = silos_of(identities, trust)
        context = SecAggContext("run", 1, step=f"attempt-{step}")
        _, rounds, rosters = advertised(silos, context, CONFIG)
        for name in ("silo-00", "silo-02", "silo-03"):
            forged = _forge(rosters[name], "silo-01", mine, signer)
            with pytest.raises(IdentityError, match=refusal):
                rounds[name].share(forged)
        # silo-01 sees its own digest changed in the roster.
        own = _forge(rosters["silo-00"], "silo-01", mine, signer)
        mismatch = dataclasses.replace(rosters["silo-01"], entries=own.entries)
        with pytest.raises(MessageError, match="as it sent it"):
            rounds["silo-01"].share(mismatch)

    # An expired certificate: the silos' clocks are a year and a day ahead.
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=certs.LEAF_DAYS + 1)
    late = TrustStore(trust.ca, clock=lambda: later)
    _, rounds, rosters = advertised(
        silos_of(identities, late), SecAggContext("run", 2), CONFIG
    )
    for name in ("silo-00", "silo-02", "silo-03"):
        with pytest.raises(IdentityError, match="valid from"):
            rounds[name].share(rosters[name])


def test_declared_dropouts_that_split_the_graph_are_refused(tmp_path: Path) -> None:
    """Claim two runs of silos dropped so the survivors fall into two parts.

    Their masks with each other cancel within each part, so unmasking would
    give the sum of each part, and with small parts single updates. Every
    survivor refuses: next to a gap it has lost too many neighbours, elsewhere
    it sees the survivors' graph fall apart.
    """
    silos = parties(tmp_path, 20)
    context = SecAggContext("run", 1)
    coordinator, rounds, _ = masked_round(
        silos, context, SPARSE, inputs_for(list(silos), LENGTH)
    )
    graph = coordinator.graph
    assert (graph.degree, graph.threshold) == (6, 4)
    ring = graph.ring
    # Positions 0-2 and 10-12 "dropped": arcs 3-9 and 13-19 remain.
    dropped = {ring[i] for i in (0, 1, 2, 10, 11, 12)}
    survivors = tuple(n for n in graph.names if n not in dropped)
    request = UnmaskRequest(context, survivors, tuple(sorted(dropped)))
    assert not graph.connected(survivors)
    refusals: dict[str, type] = {}
    for name in survivors:
        with pytest.raises((BelowThresholdError, DisconnectedSurvivorsError)) as error:
            rounds[name].confirm(request)
        refusals[name] = error.type
    assert set(refusals.values()) == {BelowThresholdError, DisconnectedSurvivorsError}
