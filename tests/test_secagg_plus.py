"""SecAgg+: Shamir shares, the neighbour graph, and the protocol's four stages.

The protocol runs between real silo-side parties and a coordinator in this
process, with certificates made by ``fedsilo.certs`` (tests/_secagg_plus.py).
The attacks of a curious coordinator are in tests/security/test_secagg_attacks.py.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tasks.averaging.weighted import weighted_average
from tasks.privacy.encoding import flatten, unflatten
from tasks.privacy.errors import FixedPointRangeError
from tasks.privacy.identity import IdentityError, SiloIdentity, TrustStore
from tasks.privacy.neighbours import (
    GraphParameters,
    NeighbourGraph,
    choose_parameters,
    round_failure,
)
from tasks.privacy.secagg import mask_stream
from tasks.privacy.secagg_plus import (
    AlreadyUnmaskedError,
    BelowThresholdError,
    ContextReusedError,
    CoordinatorRound,
    DoubleMaskError,
    Keystreams,
    SecAggPlusSilo,
    ShareDecryptionError,
    StageError,
    _hkdf,
)
from tasks.privacy.secagg_plus_messages import (
    MESSAGE_TYPES,
    EncryptedShare,
    MessageError,
    RevealRequest,
    SecAggConfig,
    SecAggContext,
    UnmaskRequest,
)
from tasks.privacy.shamir import (
    PRIME,
    DuplicateShareError,
    InconsistentSharesError,
    InvalidShareError,
    NotEnoughSharesError,
    ShamirError,
    Share,
    combine,
    interpolate,
    split,
)
from tasks.protocol import codec
from tests._secagg_plus import (
    exact_sum,
    federation,
    inputs_for,
    play,
    silo_names,
    silos_of,
)

LENGTH = 64
#: A sparse graph on 20 silos: degree 6, threshold 4.
SPARSE: dict[str, Any] = {"dropout": 0.01, "failure_bits": 10}
secrets_32 = st.binary(min_size=32, max_size=32)
Identities = tuple[TrustStore, dict[str, SiloIdentity]]


@pytest.fixture(scope="module")
def identities(
    tmp_path_factory: pytest.TempPathFactory,
) -> Identities:
    """A CA and 20 silo certificates, made once for the module."""
    return federation(tmp_path_factory.mktemp("secagg-plus-ca"), silo_names(20))


def silos(
    identities: Identities, n: int, min_silos: int = 3
) -> dict[str, SecAggPlusSilo]:
    trust, by_name = identities
    chosen = {name: by_name[name] for name in silo_names(n)}
    return silos_of(chosen, trust, min_silos)


def context(step: str = "update") -> SecAggContext:
    return SecAggContext(run_id=f"run-{secrets.token_hex(4)}", round=1, step=step)


# -- Shamir ------------------------------------------------------------------


def _probable_prime(n: int, rounds: int = 40) -> bool:
    d, r = n - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    for _ in range(rounds):
        x = pow(2 + secrets.randbelow(n - 3), d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def test_the_field_holds_every_32_byte_secret() -> None:
    assert PRIME > 2**256
    assert _probable_prime(PRIME)
    assert not _probable_prime(PRIME - 2)  # the test can say no


@settings(max_examples=60, deadline=None)
@given(secret=secrets_32, n=st.integers(1, 12), data=st.data())
def test_any_threshold_shares_rebuild_the_secret(
    secret: bytes, n: int, data: st.DataObject
) -> None:
    threshold = data.draw(st.integers(1, n))
    points = data.draw(
        st.lists(st.integers(1, 10**6), min_size=n, max_size=n, unique=True)
    )
    shares = split(secret, threshold, points)
    chosen = data.draw(st.permutations(shares))[: data.draw(st.integers(threshold, n))]
    assert combine(chosen, threshold) == secret
    if threshold > 1:
        with pytest.raises(NotEnoughSharesError):
            combine(chosen[: threshold - 1], threshold)


@settings(max_examples=60, deadline=None)
@given(secret=secrets_32, other=secrets_32, n=st.integers(2, 10), data=st.data())
def test_fewer_than_threshold_shares_fit_every_secret(
    secret: bytes, other: bytes, n: int, data: st.DataObject
) -> None:
    """t - 1 shares and ANY candidate secret lie on one polynomial of degree t - 1.

    Through the t - 1 shares seen and ``(0, other)`` passes a polynomial of
    degree t - 1; completing the seen shares with its values elsewhere gives a
    full set of shares of ``other``, so the seen ones rule no secret out.
    """
    threshold = data.draw(st.integers(2, n))
    shares = split(secret, threshold, list(range(1, n + 1)))
    seen = list(data.draw(st.permutations(shares))[: threshold - 1])
    with pytest.raises(NotEnoughSharesError):
        combine(seen, threshold)
    candidate = int.from_bytes(other, "big")
    completion = Share(n + 1, _value_through(seen, candidate, n + 1))
    assert combine([*seen, completion], threshold) == other


def _value_through(shares: list[Share], secret: int, at: int) -> int:
    """Return f(at) for the polynomial through ``shares`` and (0, secret)."""
    # Lagrange over the points including x = 0, computed directly.
    points = [(0, secret), *((s.x, s.y) for s in shares)]
    total = 0
    for i, (xi, yi) in enumerate(points):
        numerator, denominator = 1, 1
        for j, (xj, _) in enumerate(points):
            if j != i:
                numerator = numerator * (at - xj) % PRIME
                denominator = denominator * (xi - xj) % PRIME
        total += yi * numerator * pow(denominator, -1, PRIME)
    return total % PRIME


def test_bad_or_duplicate_shares_raise_named_errors() -> None:
    secret = secrets.token_bytes(32)
    shares = split(secret, 3, [1, 2, 3, 4, 5])
    with pytest.raises(DuplicateShareError):
        combine([shares[0], shares[0], shares[1]], 3)
    with pytest.raises(DuplicateShareError):
        split(secret, 2, [1, 2, 2])
    with pytest.raises(InvalidShareError):
        combine([Share(0, 5), shares[1], shares[2]], 3)
    with pytest.raises(InvalidShareError):
        combine([Share(1, PRIME), shares[1], shares[2]], 3)
    with pytest.raises(InvalidShareError):
        Share.from_bytes(1, b"\x00" * 32)
    tampered = Share(shares[4].x, (shares[4].y + 1) % PRIME)
    with pytest.raises(InconsistentSharesError):
        combine([*shares[:4], tampered], 3)
    with pytest.raises(ShamirError):
        split(secret[:31], 2, [1, 2])
    with pytest.raises(ShamirError):
        split(secret, 4, [1, 2, 3])
    assert interpolate(shares[:3]) == int.from_bytes(secret, "big")
    assert Share.from_bytes(3, shares[2].value_bytes()) == shares[2]


def test_keystreams_and_key_derivation_are_the_standard_ones() -> None:
    """The reused-buffer stream is secagg's AES-CTR stream; _hkdf is HKDF-SHA256."""
    streams = Keystreams(1000)
    for _ in range(3):
        seed = secrets.token_bytes(32)
        np.testing.assert_array_equal(streams(seed), mask_stream(seed, 1000))
    secret, info = secrets.token_bytes(32), b"fedsilo info"
    reference = HKDF(hashes.SHA256(), 32, salt=None, info=info).derive(secret)
    assert _hkdf(secret, info) == reference


