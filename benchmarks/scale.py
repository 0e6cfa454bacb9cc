"""Scale: FedAvg rounds with 10, 100 and 1,000 silos on a few pool workers.

Every silo holds ``--rows`` synthetic rows (``make_classification``, one draw
split evenly; 20 % of each silo's rows are held out as its test split) and
trains ``sgd-logistic`` for one pass a round (``--kind``, ``--epochs``), so the
local work is small and what a round costs is fedsilo's dispatch, aggregation
and checkpointing. The silos live on ``--workers`` embedded pool workers
(``cluster.workers``).

Run from the repository root::

    .venv/bin/python benchmarks/scale.py [--silos 10 100 1000] [--workers 2]
        [--rounds 8] [--rows 100] [--features 10] [--fraction 1.0]
        [--kind sgd-logistic|logistic] [--epochs 1] [--json]

Each silo count runs in a fresh child process (so peak memory figures are its
own) and prints:

- seconds per steady round: the median over rounds 3..N of the time between
  consecutive round results reaching a ``run_state`` listener, and the median
  in-round seconds (``RoundResult.seconds``);
- start-up: cluster ready (workers forked and joined), ``open_silos`` (read,
  check and prepare every silo's rows), first round, all counted from the call
  of ``federated_training``;
- peak resident memory (``ru_maxrss``) of the coordinator process (flows,
  Dask client and scheduler), with its resident size just before the call, and
  of each pool worker; the Prefect API server subprocess is reported apart.

The goal (issue 7): 100 silos in at most 0.5 s a round and 1,000 silos in at
most 5 s on 2 cores, with the coordinator's memory growing with the model size
times the sampled silos, not with rows.
"""

from __future__ import annotations

import time

T0 = time.perf_counter()

import argparse  # noqa: E402
import contextlib  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

GOALS_S = {100: 0.5, 1000: 5.0}


