"""Cost of secure aggregation with dropouts (SecAgg+) against plain summation.

For each number of silos (``--silos``, default 10 100 1000) and vector length
(``--lengths``, default 10,000 and 100,000 float64 parameters) it runs the
whole protocol of :mod:`tasks.privacy.secagg_plus` in this one process, every
silo simulated in turn, with real certificates (``fedsilo.certs``, made in a
temporary directory before the clock starts) and one silo dropped after
masking (``--drop``), and checks that the result is the survivors' exact sum.
Against it, plain summation: the coordinator adding the same float64 vectors.

Printed per cell (seconds are CPU seconds of the one thread doing all the
work, steadier than wall time when other jobs share the machine; the best of
``--repeats``):

- ``plain``: adding the survivors' vectors;
- ``secure``: the whole protocol, all silos one after another;
- ``coord``: the coordinator's share of that (roster, relaying, unmasking);
- ``silo``: the slowest silo's own time over all its steps, what one silo
  adds to a round when silos run in parallel, as they do; ``silo med`` the
  median silo's (the slowest is often one that a busy machine paused);
- ``round``: ``coord`` plus, per stage, the slowest silo's time in it: the
  secure round's critical path with the silos in parallel;
- ``round/plain``: that over ``plain``;
- ``k``, ``t``: the neighbour graph's degree and threshold;
- ``sent``: the bytes one silo sends over the whole protocol (codec-encoded,
  median over silos), and ``recv`` what it receives.

Run from the repository root::

    .venv/bin/python benchmarks/secagg_scale.py [--silos 10 100 1000]
        [--lengths 10000 100000] [--drop 1] [--repeats 1] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from fedsilo import certs
from tasks.privacy.identity import SiloIdentity, TrustStore
from tasks.privacy.secagg_plus import CoordinatorRound, SecAggPlusSilo
from tasks.privacy.secagg_plus_messages import (
    MESSAGE_TYPES,
    SecAggConfig,
    SecAggContext,
)
from tasks.protocol import codec

#: CPU seconds of this thread: steadier than wall time on a shared machine, and
#: the protocol's work all runs in this thread (OpenSSL and numpy's additions).
clock = time.thread_time
STAGES = ("advertise", "share", "mask", "confirm", "unmask")


def make_silos(directory: Path, n: int) -> dict[str, SecAggPlusSilo]:
    """Return ``n`` silo parties with certificates from one CA in ``directory``."""
    certs.init_ca(directory)
    trust = TrustStore.load(directory / certs.CA_CERT)
    silos = {}
    for i in range(n):
        name = f"silo-{i:04d}"
        issued = certs.issue_cert(directory, name)
        silos[name] = SecAggPlusSilo(
            SiloIdentity.load(name, issued.cert, issued.key), trust
        )
    return silos


def run_once(
    silos: dict[str, SecAggPlusSilo],
    inputs: dict[str, np.ndarray],
    config: SecAggConfig,
    drop: int,
    repeat: int,
) -> dict[str, Any]:
    """Run the protocol once; return its timings, sizes and the plain time."""
    context = SecAggContext("bench", repeat, step=f"len{config.length}")
    silo_time: dict[str, dict[str, float]] = defaultdict(dict)
    coord = 0.0
    sent: dict[str, int] = defaultdict(int)
    received: dict[str, int] = defaultdict(int)
    names = list(silos)
    dropped = set(names[:drop])
    ads: dict[str, Any] = {}
    confirmations: dict[str, Any] = {}
    bundles: dict[str, Any] = {}

    def size(message: Any) -> int:
        return len(codec.pack(message))

    start = clock()
    tick = clock()
    coordinator = CoordinatorRound(context, config)
    coord += clock() - tick
    rounds = {}
    for name, silo in silos.items():
        tick = clock()
        silo_round = rounds[name] = silo.open(context, config)
        ad = ads[name] = silo_round.advertise()
        silo_time[name]["advertise"] = clock() - tick
        tick = clock()
        coordinator.collect_advertisement(ad)
        coord += clock() - tick
    tick = clock()
    rosters = coordinator.rosters()
    coord += clock() - tick
    for name, silo_round in rounds.items():
        tick = clock()
        bundle = bundles[name] = silo_round.share(rosters[name])
        silo_time[name]["share"] = clock() - tick
        tick = clock()
        coordinator.collect_shares(bundle)
        coord += clock() - tick
    tick = clock()
    requests = coordinator.mask_requests()
    coord += clock() - tick
    masked_inputs = {}
    for name, silo_round in rounds.items():
        tick = clock()
        masked = silo_round.mask(requests[name], inputs[name])
        silo_time[name]["mask"] = clock() - tick
        masked_inputs[name] = masked
        if name not in dropped:
            tick = clock()
            coordinator.collect_masked(masked)
            coord += clock() - tick
    tick = clock()
    unmask = coordinator.unmask_request()
    coord += clock() - tick
    for name in unmask.survivors:
        tick = clock()
        confirmation = confirmations[name] = rounds[name].confirm(unmask)
        silo_time[name]["confirm"] = clock() - tick
        tick = clock()
        coordinator.collect_confirmation(confirmation)
        coord += clock() - tick
    tick = clock()
    reveals = coordinator.reveal_requests()
    coord += clock() - tick
    responses = {}
    for name, reveal in reveals.items():
        tick = clock()
        response = rounds[name].unmask(reveal)
        silo_time[name]["unmask"] = clock() - tick
        responses[name] = response
        tick = clock()
        coordinator.collect_unmask(response)
        coord += clock() - tick
    tick = clock()
    result = coordinator.result()
    coord += clock() - tick
    secure = clock() - start

    survivors = [name for name in names if name not in dropped]
    expected = np.zeros(config.length, dtype=np.uint64)
    for name in survivors:
        expected += config.fixed_point.encode(inputs[name])
    if not np.array_equal(result.total, expected):
        raise SystemExit("the secure sum differs from the survivors' exact sum")

    tick = clock()
    plain_total = np.zeros(config.length)
    for name in survivors:
        plain_total += inputs[name]
    plain = clock() - tick

    # Bytes of a few silos' messages (encoding every one would dominate the run).
    for name in names[drop : drop + 5]:
        sent[name] = (
            size(ads[name])
            + size(bundles[name])
            + size(masked_inputs[name])
            + size(confirmations[name])
            + size(responses[name])
        )
        received[name] = (
            size(rosters[name])
            + size(requests[name])
            + size(unmask)
            + size(reveals[name])
        )
    per_stage_max = {
        stage: max(t.get(stage, 0.0) for t in silo_time.values()) for stage in STAGES
    }
    return {
        "plain": plain,
        "secure": secure,
        "coord": coord,
        "silo": max(sum(t.values()) for t in silo_time.values()),
        "silo_median": statistics.median(sum(t.values()) for t in silo_time.values()),
        "round": coord + sum(per_stage_max.values()),
        "per_stage_max": per_stage_max,
        "degree": coordinator.graph.degree,
        "threshold": coordinator.graph.threshold,
        "sent": statistics.median(sent.values()),
        "recv": statistics.median(received.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--silos", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--lengths", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--drop", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    codec.register(*MESSAGE_TYPES)
    rows = []
    header = (
        f"{'silos':>6} {'length':>7} {'k':>3} {'t':>3} {'plain s':>8} "
        f"{'secure s':>9} {'coord s':>8} {'silo s':>7} {'silo med':>8} {'round s':>8} "
        f"{'round/plain':>11} {'sent KiB':>9} {'recv KiB':>9}"
    )
    print(header)
    for n in args.silos:
        with tempfile.TemporaryDirectory() as tmp:
            silos = make_silos(Path(tmp), n)
            for length in args.lengths:
                rng = np.random.default_rng(n + length)
                inputs = {name: rng.uniform(-1, 1, size=length) for name in silos}
                config = SecAggConfig(length=length, bound=2.0**20)
                best: dict[str, Any] | None = None
                for repeat in range(args.repeats):
                    cell = run_once(silos, inputs, config, args.drop, repeat)
                    if best is None or cell["secure"] < best["secure"]:
                        best = cell
                assert best is not None
                best.update(silos=n, length=length)
                rows.append(best)
                print(
                    f"{n:>6} {length:>7} {best['degree']:>3} {best['threshold']:>3} "
                    f"{best['plain']:>8.4f} {best['secure']:>9.3f} "
                    f"{best['coord']:>8.3f} {best['silo']:>7.3f} "
                    f"{best['silo_median']:>8.3f} "
                    f"{best['round']:>8.3f} {best['round'] / best['plain']:>11.1f} "
                    f"{best['sent'] / 1024:>9.1f} {best['recv'] / 1024:>9.1f}",
                    flush=True,
                )
                del inputs
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