# -- the neighbour graph -------------------------------------------------------


def _components(graph: NeighbourGraph, members: set[str]) -> int:
    left, count = set(members), 0
    while left:
        count += 1
        queue = deque([left.pop()])
        while queue:
            for peer in graph.neighbours(queue.popleft()):
                if peer in left:
                    left.remove(peer)
                    queue.append(peer)
    return count


def test_parameters_grow_with_log_n_and_keep_2t_above_k() -> None:
    table = {n: choose_parameters(n) for n in (3, 10, 100, 1000, 10**5)}
    assert table[10] == GraphParameters(10, 9, 5)  # small rosters: complete
    assert table[100].degree == 22 and table[1000].degree == 24
    assert table[10**5].degree <= 32
    for n, p in table.items():
        assert 2 * p.threshold > p.degree >= p.threshold
        assert p.degree == n - 1 or p.degree % 2 == 0
        if p.degree < n - 1:
            assert round_failure(n, p.degree, p.threshold, 0.05) <= 2.0**-20
    colluding = choose_parameters(1000, colluding=0.2)
    assert 2 * colluding.threshold > colluding.degree + 0.2 * colluding.degree


@settings(max_examples=40, deadline=None)
@given(n=st.integers(3, 120), seed=st.binary(min_size=32, max_size=32))
def test_every_party_computes_one_regular_symmetric_graph(n: int, seed: bytes) -> None:
    names = silo_names(n)
    parameters = choose_parameters(n, **SPARSE)
    graph = NeighbourGraph(names, seed, parameters)
    again = NeighbourGraph(list(reversed(names)), seed, parameters)
    for name in names:
        around = graph.neighbours(name)
        assert around == again.neighbours(name)
        assert len(around) == parameters.degree and name not in around
        for peer in around:
            assert name in graph.neighbours(peer) and graph.adjacent(name, peer)
    other = NeighbourGraph(
        names, bytes(32) if seed != bytes(32) else b"\1" * 32, parameters
    )
    if n > 8 and not parameters.complete:
        assert other.ring != graph.ring


