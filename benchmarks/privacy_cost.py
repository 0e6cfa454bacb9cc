"""Cost of secure aggregation and DP for FedAvg: seconds, bytes and accuracy.

Two federations of 4 iid silos, ``sgd-logistic`` (``alpha`` 0.01, one pass per
round), 20 rounds, every silo every round:

- breast cancer (569 rows, 30 features, 2 classes), as
  ``fedsilo datasets split breast_cancer --silos 4 --partition iid`` writes it;
- ``synthetic-classification`` with 50,000 rows (20 features, 3 classes).

Each runs these variants of ``privacy:`` on ONE embedded cluster (workers
``silo-0..3``, attached through ``cluster.address``) inside one process, so
the variants share start-up costs and the machine's load at about the same
time:

- plain FedAvg;
- secure aggregation (pairwise masking);
- DP with each noise multiplier of ``--noise`` (default 0.5 and 1.0; clip:
  the median L2 norm of the plain run's updates over rounds 2..N, as adaptive
  clipping's target quantile 0.5 would settle; delta 1e-5);
- DP with the last of them and secure aggregation;
- DP with a negligible noise multiplier (0.001): what clipping, the unweighted
  mean of DP-FedAvg and the frozen SGD counter ``t_`` cost without the noise.

Per variant it prints the final global test accuracy and log loss, epsilon
spent at delta 1e-5, the median wall seconds of rounds 2..N as the parent flow
sees them (time between consecutive round results at a ``run_state``
listener; round 1 also opens silos and is left out), those seconds minus
plain's and over plain's (same run), and the median bytes a silo sends per
round. It also prints the median CPU seconds per round of every process
involved (this one with the Dask scheduler, the Prefect API server, the silo
workers), which moves much less than wall time when other jobs share the
machine. ``--repeats K`` runs the variant list K times, cycling through it, and
pools the steady rounds of all repeats.

Run from the repository root::

    .venv/bin/python benchmarks/privacy_cost.py [--rounds 20] [--repeats 1]
        [--synthetic-rows 50000] [--noise 0.5 1.0] [--json OUT]
"""

from __future__ import annotations

import time

T0 = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from fedsilo.prefect_env import apply_defaults, quiet_dask_logs  # noqa: E402

apply_defaults(quiet=True)
# On a busy shared machine the API subprocess can take longer than the default 20 s.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")

import numpy as np  # noqa: E402
import psutil  # noqa: E402

from fedsilo.spec import FederationSpec, load_spec  # noqa: E402
from tasks import run_state  # noqa: E402

SILOS = 4
DELTA = 1e-5


def variants(noise: list[float]) -> list[tuple[str, bool, float | None]]:
    """Return (label, secure aggregation, DP noise multiplier or None) to run."""
    out: list[tuple[str, bool, float | None]] = [
        ("plain", False, None),
        ("secagg", True, None),
        ("clip only (dp z=0.001)", False, 0.001),
    ]
    out += [(f"dp z={z:g}", False, z) for z in noise]
    out.append((f"dp z={noise[-1]:g} + secagg", True, noise[-1]))
    return out


def write_data(root: Path, synthetic_rows: int) -> dict[str, Path]:
    """Write both federations' silo files; return their spec paths."""
    from datasets.writer import write_federation

    return {
        "breast_cancer": write_federation(
            "breast_cancer", n_silos=SILOS, partition="iid", out=root / "bc"
        ),
        "synthetic": write_federation(
            "synthetic-classification",
            n_silos=SILOS,
            partition="iid",
            out=root / "synthetic",
            n_samples=synthetic_rows,
        ),
    }


def make_spec(
    path: Path,
    *,
    rounds: int,
    store: Path,
    address: str,
    secure: bool,
    noise: float | None,
    clip: float | None,
) -> FederationSpec:
    """Return the written spec with the variant's ``privacy:`` and the cluster."""
    base = load_spec(path).model_dump()
    privacy: dict[str, Any] = {"secure_aggregation": secure}
    if noise is not None:
        privacy["dp"] = {"clip": clip, "noise_multiplier": noise, "delta": DELTA}
    return FederationSpec.model_validate(
        {
            **base,
            "rounds": rounds,
            "model": {"kind": "sgd-logistic", "params": {"alpha": 0.01}},
            "checkpoints": str(store),
            "cluster": {"address": address},
            "privacy": privacy,
        }
    )


def cpu_seconds() -> float:
    """CPU seconds (user + system) used so far by this process and its children.

    The children are the Prefect API server and the silo workers (the scheduler
    runs in this process); none of them exits while a run goes on.
    """
    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for child in me.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.Error:
            continue
    return total


