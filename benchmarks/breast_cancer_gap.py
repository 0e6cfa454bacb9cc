"""Breast cancer over 4 silos: FedAvg vs a LogisticRegression on the pooled rows.

Runs the iid and the dirichlet(alpha) label-skew splits for 20 rounds on the
embedded cluster and prints each run's final global test accuracy, the pooled
model's accuracy on the same test rows, and the gap.

    .venv/bin/python benchmarks/breast_cancer_gap.py [--rounds 20] [--alpha 0.3]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from fedsilo.prefect_env import apply_defaults, quiet_dask_logs

apply_defaults()


def pooled_accuracy(data_dir: Path) -> float:
    import pandas as pd
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def load(split: str) -> pd.DataFrame:
        files = sorted(data_dir.glob(f"silo-*/{split}.parquet"))
        return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)

    train, test = load("train"), load("test")
    features = [c for c in train.columns if c != "label"]
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    model.fit(train[features], train["label"])
    return float(model.score(test[features], test["label"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--alpha", type=float, default=0.3)
    parser.add_argument("--silos", type=int, default=4)
    args = parser.parse_args()

    from datasets.writer import write_federation
    from fedsilo.spec import FederationSpec, load_spec
    from flows.training import federated_training

    quiet_dask_logs()
    print(f"{'split':<16} {'federated':>9} {'pooled LR':>9} {'gap':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        for partition in ("iid", "dirichlet"):
            out = Path(tmp) / partition
            spec_path = write_federation(
                "breast_cancer",
                n_silos=args.silos,
                partition=partition,
                out=out,
                alpha=args.alpha,
                rounds=args.rounds,
            )
            spec = load_spec(spec_path)
            spec = FederationSpec.model_validate(
                {**spec.model_dump(), "checkpoints": str(Path(tmp) / "store")}
            )
            federated = federated_training(spec)["final_metrics"]["accuracy"]
            pooled = pooled_accuracy(out)
            label = partition if partition == "iid" else f"dirichlet({args.alpha:g})"
            gap = federated - pooled
            print(f"{label:<16} {federated:>9.4f} {pooled:>9.4f} {gap:>+7.4f}")


if __name__ == "__main__":
    main()