@settings(max_examples=60, deadline=None)
@given(n=st.integers(3, 60), data=st.data())
def test_connected_agrees_with_a_graph_search(n: int, data: st.DataObject) -> None:
    names = silo_names(n)
    graph = NeighbourGraph(
        names, secrets.token_bytes(32), choose_parameters(n, **SPARSE)
    )
    members = set(data.draw(st.lists(st.sampled_from(names), min_size=1, unique=True)))
    assert graph.connected(members) == (_components(graph, members) == 1)


# -- the protocol ---------------------------------------------------------------


@pytest.mark.parametrize(("n", "graph"), [(5, {}), (20, SPARSE)])
def test_an_honest_run_gives_the_exact_sum(
    identities: Identities,
    n: int,
    graph: dict[str, Any],
) -> None:
    config = SecAggConfig(length=LENGTH, **graph)
    inputs = inputs_for(silo_names(n), LENGTH)
    run = play(silos(identities, n), context(), config, inputs)
    assert run.result is not None and run.result.dropped == ()
    np.testing.assert_array_equal(run.result.total, exact_sum(inputs, inputs, config))
    decoded = run.coordinator.decode(run.result)
    expected = np.sum(list(inputs.values()), axis=0)
    np.testing.assert_allclose(
        decoded, expected, atol=config.fixed_point.tolerance(n), rtol=0
    )
    sparse = run.coordinator.graph.parameters
    assert sparse.complete == (n == 5)
    for name, silo_round in run.rounds.items():
        assert silo_round.graph.neighbours(name) == run.coordinator.graph.neighbours(
            name
        )


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(n=st.sampled_from([8, 20]), data=st.data())
def test_dropouts_after_masking_give_the_survivors_exact_sum(
    identities: Identities, n: int, data: st.DataObject
) -> None:
    """Up to k - t of a silo's neighbours may vanish after masking; the round
    still ends, with the exact sum of the survivors (n = 8 is a complete graph)."""
    config = SecAggConfig(length=LENGTH, **SPARSE)
    parameters = choose_parameters(n, **SPARSE)
    names = silo_names(n)
    inputs = inputs_for(names, LENGTH, seed=n)

    def among_neighbours(graph: NeighbourGraph) -> list[str]:
        victim = data.draw(st.sampled_from(names))
        return data.draw(
            st.lists(
                st.sampled_from(graph.neighbours(victim)),
                max_size=parameters.tolerated_dropouts,
                unique=True,
            )
        )

    run = play(
        silos(identities, n),
        context(),
        config,
        inputs,
        dropped_after_masking=among_neighbours,
    )
    assert run.result is not None and run.unmask_request is not None
    dropped = set(run.result.dropped)
    assert len(dropped) <= parameters.tolerated_dropouts
    survivors = [name for name in names if name not in dropped]
    assert list(run.result.survivors) == survivors
    np.testing.assert_array_equal(
        run.result.total, exact_sum(inputs, survivors, config)
    )


