"""Start-up of the embedded silo cluster, without Prefect.

Times ``fedsilo.cluster.silo_cluster`` (scheduler + one Nanny and worker process
per silo, until every silo's worker has joined) and then a first call on every
worker of a function that imports what ``fedsilo.tasks.silo`` imports (pandas,
pyarrow, scikit-learn): what ``open_silos`` pays before it reads a row.

Run from the repository root::

    .venv/bin/python benchmarks/cluster_startup.py --silos 4 10 32
        [--method spawn|forkserver|fork] [--preload] [--idle 10] [--no-profile]

``--method`` sets dask's ``distributed.worker.multiprocessing-method`` (fedsilo
uses dask's default, spawn). ``--preload`` (forkserver only) adds
``fedsilo.tasks.silo`` to the fork server's preloaded modules, so each worker
starts with scikit-learn and pandas already imported. ``--idle S`` then leaves
the workers idle for S seconds and reports the CPU each used per second (what
idle silos take from the coordinator on a small machine); ``--no-profile``
turns off Dask's per-worker statistical profiler for comparison.
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
    import fedsilo.tasks.silo  # noqa: F401  (what every silo task needs)

    return "ok"


def _worker_cpu(client: Any) -> float:
    """CPU seconds (user + system) used so far by all worker processes."""

    def own() -> float:
        import psutil

        return float(sum(psutil.Process().cpu_times()[:2]))

    return float(sum(client.run(own).values()))


def start_once(n_silos: int, idle: float) -> dict[str, float]:
    from fedsilo.cluster import silo_cluster

    silos = [f"silo-{i:02d}" for i in range(n_silos)]
    started = time.perf_counter()
    with silo_cluster(silos, None, 600.0) as cluster:
        joined = time.perf_counter()
        futures = [
            cluster.client.submit(
                _import_silo_code,
                key=f"import-{silo}",
                workers=[address],
                allow_other_workers=False,
                pure=False,
            )
            for silo, address in cluster.workers.items()
        ]
        cluster.client.gather(futures)
        imported = time.perf_counter()
        idle_cpu = float("nan")
        if idle > 0:
            before = _worker_cpu(cluster.client)
            time.sleep(idle)
            idle_cpu = (_worker_cpu(cluster.client) - before) / idle / n_silos
        closing = time.perf_counter()
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
        "--method", default="spawn", choices=["spawn", "forkserver", "fork"]
    )
    parser.add_argument("--preload", action="store_true")
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
    if args.preload:
        if args.method != "forkserver":
            parser.error("--preload needs --method forkserver")
        import multiprocessing

        import distributed.utils

        with dask.config.set(
            {"distributed.worker.multiprocessing-method": "forkserver"}
        ):
            distributed.utils.get_mp_context()  # dask sets its own preload list once
        multiprocessing.get_context("forkserver").set_forkserver_preload(
            ["distributed", "fedsilo.tasks.silo"]
        )
    config: dict[str, Any] = {"distributed.worker.multiprocessing-method": args.method}
    if args.no_profile:
        config["distributed.worker.profile.enabled"] = False
    with dask.config.set(config):
        for n_silos in args.silos:
            runs = [start_once(n_silos, args.idle) for _ in range(args.repeat)]
            medians = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            print(
                f"{n_silos:>3} silos  {args.method}{'+preload' if args.preload else ''}"
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
                        "preload": args.preload,
                        "profile": not args.no_profile,
                        "runs": runs,
                    }
                ),
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
