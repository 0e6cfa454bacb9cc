"""Start-up of the embedded silo cluster, without Prefect.

Times ``fedsilo.cluster.embedded_cluster`` (scheduler + one Nanny and worker
process per silo, or ``--workers N`` pool workers, until every worker has
joined) and then a first call on every worker of a function that imports what
``tasks.silo.data`` imports (pandas, pyarrow, scikit-learn): what
``open_silos`` pays before it reads a row.

Run from the repository root::

    .venv/bin/python benchmarks/cluster_startup.py --silos 4 10 32
        [--method forkserver|spawn] [--workers N] [--idle 10] [--no-profile]

``--method forkserver`` is what fedsilo does: workers are forked from a fork
server that preloaded Dask and the silo code (``fedsilo.cluster.
start_forkserver``; the first run of a process includes starting it).
``--method spawn`` is Dask's default, for comparison: every worker starts a
fresh interpreter and imports everything itself. ``--idle S`` then
leaves the workers idle for S seconds and reports the CPU each used per second
(what idle silos take from the coordinator on a small machine);
``--no-profile`` turns off Dask's per-worker statistical profiler for
comparison.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from typing import Any

import dask


def _import_silo_code() -> str:
    import tasks.silo.data  # noqa: F401  (what every silo task needs)

    return "ok"


def _worker_cpu(client: Any) -> float:
    """CPU seconds (user + system) used so far by all worker processes."""

    def own() -> float:
        import psutil

        return float(sum(psutil.Process().cpu_times()[:2]))

    return float(sum(client.run(own).values()))


def start_once(
    n_silos: int, idle: float, method: str, n_workers: int | None
) -> dict[str, float]:
    from distributed import Client

    from fedsilo.cluster import assign_silos, embedded_cluster, wait_for_silos

    silos = [f"silo-{i:02d}" for i in range(n_silos)]
    hosts = {} if n_workers is None else assign_silos(silos, n_workers)
    started = time.perf_counter()
    cluster = embedded_cluster(silos, None, n_workers, start_method=method)
    client = Client(cluster, timeout=600)
    workers = wait_for_silos(client, silos, 600.0, hosts)
    joined = time.perf_counter()
    futures = [
        client.submit(
            _import_silo_code,
            key=f"import-{address}",
            workers=[address],
            allow_other_workers=False,
            pure=False,
        )
        for address in set(workers.values())
    ]
    client.gather(futures)
    imported = time.perf_counter()
    idle_cpu = float("nan")
    if idle > 0:
        before = _worker_cpu(client)
        time.sleep(idle)
        idle_cpu = (_worker_cpu(client) - before) / idle / len(set(workers.values()))
    closing = time.perf_counter()
    client.close()
    cluster.close()
    closed = time.perf_counter()
    return {
        "workers_joined_s": joined - started,
        "first_call_s": imported - joined,
        "ready_s": imported - started,
        "close_s": closed - closing,
        "idle_cpu_per_worker": idle_cpu,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--silos", type=int, nargs="+", default=[4, 10])
    parser.add_argument(
        "--method", default="forkserver", choices=["forkserver", "spawn"]
    )
    parser.add_argument("--workers", type=int, help="pool workers (cluster.workers)")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument(
        "--idle",
        type=float,
        default=0.0,
        help="then leave the workers idle this long and report their CPU use",
    )
    parser.add_argument(
        "--no-profile",
        action="store_true",
        help="turn off the Dask workers' statistical profiler "
        "(distributed.worker.profile.enabled)",
    )
    args = parser.parse_args(argv)
    logging.getLogger("distributed").setLevel(logging.ERROR)
    config: dict[str, Any] = {}
    if args.no_profile:
        config["distributed.worker.profile.enabled"] = False
    with dask.config.set(config):
        for n_silos in args.silos:
            runs = [
                start_once(n_silos, args.idle, args.method, args.workers)
                for _ in range(args.repeat)
            ]
            medians = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            print(
                f"{n_silos:>3} silos"
                + (f" on {args.workers} workers" if args.workers else "")
                + f"  {args.method}"
                f"  workers joined {medians['workers_joined_s']:6.2f} s"
                f"  first call {medians['first_call_s']:6.2f} s"
                f"  ready {medians['ready_s']:6.2f} s"
                f"  close {medians['close_s']:5.2f} s"
                + (
                    f"  idle CPU {1000 * medians['idle_cpu_per_worker']:.1f} ms/s"
                    " per worker"
                    if args.idle
                    else ""
                )
                + f"  (median of {args.repeat})",
                flush=True,
            )
            print(
                "JSON "
                + json.dumps(
                    {
                        "silos": n_silos,
                        "method": args.method,
                        "workers": args.workers,
                        "profile": not args.no_profile,
                        "runs": runs,
                    }
                ),
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
