"""What update compression saves in bytes and costs in accuracy.

Trains the same federation with ``compression.kind`` none, float16, int8 and
int8 with error feedback, on breast cancer and on the synthetic classification
set (each dealt iid to 4 silos, 20 rounds, one embedded cluster for all runs),
and prints one markdown table: final global test accuracy and log loss; drift,
how far the final model lies from the uncompressed run's (L2 distance of the
parameters over the uncompressed model's norm; SGD's step counter left out);
bytes a silo sends up per round (mean over silos and rounds, read back from the
checkpoints' metrics.parquet) and its ratio to no compression.

    .venv/bin/python benchmarks/compression_cost.py [--rounds 20] [--mlp]

``--mlp`` adds an MLP (hidden layer of 64) on the synthetic set: a model big
enough that int8's per-chunk ranges and the raw one-element tensors no longer
weigh in the ratio.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from fedsilo.prefect_env import apply_defaults, quiet_dask_logs

apply_defaults()

MODES: dict[str, dict[str, Any]] = {
    "none": {"kind": "none"},
    "float16": {"kind": "float16"},
    "int8": {"kind": "int8"},
    "int8+ef": {"kind": "int8", "error_feedback": True},
}


def run_metrics(store: Path) -> dict[str, float]:
    """Read a run's last-round global test metrics and mean bytes per silo-round."""
    import duckdb

    relation = duckdb.sql(
        f"""
        SELECT round, silo, split, metric, value
        FROM read_parquet('{store}/**/metrics.parquet', hive_partitioning = true)
        """
    )
    assert relation is not None
    rows = relation.df()
    rows["round"] = rows["round"].astype(int)
    last = rows[(rows["round"] == rows["round"].max()) & (rows.silo == "global")]
    test = last[last.split == "test"].set_index("metric").value
    traffic = rows[rows.silo != "global"]
    return {
        "accuracy": float(test["accuracy"]),
        "log_loss": float(test["log_loss"]),
        "bytes_up": float(traffic[traffic.metric == "bytes_up"].value.mean()),
        "bytes_down": float(traffic[traffic.metric == "bytes_down"].value.mean()),
    }


def final_params(store: Path) -> np.ndarray:
    """Return the run's last model parameters as one vector (no state counters)."""
    from tasks.store.checkpoints import CheckpointStore

    (federation,) = [p.name.split("=", 1)[1] for p in store.glob("federation=*")]
    (run,) = [p.name.split("=", 1)[1] for p in store.glob("federation=*/run=*")]
    checkpoints = CheckpointStore(str(store), federation, run)
    params = checkpoints.read_params(checkpoints.latest_complete_round() or 0)
    names = sorted(k for k in params if k != "t_" and not k.startswith("server/"))
    return np.concatenate([np.ravel(params[k]) for k in names])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--mlp", action="store_true")
    args = parser.parse_args()

    from datasets.writer import write_federation
    from fedsilo.cluster import embedded_cluster
    from fedsilo.spec import FederationSpec, load_spec
    from flows.training import federated_training

    quiet_dask_logs()
    silos = [f"silo-{i}" for i in range(4)]
    cases: list[tuple[str, str, dict[str, Any]]] = [
        ("breast_cancer", "sgd-logistic", {}),
        ("synthetic-classification", "sgd-logistic", {}),
    ]
    if args.mlp:
        mlp = {"hidden_layer_sizes": [64], "random_state": 0}
        cases.append(("synthetic-classification", "mlp-classifier", mlp))
    header = (
        "| data set | model | compression | accuracy | log loss | drift | "
        "bytes up / silo / round | vs none |"
    )
    lines = [header, "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    cluster = embedded_cluster(silos)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for number, (dataset, kind, params) in enumerate(cases):
                out = Path(tmp) / f"data-{number}"
                spec_path = write_federation(
                    dataset,
                    n_silos=4,
                    partition="iid",
                    out=out,
                    rounds=args.rounds,
                    model_kind=kind,
                )
                base = load_spec(spec_path).model_dump()
                if params:
                    base["model"]["params"] = {**base["model"]["params"], **params}
                plain = None
                reference = None
                for mode, compression in MODES.items():
                    store = Path(tmp) / f"store-{number}-{mode}"
                    spec = FederationSpec.model_validate(
                        {
                            **base,
                            "checkpoints": str(store),
                            "cluster": {"address": str(cluster.scheduler_address)},
                            "compression": compression,
                        }
                    )
                    federated_training(spec)
                    got = run_metrics(store)
                    plain = plain or got["bytes_up"]
                    model = final_params(store)
                    reference = model if reference is None else reference
                    drift = np.linalg.norm(model - reference) / np.linalg.norm(
                        reference
                    )
                    lines.append(
                        f"| {dataset} | {kind} | {mode} | {got['accuracy']:.4f} | "
                        f"{got['log_loss']:.4f} | {drift:.1e} | "
                        f"{got['bytes_up']:,.0f} | "
                        f"{plain / got['bytes_up']:.2f}x |"
                    )
                    print(lines[-1], flush=True)
    finally:
        cluster.close()
    print()
    print("\n".join(lines))


if __name__ == "__main__":
    main()
