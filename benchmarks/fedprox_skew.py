"""FedProx on label-skewed silos: accuracy and client drift as ``proximal_mu`` grows.

Breast cancer and ``synthetic-classification`` (10,000 rows, 3 classes) are
dealt to 4 silos with Dirichlet(alpha) label skew (``alpha`` 0.3 by default);
``sgd-logistic`` (``alpha`` 0.01) trains ``--epochs`` passes of mini-batches of
``--batch-size`` rows per round, for ``--rounds`` rounds, once per ``mu``. All
runs share one embedded cluster (workers ``silo-0..3``) in this process.

Per run it prints the final global test accuracy and log loss and the client
drift: the median over rounds 2..N and silos of the L2 distance between a
silo's model and the global model it started the round from.

Run from the repository root::

    .venv/bin/python benchmarks/fedprox_skew.py [--mu 0 0.01 0.1 1]
        [--rounds 20] [--epochs 5] [--batch-size 16] [--alpha 0.3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

from fedsilo.prefect_env import apply_defaults, quiet_dask_logs

apply_defaults(quiet=True)
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")

import numpy as np  # noqa: E402

from fedsilo.spec import FederationSpec, load_spec  # noqa: E402
from tasks import run_state  # noqa: E402

SILOS = 4


def run(spec: FederationSpec) -> dict[str, Any]:
    """Train once; return the final metrics and the median client drift."""
    from flows.training import federated_training

    drift: list[float] = []
    previous: list[dict[str, np.ndarray]] = []

    def listener(result: Any, state: Any) -> None:
        if previous and result.round > 1:
            start = previous[-1]
            for update in state.last_updates:
                squares = [
                    np.sum((update.params[k] - start[k]) ** 2)
                    for k in update.params
                    if k != "t_"
                ]
                drift.append(float(np.sqrt(sum(squares))))
        previous.append({k: np.array(v) for k, v in state.params.items()})

    with run_state.listening(listener):
        summary = federated_training(spec)
    metrics = summary["final_metrics"]
    return {
        "accuracy": metrics["accuracy"],
        "log_loss": metrics["log_loss"],
        "drift": statistics.median(drift),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mu", type=float, nargs="+", default=[0.0, 0.01, 0.1, 1.0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--alpha", type=float, default=0.3)
    args = parser.parse_args()

    from datasets.writer import write_federation
    from fedsilo.cluster import embedded_cluster

    quiet_dask_logs()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = {
            name: write_federation(
                name,
                n_silos=SILOS,
                partition="dirichlet",
                alpha=args.alpha,
                out=root / name,
                n_samples=rows,
            )
            for name, rows in (
                ("breast_cancer", None),
                ("synthetic-classification", 10_000),
            )
        }
        cluster = embedded_cluster([f"silo-{i}" for i in range(SILOS)])
        try:
            for name, path in paths.items():
                print(f"\n{name}, dirichlet({args.alpha:g}), {SILOS} silos")
                print("| mu | test accuracy | test log loss | client drift |")
                print("| ---: | ---: | ---: | ---: |")
                base = load_spec(path).model_dump()
                for mu in args.mu:
                    spec = FederationSpec.model_validate(
                        {
                            **base,
                            "rounds": args.rounds,
                            "model": {
                                "kind": "sgd-logistic",
                                "params": {"alpha": 0.01},
                            },
                            "local": {
                                "epochs": args.epochs,
                                "batch_size": args.batch_size,
                                "proximal_mu": mu,
                            },
                            "checkpoints": str(root / "store"),
                            "cluster": {"address": str(cluster.scheduler_address)},
                        }
                    )
                    out = run(spec)
                    print(
                        f"| {mu:g} | {out['accuracy']:.4f} | {out['log_loss']:.4f} "
                        f"| {out['drift']:.3f} |",
                        flush=True,
                    )
        finally:
            cluster.close()


if __name__ == "__main__":
    main()