def test_dropouts_before_masking_and_during_unmasking_still_end_the_round(
    identities: Identities,
) -> None:
    """One silo never shares, one vanishes after masking, one never unmasks.

    They are picked so that no silo loses more than k - t = 2 neighbours.
    """
    config = SecAggConfig(length=LENGTH, **SPARSE)
    names = silo_names(20)
    inputs = inputs_for(names, LENGTH, seed=3)
    chosen: list[str] = []

    def pick(graph: NeighbourGraph) -> list[str]:
        if not chosen:
            absent, dropped = graph.neighbours("silo-00")[:2]
            chosen.extend([absent, dropped])
            chosen.append(
                next(
                    name
                    for name in names
                    if name not in chosen
                    and all(
                        len({absent, dropped, name} & set(graph.neighbours(o))) <= 2
                        for o in names
                    )
                )
            )
        return chosen

    run = play(
        silos(identities, 20),
        context(),
        config,
        inputs,
        absent_at_sharing=lambda graph: pick(graph)[:1],
        dropped_after_masking=lambda graph: pick(graph)[1:2],
        silent_at_unmask=lambda graph: pick(graph)[2:],
    )
    absent, dropped, silent = chosen
    assert run.result is not None
    assert run.result.dropped == (dropped,)
    assert absent not in run.result.survivors and silent in run.result.survivors
    survivors = [name for name in names if name not in (absent, dropped)]
    np.testing.assert_array_equal(
        run.result.total, exact_sum(inputs, survivors, config)
    )


def test_one_dropout_too_many_is_refused_by_the_silos(
    identities: Identities,
) -> None:
    """More than k - t of one silo's neighbours dropped: it will not unmask."""
    config = SecAggConfig(length=LENGTH)
    parties = silos(identities, 7)  # complete: k = 6, t = 4, 2 may drop
    ctx = context()
    coordinator = CoordinatorRound(ctx, config)
    rounds = {name: party.open(ctx, config) for name, party in parties.items()}
    for silo_round in rounds.values():
        coordinator.collect_advertisement(silo_round.advertise())
    rosters = coordinator.rosters()
    assert coordinator.graph.parameters == GraphParameters(7, 6, 4)
    for silo_round in rounds.values():
        coordinator.collect_shares(silo_round.share(rosters[silo_round.name]))
    requests = coordinator.mask_requests()
    inputs = inputs_for(list(rounds), LENGTH)
    dropped = {"silo-00", "silo-01", "silo-02"}
    for name, silo_round in rounds.items():
        masked = silo_round.mask(requests[name], inputs[name])
        if name not in dropped:
            coordinator.collect_masked(masked)
    request = coordinator.unmask_request()
    assert set(request.dropped) == dropped
    for name in request.survivors:
        with pytest.raises(BelowThresholdError, match="fewer than the threshold"):
            rounds[name].confirm(request)


def test_masking_twice_in_one_context_is_refused(
    identities: Identities,
) -> None:
    config = SecAggConfig(length=LENGTH)
    parties = silos(identities, 4)
    ctx = context()
    inputs = inputs_for(list(parties), LENGTH)
    run = play(parties, ctx, config, inputs)
    name = "silo-01"
    request = run.mask_requests[name]
    with pytest.raises(DoubleMaskError, match="one input per context"):
        run.rounds[name].mask(request, inputs[name] + 1.0)
    with pytest.raises(ContextReusedError, match="used once"):
        parties[name].open(ctx, config)
    with pytest.raises(ContextReusedError):
        parties[name].open(dataclasses.replace(ctx), config)
    # Another step of the same round is another context.
    assert parties[name].open(dataclasses.replace(ctx, step="histogram-3"), config)


def test_stages_out_of_order_are_refused(
    identities: Identities,
) -> None:
    config = SecAggConfig(length=LENGTH)
    party = silos(identities, 3)["silo-00"]
    silo_round = party.open(context(), config)
    request = UnmaskRequest(silo_round.context, ("silo-00",), ())
    with pytest.raises(StageError, match="needs 'masked'"):
        silo_round.confirm(request)
    with pytest.raises(StageError, match="needs 'confirmed'"):
        silo_round.unmask(RevealRequest(silo_round.context, ()))
    silo_round.advertise()
    with pytest.raises(StageError, match="needs 'open'"):
        silo_round.advertise()
    coordinator = CoordinatorRound(silo_round.context, config)
    with pytest.raises(StageError):
        coordinator.result()