def _rss_mb() -> float:
    """Resident size of this process now, in MB."""
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    """Peak resident size of the calling process so far (Linux: KB), in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_silos(
    n_silos: int, rows: int, features: int, root: Path
) -> list[dict[str, Any]]:
    """Write one Parquet file of ``rows`` rows per silo; return the spec entries."""
    import numpy as np
    import pandas as pd
    from sklearn.datasets import make_classification

    X, y = make_classification(
        n_samples=n_silos * rows,
        n_features=features,
        n_informative=max(2, features // 2),
        random_state=0,
    )
    root.mkdir(parents=True, exist_ok=True)
    columns = [f"x{j}" for j in range(features)]
    silos = []
    for i, part in enumerate(np.array_split(np.arange(len(y)), n_silos)):
        frame = pd.DataFrame(X[part], columns=columns)
        frame["label"] = y[part]
        path = root / f"silo-{i:04d}.parquet"
        frame.to_parquet(path, index=False)
        silos.append({"name": f"silo-{i:04d}", "train": str(path)})
    return silos


@contextlib.contextmanager
def instrumented(marks: dict[str, float], started: float) -> Iterator[None]:
    """Record when the cluster is ready and when ``open_silos`` returns."""
    from flows import training
    from tasks.averaging import averaged as family

    real_cluster, real_open = training.spec_cluster, family.open_silos

    @contextlib.contextmanager
    def timed_cluster(*args: Any, **kwargs: Any) -> Iterator[Any]:
        marks["flow_started_s"] = time.perf_counter() - started
        with real_cluster(*args, **kwargs) as cluster:
            marks["cluster_ready_s"] = time.perf_counter() - started
            yield cluster

    def timed_open(*args: Any, **kwargs: Any) -> Any:
        try:
            return real_open(*args, **kwargs)
        finally:
            marks["silos_opened_s"] = time.perf_counter() - started

    training.spec_cluster = timed_cluster  # type: ignore[assignment]
    family.open_silos = timed_open  # type: ignore[assignment]
    try:
        yield
    finally:
        training.spec_cluster = real_cluster  # type: ignore[assignment]
        family.open_silos = real_open  # type: ignore[assignment]


def _worker_peak_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _api_server_peak_mb() -> float:
    """Peak resident size of the Prefect API server subprocess, if there is one."""
    import psutil

    peak = 0.0
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "uvicorn" in " ".join(child.cmdline()):
                status = Path(f"/proc/{child.pid}/status").read_text()
                for line in status.splitlines():
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]) / 1024)
    return peak


def cpu_seconds() -> dict[str, float]:
    """CPU seconds used so far by this process, its Prefect API server and the
    rest of its descendants (the fork server and the pool workers)."""
    import psutil

    me = psutil.Process()
    out = {"coordinator": sum(me.cpu_times()[:2]), "api_server": 0.0, "workers": 0.0}
    for child in me.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            used = sum(child.cpu_times()[:2])
            api = "uvicorn" in " ".join(child.cmdline())
            out["api_server" if api else "workers"] += used
    return out


def run_one(args: argparse.Namespace, n_silos: int) -> dict[str, Any]:
    """Train one federation of ``n_silos`` silos; return its figures."""
    from fedsilo.prefect_env import apply_defaults, quiet_dask_logs

    apply_defaults(quiet=True)
    quiet_dask_logs()
    from fedsilo.spec import parse_spec
    from flows.training import federated_training
    from tasks import run_state

    workdir = Path(tempfile.mkdtemp(prefix=f"scale-{n_silos}-"))
    silos = write_silos(n_silos, args.rows, args.features, workdir / "data")
    spec = parse_spec(
        {
            "name": f"scale-{n_silos}",
            "task": "classification",
            "target": "label",
            "rounds": args.rounds,
            "model": {"kind": args.kind},
            "local": {"epochs": args.epochs},
            "strategy": {"fraction": args.fraction, "min_silos": 1},
            "silos": silos,
            "cluster": {"workers": args.workers, "timeout": 600},
            "checkpoints": str(workdir / "checkpoints"),
        }
    )
    arrivals: list[tuple[int, float, float, int]] = []
    workers: dict[str, float] = {}
    cpu: list[dict[str, float]] = []

    def listener(result: Any, state: Any) -> None:
        arrivals.append(
            (result.round, time.perf_counter(), result.seconds, len(result.selected))
        )
        cpu.append(cpu_seconds())
        if result.round == args.rounds:
            names = {a: w["name"] for a, w in _workers(state.cluster.client).items()}
            peaks = state.cluster.client.run(_worker_peak_mb)
            workers.update({str(names[a]): v for a, v in peaks.items()})

    rss_before = _rss_mb()
    marks: dict[str, float] = {}
    started = time.perf_counter()
    with run_state.listening(listener), instrumented(marks, started):
        federated_training(spec)
    total = time.perf_counter() - started
    gaps = [b[1] - a[1] for a, b in itertools.pairwise(arrivals)]
    steady = gaps[1:]  # rounds 3..N
    cpu_per_round = {
        kind: statistics.median(
            b[kind] - a[kind] for a, b in itertools.pairwise(cpu[1:])
        )
        for kind in cpu[0]
    }
    return {
        "silos": n_silos,
        "workers": args.workers,
        "rows_per_silo": args.rows,
        "features": args.features,
        "fraction": args.fraction,
        "kind": args.kind,
        "epochs": args.epochs,
        "sampled_per_round": statistics.median(a[3] for a in arrivals),
        "rounds": args.rounds,
        "round_s": statistics.median(steady),
        "round_s_all": [round(g, 3) for g in steady],
        "in_round_s": statistics.median(a[2] for a in arrivals[2:]),
        "cpu_per_round_s": cpu_per_round,
        "flow_started_s": marks.get("flow_started_s"),
        "cluster_ready_s": marks.get("cluster_ready_s"),
        "silos_opened_s": marks.get("silos_opened_s"),
        "first_round_s": arrivals[0][1] - started,
        "training_s": total,
        "coordinator_rss_before_mb": rss_before,
        "coordinator_peak_mb": _peak_rss_mb(),
        "api_server_peak_mb": _api_server_peak_mb(),
        "worker_peak_mb": workers,
        "load_1min": os.getloadavg()[0],
    }


def _workers(client: Any) -> dict[str, Any]:
    return dict(client.scheduler_info(n_workers=-1)["workers"])


def report(r: dict[str, Any]) -> str:
    """One line per silo count."""
    goal = GOALS_S.get(r["silos"])
    verdict = "" if goal is None else f" (goal <= {goal:g} s)"
    peaks = " ".join(f"{k} {v:.0f}" for k, v in sorted(r["worker_peak_mb"].items()))
    return (
        f"{r['silos']:>5} silos x {r['rows_per_silo']} rows on {r['workers']} "
        f"workers, {r['kind']}, "
        f"{r['sampled_per_round']:g} sampled: round {r['round_s']:.3f} s{verdict}"
        f" [in-round {r['in_round_s']:.3f} s; rounds {r['round_s_all']}; CPU s a "
        f"round: {' '.join(f'{k} {v:.2f}' for k, v in r['cpu_per_round_s'].items())}]; "
        f"start-up: flow {r['flow_started_s']:.1f} s, cluster "
        f"{r['cluster_ready_s']:.1f} s, silos opened "
        f"{r['silos_opened_s']:.1f} s, first round {r['first_round_s']:.1f} s; "
        f"peak RSS MB: coordinator {r['coordinator_peak_mb']:.0f} (before the run "
        f"{r['coordinator_rss_before_mb']:.0f}), API server "
        f"{r['api_server_peak_mb']:.0f}, workers {peaks}; load {r['load_1min']:.1f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--silos", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--rows", type=int, default=100)
    parser.add_argument("--features", type=int, default=10)
    parser.add_argument("--fraction", type=float, default=1.0)
    parser.add_argument(
        "--kind", default="sgd-logistic", choices=["sgd-logistic", "logistic"]
    )
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one is not None:
        print("RESULT " + json.dumps(run_one(args, args.one)), flush=True)
        return 0
    base = [a for a in (argv if argv is not None else sys.argv[1:])]
    for n_silos in args.silos:
        out = subprocess.run(
            [sys.executable, __file__, *base, "--one", str(n_silos)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        line = next(x for x in out.splitlines() if x.startswith("RESULT "))
        result = json.loads(line.removeprefix("RESULT "))
        print(report(result), flush=True)
        if args.json:
            print("JSON " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
