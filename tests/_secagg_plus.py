"""Helpers for the SecAgg+ tests: a federation's certificates, and one whole run.

Certificates are real: a CA and silo certificates made by ``fedsilo.certs``
in a temporary directory. :func:`play` runs the four stages with every silo
in this process, as the coordinator would relay them, and lets a test drop
silos at each stage or pass every message through a transport (``wire``).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from fedsilo import certs
from tasks.privacy.identity import SiloIdentity, TrustStore
from tasks.privacy.neighbours import NeighbourGraph
from tasks.privacy.secagg_plus import CoordinatorRound, SecAggPlusSilo, SiloRound
from tasks.privacy.secagg_plus_messages import (
    AggregateResult,
    KeyRoster,
    MaskRequest,
    RevealRequest,
    SecAggConfig,
    SecAggContext,
    UnmaskRequest,
)

M = TypeVar("M")


def silo_names(n: int) -> list[str]:
    """Return ``silo-00``, ``silo-01``, ... (sorted as numbered)."""
    return [f"silo-{i:02d}" for i in range(n)]


def federation(
    directory: Path, names: Sequence[str]
) -> tuple[TrustStore, dict[str, SiloIdentity]]:
    """Make a CA and one certificate per silo in ``directory``; load them."""
    certs.init_ca(directory)
    identities = {}
    for name in names:
        issued = certs.issue_cert(directory, name)
        identities[name] = SiloIdentity.load(name, issued.cert, issued.key)
    return TrustStore.load(directory / certs.CA_CERT), identities


def silos_of(
    identities: Mapping[str, SiloIdentity], trust: TrustStore, min_silos: int = 3
) -> dict[str, SecAggPlusSilo]:
    """Return one silo-side party per identity."""
    return {
        name: SecAggPlusSilo(identity, trust, min_silos=min_silos)
        for name, identity in identities.items()
    }


def inputs_for(
    names: Sequence[str], length: int, seed: int = 0
) -> dict[str, np.ndarray]:
    """Return a random input vector per silo, values in [-100, 100]."""
    rng = np.random.default_rng(seed)
    return {name: rng.uniform(-100, 100, size=length) for name in names}


def exact_sum(
    inputs: Mapping[str, np.ndarray], names: Collection[str], config: SecAggConfig
) -> np.ndarray:
    """Return the modular sum of the named silos' fixed-point encodings."""
    total = np.zeros(config.length, dtype=np.uint64)
    for name in names:
        total += config.fixed_point.encode(inputs[name])
    return total


Dropouts = Collection[str] | Callable[[NeighbourGraph], Collection[str]]


def _named(dropouts: Dropouts, graph: NeighbourGraph) -> Collection[str]:
    return dropouts(graph) if callable(dropouts) else dropouts


def _same(message: M) -> M:
    return message


@dataclass
class Play:
    """What one run left behind: both sides' state and the messages relayed."""

    coordinator: CoordinatorRound
    rounds: dict[str, SiloRound]
    rosters: dict[str, KeyRoster] = field(default_factory=dict)
    mask_requests: dict[str, MaskRequest] = field(default_factory=dict)
    unmask_request: UnmaskRequest | None = None
    reveal_requests: dict[str, RevealRequest] = field(default_factory=dict)
    result: AggregateResult | None = None
    transcript: list[Any] = field(default_factory=list)


def play(
    silos: Mapping[str, SecAggPlusSilo],
    context: SecAggContext,
    config: SecAggConfig,
    inputs: Mapping[str, np.ndarray],
    *,
    absent_at_sharing: Dropouts = (),
    dropped_after_masking: Dropouts = (),
    silent_at_unmask: Dropouts = (),
    wire: Callable[[Any], Any] = _same,
) -> Play:
    """Run the four stages; silos drop out where the arguments say.

    ``absent_at_sharing`` advertise keys and then send nothing;
    ``dropped_after_masking`` mask their input but it never arrives;
    ``silent_at_unmask`` send their masked input, then nothing. Every
    message passes through ``wire`` and is kept in the transcript. Each may
    be a function of the round's neighbour graph instead (the graph depends
    on the keys, so it is known once the roster is).
    """
    coordinator = CoordinatorRound(context, config)
    rounds = {name: silo.open(context, config) for name, silo in silos.items()}
    out = Play(coordinator, rounds)

    def send(message: M) -> M:
        out.transcript.append(message)
        relayed: M = wire(message)
        return relayed

    for silo_round in rounds.values():
        coordinator.collect_advertisement(send(silo_round.advertise()))
    out.rosters = {name: send(roster) for name, roster in coordinator.rosters().items()}
    graph = coordinator.graph
    absent_at_sharing = _named(absent_at_sharing, graph)
    dropped_after_masking = _named(dropped_after_masking, graph)
    silent_at_unmask = _named(silent_at_unmask, graph)
    for name, silo_round in rounds.items():
        bundle = silo_round.share(out.rosters[name])
        if name not in absent_at_sharing:
            coordinator.collect_shares(send(bundle))
    out.mask_requests = {
        name: send(request) for name, request in coordinator.mask_requests().items()
    }
    for name, request in out.mask_requests.items():
        masked = rounds[name].mask(request, inputs[name])
        if name not in dropped_after_masking:
            coordinator.collect_masked(send(masked))
    out.unmask_request = send(coordinator.unmask_request())
    for name in out.unmask_request.survivors:
        if name not in silent_at_unmask:
            confirmation = rounds[name].confirm(out.unmask_request)
            coordinator.collect_confirmation(send(confirmation))
    out.reveal_requests = {
        name: send(reveal) for name, reveal in coordinator.reveal_requests().items()
    }
    for name, reveal in out.reveal_requests.items():
        coordinator.collect_unmask(send(rounds[name].unmask(reveal)))
    out.result = send(coordinator.result())
    return out