def test_a_roster_or_a_neighbourhood_below_the_threshold_is_refused(
    identities: Identities,
) -> None:
    config = SecAggConfig(length=LENGTH)
    # The silos' own floor (4) is above the configuration's (3).
    parties = silos(identities, 3, min_silos=4)
    ctx = context()
    coordinator = CoordinatorRound(ctx, config)
    rounds = {name: party.open(ctx, config) for name, party in parties.items()}
    for silo_round in rounds.values():
        coordinator.collect_advertisement(silo_round.advertise())
    rosters = coordinator.rosters()
    for silo_round in rounds.values():
        with pytest.raises(BelowThresholdError, match="roster of 3 silos"):
            silo_round.share(rosters[silo_round.name])

    # A neighbourhood thinned below t before masking.
    parties = silos(identities, 7)  # complete: k = 6, t = 4
    ctx = context()
    coordinator = CoordinatorRound(ctx, config)
    rounds = {name: party.open(ctx, config) for name, party in parties.items()}
    for silo_round in rounds.values():
        coordinator.collect_advertisement(silo_round.advertise())
    rosters = coordinator.rosters()
    bundles = {name: r.share(rosters[name]) for name, r in rounds.items()}
    for name in ("silo-00", "silo-01", "silo-02", "silo-03"):
        coordinator.collect_shares(bundles[name])
    requests = coordinator.mask_requests()  # four sharers: 3 neighbours each
    with pytest.raises(BelowThresholdError, match="below the threshold of 4"):
        rounds["silo-00"].mask(requests["silo-00"], np.zeros(LENGTH))
    with pytest.raises(BelowThresholdError, match="below the minimum"):
        CoordinatorRound(context(), config).rosters()


def test_tampered_misrouted_or_missing_shares_are_refused(
    identities: Identities,
) -> None:
    config = SecAggConfig(length=LENGTH)
    parties = silos(identities, 5)
    ctx = context()
    coordinator = CoordinatorRound(ctx, config)
    rounds = {name: party.open(ctx, config) for name, party in parties.items()}
    for silo_round in rounds.values():
        coordinator.collect_advertisement(silo_round.advertise())
    rosters = coordinator.rosters()
    for silo_round in rounds.values():
        coordinator.collect_shares(silo_round.share(rosters[silo_round.name]))
    requests = coordinator.mask_requests()
    request = requests["silo-00"]
    first = request.shares[0]
    flipped = bytes([first.ciphertext[0] ^ 1]) + first.ciphertext[1:]
    tampered = dataclasses.replace(
        request,
        shares=(dataclasses.replace(first, ciphertext=flipped), *request.shares[1:]),
    )
    with pytest.raises(ShareDecryptionError, match=f"from '{first.sender}'"):
        rounds["silo-00"].mask(tampered, np.zeros(LENGTH))
    # silo-01's share for silo-00, relabelled as if for silo-02: it does not decrypt.
    for_two = requests["silo-02"]
    stolen = next(s for s in request.shares if s.sender == "silo-01")
    relabelled = EncryptedShare("silo-01", "silo-02", stolen.ciphertext)
    others = tuple(s for s in for_two.shares if s.sender != "silo-01")
    with pytest.raises(ShareDecryptionError):
        rounds["silo-02"].mask(
            dataclasses.replace(for_two, shares=(relabelled, *others)), np.zeros(LENGTH)
        )
    with pytest.raises(MessageError, match="no shares from neighbours"):
        rounds["silo-03"].mask(
            dataclasses.replace(requests["silo-03"], shares=()), np.zeros(LENGTH)
        )
    # None of these masked anything: the right request still works.
    masked = rounds["silo-00"].mask(request, np.ones(LENGTH))
    assert masked.values.dtype == np.uint64


