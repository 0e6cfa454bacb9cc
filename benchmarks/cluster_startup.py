"""Start-up of the embedded silo cluster, without Prefect.

Times ``fedsilo.cluster.silo_cluster`` (scheduler + one Nanny and worker process
per silo, until every silo's worker has joined) and then a first call on every
worker of a function that imports what ``fedsilo.tasks.silo`` imports (pandas,
pyarrow, scikit-learn): what ``open_silos`` pays before it reads a row.

Run from the repository root::

    .venv/bin/python benchmarks/cluster_startup.py --silos 4 10 32
        [--method spawn|forkserver|fork] [--preload]

``--method`` sets dask's ``distributed.worker.multiprocessing-method`` (fedsilo
uses dask's default, spawn). ``--preload`` (forkserver only) adds
``fedsilo.tasks.silo`` to the fork server's preloaded modules, so each worker
starts with scikit-learn and pandas already imported.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time

import dask


def _import_silo_code() -> str:
    import fedsilo.tasks.silo  # noqa: F401  (what every silo task needs)

    return "ok"


def start_once(n_silos: int) -> dict[str, float]:
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
    closed = time.perf_counter()
    return {
        "workers_joined_s": joined - started,
        "first_call_s": imported - joined,
        "ready_s": imported - started,
        "close_s": closed - imported,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--silos", type=int, nargs="+", default=[4, 10])
    parser.add_argument("--method", default="spawn", choices=["spawn", "forkserver", "fork"])
    parser.add_argument("--preload", action="store_true")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args(argv)
    logging.getLogger("distributed").setLevel(logging.ERROR)
    if args.preload:
        if args.method != "forkserver":
            parser.error("--preload needs --method forkserver")
        import multiprocessing

        import distributed.utils

        with dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"}):
            distributed.utils.get_mp_context()  # dask sets its own preload list once
        multiprocessing.get_context("forkserver").set_forkserver_preload(
            ["distributed", "fedsilo.tasks.silo"]
        )
    with dask.config.set({"distributed.worker.multiprocessing-method": args.method}):
        for n_silos in args.silos:
            runs = [start_once(n_silos) for _ in range(args.repeat)]
            medians = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            print(
                f"{n_silos:>3} silos  {args.method}{'+preload' if args.preload else ''}"
                f"  workers joined {medians['workers_joined_s']:6.2f} s"
                f"  first call {medians['first_call_s']:6.2f} s"
                f"  ready {medians['ready_s']:6.2f} s  close {medians['close_s']:5.2f} s"
                f"  (median of {args.repeat})",
                flush=True,
            )
            print("JSON " + json.dumps({"silos": n_silos, "method": args.method,
                                        "preload": args.preload, "runs": runs}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