def _norm(update: dict[str, np.ndarray], start: dict[str, np.ndarray]) -> float:
    return float(
        np.sqrt(sum(np.sum((update[k] - start[k]) ** 2) for k in update if k != "t_"))
    )


def run_variant(spec: FederationSpec) -> dict[str, Any]:
    """Train once; return metrics, per-round seconds, bytes and update norms."""
    from flows.training import federated_training

    stamps: list[float] = []
    cpu: list[float] = []
    in_round: list[float] = []
    bytes_up: list[int] = []
    norms: list[float] = []
    previous: list[dict[str, np.ndarray]] = []

    def listener(result: Any, state: Any) -> None:
        stamps.append(time.perf_counter())
        cpu.append(cpu_seconds())
        in_round.append(result.seconds)
        if result.round > 1:
            bytes_up.extend(u.bytes_up for u in state.last_updates)
            if previous and state.last_updates[0].params:
                norms.extend(_norm(u.params, previous[-1]) for u in state.last_updates)
        previous.append({k: np.array(v) for k, v in state.family.params.items()})

    started = time.perf_counter()
    with run_state.listening(listener):
        summary = federated_training(spec)
    rounds = np.diff(np.array(stamps))  # rounds 2..N
    return {
        "accuracy": summary["final_metrics"]["accuracy"],
        "log_loss": summary["final_metrics"]["log_loss"],
        "epsilon": summary["epsilon"],
        "first_round_s": stamps[0] - started,
        "round_s": rounds.tolist(),
        "cpu_s": np.diff(np.array(cpu)).tolist(),
        "in_round_s": in_round[1:],
        "bytes_up": bytes_up,
        "norms": norms,
    }


def table(name: str, results: dict[str, list[dict[str, Any]]], clip: float) -> str:
    """Return one data set's results as a Markdown table."""
    plain = statistics.median(s for r in results["plain"] for s in r["round_s"])
    plain_cpu = statistics.median(s for r in results["plain"] for s in r["cpu_s"])
    lines = [
        f"{name}: clip {clip:.4g}, steady rounds pooled over "
        f"{len(results['plain'])} repeat(s)",
        "",
        "| variant | test accuracy | test log loss | epsilon (delta 1e-5) "
        "| s/round (rounds 2..N) | in-round s | added s/round | ratio "
        "| CPU s/round | CPU ratio | bytes up/silo/round |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, runs in results.items():
        seconds = statistics.median(s for r in runs for s in r["round_s"])
        in_round = statistics.median(s for r in runs for s in r["in_round_s"])
        cpu = statistics.median(s for r in runs for s in r["cpu_s"])
        accuracy = statistics.median(r["accuracy"] for r in runs)
        log_loss = statistics.median(r["log_loss"] for r in runs)
        eps = runs[0]["epsilon"]
        sent = statistics.median(b for r in runs for b in r["bytes_up"])
        lines.append(
            f"| {label} | {accuracy:.4f} | {log_loss:.4f} | "
            f"{'-' if eps is None else f'{eps:.2f}'} | {seconds:.3f} | "
            f"{in_round:.3f} | {seconds - plain:+.3f} | {seconds / plain:.2f} | "
            f"{cpu:.3f} | {cpu / plain_cpu:.2f} | {sent:,.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--synthetic-rows", type=int, default=50_000)
    parser.add_argument("--noise", type=float, nargs="+", default=[0.5, 1.0])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from fedsilo.cluster import embedded_cluster

    quiet_dask_logs()
    chosen = variants(args.noise)
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        specs = write_data(Path(tmp), args.synthetic_rows)
        cluster = embedded_cluster([f"silo-{i}" for i in range(SILOS)])
        address = str(cluster.scheduler_address)
        print(f"set-up (imports, data, cluster): {time.perf_counter() - T0:.1f} s")
        try:
            for name, path in specs.items():
                results: dict[str, list[dict[str, Any]]] = {v[0]: [] for v in chosen}
                clip: float | None = None
                for _ in range(args.repeats):
                    for label, secure, noise in chosen:
                        spec = make_spec(
                            path,
                            rounds=args.rounds,
                            store=Path(tmp) / "store",
                            address=address,
                            secure=secure,
                            noise=noise,
                            clip=clip,
                        )
                        out = run_variant(spec)
                        results[label].append(out)
                        if label == "plain" and clip is None:
                            clip = float(np.median(out["norms"]))
                        print(
                            f"  {name} {label}: acc {out['accuracy']:.4f} "
                            f"round {statistics.median(out['round_s']):.3f} s",
                            flush=True,
                        )
                assert clip is not None
                print()
                print(table(name, results, clip))
                print()
                report[name] = {"clip": clip, "results": results}
        finally:
            cluster.close()
    print(f"total: {time.perf_counter() - T0:.1f} s")
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