def test_bad_inputs_name_the_silo(
    identities: Identities,
) -> None:
    config = SecAggConfig(length=LENGTH)
    parties = silos(identities, 3)
    ctx = context()
    coordinator = CoordinatorRound(ctx, config)
    rounds = {name: party.open(ctx, config) for name, party in parties.items()}
    for silo_round in rounds.values():
        coordinator.collect_advertisement(silo_round.advertise())
    rosters = coordinator.rosters()
    for silo_round in rounds.values():
        coordinator.collect_shares(silo_round.share(rosters[silo_round.name]))
    requests = coordinator.mask_requests()
    with pytest.raises(MessageError, match="silo 'silo-00': input of shape"):
        rounds["silo-00"].mask(requests["silo-00"], np.zeros(LENGTH + 1))
    nan = np.zeros(LENGTH)
    nan[3] = np.nan
    with pytest.raises(FixedPointRangeError, match="not finite"):
        rounds["silo-00"].mask(requests["silo-00"], nan)
    masked = rounds["silo-01"].mask(requests["silo-01"], np.zeros(LENGTH))
    coordinator.collect_masked(masked)
    with pytest.raises(MessageError, match="silo 'silo-01' sent two masked inputs"):
        coordinator.collect_masked(masked)
    short = dataclasses.replace(masked, silo="silo-02", values=masked.values[:3])
    with pytest.raises(MessageError, match="silo 'silo-02': masked input"):
        coordinator.collect_masked(short)
    with pytest.raises(MessageError, match="config length"):
        SecAggConfig(length=0)
    with pytest.raises(MessageError, match="min_silos"):
        SecAggConfig(length=3, min_silos=2)


def test_silos_with_another_configuration_refuse_the_keys(
    identities: Identities,
) -> None:
    """The configuration's digest is signed: a silo told another length refuses."""
    config = SecAggConfig(length=LENGTH)
    parties = silos(identities, 4)
    ctx = context()
    coordinator = CoordinatorRound(ctx, config)
    odd = SecAggConfig(length=LENGTH + 1)
    rounds = {
        name: party.open(ctx, odd if name == "silo-03" else config)
        for name, party in parties.items()
    }
    for silo_round in rounds.values():
        coordinator.collect_advertisement(silo_round.advertise())
    rosters = coordinator.rosters()
    for name in ("silo-00", "silo-01", "silo-02"):
        with pytest.raises(IdentityError, match="silo 'silo-03': the signature"):
            rounds[name].share(rosters[name])


def test_an_identical_request_gets_the_same_answer_another_is_refused(
    identities: Identities,
) -> None:
    config = SecAggConfig(length=LENGTH)
    run = play(
        silos(identities, 5), context(), config, inputs_for(silo_names(5), LENGTH)
    )
    request = run.unmask_request
    assert request is not None
    silo_round = run.rounds["silo-02"]
    confirmed = silo_round.confirm(dataclasses.replace(request))
    assert run.coordinator.graph.threshold == 3
    other = dataclasses.replace(
        request,
        survivors=tuple(s for s in request.survivors if s != "silo-04"),
        dropped=("silo-04",),
    )
    with pytest.raises(AlreadyUnmaskedError, match="confirms once"):
        silo_round.confirm(other)
    reveal = run.reveal_requests["silo-02"]
    first = silo_round.unmask(dataclasses.replace(reveal))
    assert silo_round.unmask(reveal) == first
    fewer = dataclasses.replace(reveal, signatures=reveal.signatures[:3])
    with pytest.raises(AlreadyUnmaskedError, match="answers once"):
        silo_round.unmask(fewer)
    assert confirmed.silo == "silo-02"


def test_a_silo_reveals_only_after_t_neighbours_confirmed_its_view(
    identities: Identities,
) -> None:
    config = SecAggConfig(length=LENGTH)
    parties = silos(identities, 5)  # complete: k = 4, t = 3
    ctx = context()
    coordinator = CoordinatorRound(ctx, config)
    rounds = {name: party.open(ctx, config) for name, party in parties.items()}
    for silo_round in rounds.values():
        coordinator.collect_advertisement(silo_round.advertise())
    rosters = coordinator.rosters()
    for name, silo_round in rounds.items():
        coordinator.collect_shares(silo_round.share(rosters[name]))
    inputs = inputs_for(list(rounds), LENGTH)
    for name, mask_request in coordinator.mask_requests().items():
        coordinator.collect_masked(rounds[name].mask(mask_request, inputs[name]))
    request = coordinator.unmask_request()
    confirmations = {name: rounds[name].confirm(request) for name in rounds}
    target = rounds["silo-00"]
    others = [confirmations[n] for n in ("silo-01", "silo-02", "silo-03", "silo-04")]
    with pytest.raises(BelowThresholdError, match="2 of its neighbours confirmed"):
        target.unmask(RevealRequest(ctx, tuple(others[:2])))
    with pytest.raises(MessageError, match="two confirmations"):
        target.unmask(RevealRequest(ctx, (others[0], others[0], others[1])))
    with pytest.raises(MessageError, match="not a surviving neighbour"):
        target.unmask(RevealRequest(ctx, (confirmations["silo-00"], *others[:2])))
    forged = dataclasses.replace(others[2], signature=others[1].signature)
    with pytest.raises(IdentityError, match="confirmation of the survivors"):
        target.unmask(RevealRequest(ctx, (others[0], others[1], forged)))
    response = target.unmask(RevealRequest(ctx, tuple(others[:3])))
    assert {share.owner for share in response.shares} == {
        "silo-01",
        "silo-02",
        "silo-03",
        "silo-04",
    }


def test_a_masked_vector_is_uncorrelated_with_the_input(
    identities: Identities,
) -> None:
    """A ramp, a constant and zeros come out as uniform 64-bit words."""
    length = 50_000
    config = SecAggConfig(length=length)
    names = silo_names(3)
    ramp = np.linspace(-1000.0, 1000.0, length)
    inputs = {
        "silo-00": ramp,
        "silo-01": np.full(length, 7.0),
        "silo-02": np.zeros(length),
    }
    run = play(silos(identities, 3), context(), config, inputs)
    masked = {
        m.silo: m.values for m in run.transcript if type(m).__name__ == "MaskedInput"
    }
    assert set(masked) == set(names)
    bound = 6 / np.sqrt(length)  # six standard errors of a correlation
    for name, values in masked.items():
        as_float = values.astype(np.float64)
        assert abs(np.corrcoef(ramp, as_float)[0, 1]) < bound, name
        top = (values >> np.uint64(56)).astype(np.int64)
        counts = np.bincount(top, minlength=256)
        chi2 = float(np.sum((counts - length / 256) ** 2 / (length / 256)))
        assert chi2 < 400, (name, chi2)  # 255 degrees of freedom: mean 255, sd 23
        low = (values & np.uint64(1)).astype(np.float64)
        assert abs(low.mean() - 0.5) < 6 * 0.5 / np.sqrt(length), name
    zero_masked = masked["silo-02"]
    assert np.count_nonzero(zero_masked == 0) == 0


def test_every_message_crosses_the_silo_codec(
    identities: Identities,
) -> None:
    codec.register(*MESSAGE_TYPES)
    config = SecAggConfig(length=LENGTH, **SPARSE)
    names = silo_names(20)
    inputs = inputs_for(names, LENGTH, seed=9)
    seen: list[str] = []

    def wire(message: object) -> object:
        seen.append(type(message).__name__)
        return codec.unpack(codec.pack(message))

    run = play(
        silos(identities, 20),
        context(),
        config,
        inputs,
        dropped_after_masking=["silo-05"],
        wire=wire,
    )
    assert run.result is not None
    survivors = [name for name in names if name != "silo-05"]
    np.testing.assert_array_equal(
        run.result.total, exact_sum(inputs, survivors, config)
    )
    assert set(seen) >= {
        "KeyAdvertisement",
        "KeyRoster",
        "ShareBundle",
        "MaskRequest",
        "MaskedInput",
        "UnmaskRequest",
        "SurvivorsSignature",
        "RevealRequest",
        "UnmaskResponse",
        "AggregateResult",
    }


def test_a_coordinator_with_the_ca_turns_away_a_bad_advertisement(
    identities: Identities, tmp_path: Path
) -> None:
    trust, _ = identities
    config = SecAggConfig(length=LENGTH)
    parties = silos(identities, 3)
    ctx = context()
    coordinator = CoordinatorRound(ctx, config, trust=trust)
    ad = parties["silo-00"].open(ctx, config).advertise()
    forged = dataclasses.replace(ad, masking_key=bytes(31) + b"\x09")
    with pytest.raises(IdentityError, match="silo 'silo-00'"):
        coordinator.collect_advertisement(forged)
    coordinator.collect_advertisement(ad)
    with pytest.raises(MessageError, match="advertised twice"):
        coordinator.collect_advertisement(ad)


def test_the_roster_binds_each_advertisement_to_its_digest(
    identities: Identities,
) -> None:
    """A silo gets its neighbours' advertisements in full, the rest as digests."""
    config = SecAggConfig(length=LENGTH, **SPARSE)
    parties = silos(identities, 20)
    ctx = context()
    coordinator = CoordinatorRound(ctx, config)
    rounds = {name: party.open(ctx, config) for name, party in parties.items()}
    ads = {name: silo_round.advertise() for name, silo_round in rounds.items()}
    for ad in ads.values():
        coordinator.collect_advertisement(ad)
    rosters = coordinator.rosters()
    roster = rosters["silo-00"]
    neighbours = coordinator.graph.neighbours("silo-00")
    assert [ad.silo for ad in roster.advertisements] == list(neighbours)
    assert len(roster.entries) == 20
    stranger = next(n for n in ads if n not in neighbours and n != "silo-00")
    with pytest.raises(MessageError, match="not its neighbours"):
        rounds["silo-00"].share(
            dataclasses.replace(
                roster, advertisements=(*roster.advertisements, ads[stranger])
            )
        )
    with pytest.raises(MessageError, match=r"lacks \['"):
        rounds["silo-00"].share(
            dataclasses.replace(roster, advertisements=roster.advertisements[1:])
        )
    swapped = dataclasses.replace(roster.advertisements[0], signature=b"\x30\x00")
    with pytest.raises(MessageError, match="does not match its digest"):
        rounds["silo-00"].share(
            dataclasses.replace(
                roster, advertisements=(swapped, *roster.advertisements[1:])
            )
        )
    with pytest.raises(MessageError, match="sorted order"):
        rounds["silo-00"].share(
            dataclasses.replace(roster, entries=tuple(reversed(roster.entries)))
        )
    # None of those was taken: the roster as sent still works.
    assert rounds["silo-00"].share(roster).sender == "silo-00"


def test_one_silo_dropped_mid_round_gives_fedavg_over_the_others(
    identities: Identities,
) -> None:
    """Named arrays masked with their weight: the round ends with plain FedAvg.

    Each silo masks ``w * params`` and ``w`` (its row count) in one vector; one
    silo vanishes after masking; the decoded weighted mean equals
    ``weighted_average`` over the other silos, within the fixed point's step.
    """
    names = silo_names(6)
    rng = np.random.default_rng(5)
    params = {
        name: {"coef": rng.normal(size=(3, 4)), "intercept": rng.normal(size=3)}
        for name in names
    }
    weights = {name: float(rng.integers(50, 500)) for name in names}
    flat = {name: flatten(params[name]) for name in names}
    layout = flat[names[0]][1]
    inputs = {
        name: np.append(flat[name][0] * weights[name], weights[name]) for name in names
    }
    config = SecAggConfig(length=layout.size + 1)
    run = play(
        silos(identities, 6),
        context(),
        config,
        inputs,
        dropped_after_masking=["silo-03"],
    )
    assert run.result is not None and run.result.dropped == ("silo-03",)
    total = run.coordinator.decode(run.result)
    averaged = unflatten(total[:-1] / total[-1], layout)
    others = [(params[n], weights[n]) for n in names if n != "silo-03"]
    expected = weighted_average(others)
    assert total[-1] == sum(w for _, w in others)
    for name, value in expected.items():
        np.testing.assert_allclose(averaged[name], value, atol=1e-6, rtol=0)
