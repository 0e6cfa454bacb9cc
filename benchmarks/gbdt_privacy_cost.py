"""Cost of secure aggregation and DP for federated boosting (model kind xgboost).

Two federations of 4 iid silos, ``binary:logistic``, ``max_depth`` 4, ``eta``
0.3, ``max_bin`` 32, ``--trees`` trees in rounds of ``--trees-per-round``:

- breast cancer (569 rows, 30 features), as ``fedsilo datasets split
  breast_cancer --silos 4 --partition iid`` writes it (80 % train per silo);
- a synthetic set: ``make_classification(n_samples=--synthetic-rows,
  n_features=20, n_informative=10, random_state=0)``, the last 20 % the test
  rows, train and test dealt in contiguous quarters to the silos.

Variants, all on ONE embedded cluster (workers ``silo-0..3``, attached through
``cluster.address``) inside one process, cycled ``--repeats`` times (each
cycle starting one variant later) so they share start-up costs and the
machine's load:

- plain;
- secure aggregation (every histogram exchange masked, the sum unmasked);
- DP with noise multiplier ``z`` = 1 and 4 (clip 1: binary logistic's own
  gradient bound, so clipping changes nothing and only the noise costs
  accuracy; delta 1e-5; the intercept from noised label sums);
- DP z = 1 with secure aggregation.

Per variant (median over repeats): global test AUC and accuracy (exact pooled
metrics from the silos' sums), epsilon at delta 1e-5 and the number of
Gaussian releases it composes, seconds per tree (``grow_seconds`` of the run,
which excludes scoring and checkpointing, over the trees grown) and its ratio
to plain, and bytes per tree (all exchanges of the rounds, growing and
scoring, both directions, all silos; setup and sketches excluded). A small
plain run first loads the numba kernels in every worker (not timed).

Run from the repository root::

    .venv/bin/python benchmarks/gbdt_privacy_cost.py [--trees 20]
        [--trees-per-round 5] [--repeats 2] [--synthetic-rows 100000]
        [--json OUT]

``--repeats 0`` prints only the in-process cost of masking one level.
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

apply_defaults(quiet=True)  # before Prefect starts its ephemeral API
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.datasets import make_classification  # noqa: E402

from fedsilo.spec import FederationSpec, parse_spec  # noqa: E402

SILOS = 4
DELTA = 1e-5
#: (label, secure aggregation, DP noise multiplier or None)
VARIANTS: list[tuple[str, bool, float | None]] = [
    ("plain", False, None),
    ("secagg", True, None),
    ("dp z=1", False, 1.0),
    ("dp z=4", False, 4.0),
    ("dp z=1 + secagg", True, 1.0),
]


def write_synthetic(root: Path, rows: int) -> list[dict[str, str]]:
    """Write the synthetic set's silo files; return the spec's silo entries."""
    X, y = make_classification(
        n_samples=rows, n_features=20, n_informative=10, random_state=0
    )
    frame = pd.DataFrame(X.astype(np.float32), columns=[f"x{j}" for j in range(20)])
    frame["label"] = y.astype(np.int64)
    n_test = rows // 5
    train, test = frame.iloc[:-n_test], frame.iloc[-n_test:]
    from datasets.writer import write_slices

    return write_slices(train, test, SILOS, root)


def write_breast_cancer(root: Path) -> list[dict[str, Any]]:
    """Write breast cancer over 4 iid silos; return the spec's silo entries."""
    from datasets.writer import write_federation
    from fedsilo.spec import load_spec

    path = write_federation("breast_cancer", n_silos=SILOS, partition="iid", out=root)
    return [s.model_dump(mode="json") for s in load_spec(path).silos]


def make_spec(
    silos: list[dict[str, Any]],
    *,
    trees: int,
    trees_per_round: int,
    store: Path,
    address: str,
    secure: bool,
    noise: float | None,
) -> FederationSpec:
    """Return a boosting spec with the variant's ``privacy:``."""
    privacy: dict[str, Any] = {"secure_aggregation": secure}
    if noise is not None:
        privacy["dp"] = {"clip": 1.0, "noise_multiplier": noise, "delta": DELTA}
    return parse_spec(
        {
            "name": "gbdt-privacy-cost",
            "task": "classification",
            "target": "label",
            "rounds": trees // trees_per_round,
            "model": {
                "kind": "xgboost",
                "trees_per_round": trees_per_round,
                "params": {
                    "objective": "binary:logistic",
                    "max_depth": 4,
                    "eta": 0.3,
                    "max_bin": 32,
                },
            },
            "silos": silos,
            "cluster": {"address": address},
            "checkpoints": str(store),
            "privacy": privacy,
        }
    )


def run_variant(spec: FederationSpec) -> dict[str, Any]:
    """Train once; return metrics, epsilon, seconds and bytes per tree."""
    from flows.training import federated_training
    from tasks import run_state

    sent: list[int] = []

    def listener(result: Any, state: Any) -> None:
        sent.append(result.bytes_up + result.bytes_down)

    started = time.perf_counter()
    with run_state.listening(listener):
        summary = federated_training(spec)
    wall = time.perf_counter() - started
    trees = summary["trees"]
    return {
        "auc": summary["final_metrics"]["roc_auc"],
        "accuracy": summary["final_metrics"]["accuracy"],
        "epsilon": summary["epsilon"],
        "releases": summary["dp_releases"],
        "s_per_tree": summary["grow_seconds"] / trees,
        "bytes_per_tree": sum(sent) / trees,
        "wall_s": wall,
    }


def table(name: str, results: dict[str, list[dict[str, Any]]]) -> str:
    """Return one data set's results as a Markdown table."""
    plain = statistics.median(r["s_per_tree"] for r in results["plain"])
    lines = [
        f"{name}: median of {len(results['plain'])} run(s) per variant",
        "",
        "| variant | test AUC | test accuracy | epsilon (releases) | s/tree "
        "| vs plain | bytes/tree |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, runs in results.items():
        seconds = statistics.median(r["s_per_tree"] for r in runs)
        eps = runs[0]["epsilon"]
        spent = "-" if eps is None else f"{eps:.1f} ({runs[0]['releases']})"
        lines.append(
            f"| {label} | {statistics.median(r['auc'] for r in runs):.4f} "
            f"| {statistics.median(r['accuracy'] for r in runs):.4f} | {spent} "
            f"| {seconds:.3f} | {seconds / plain:.2f} "
            f"| {statistics.median(r['bytes_per_tree'] for r in runs):,.0f} |"
        )
    return "\n".join(lines)


def masking_cost(n_silos: int = SILOS, repeat: int = 50) -> str:
    """Time masking and unmasking one level's histograms in this process.

    A depth-4 level of the synthetic set: 4 nodes built, 20 features, 33 slots
    (32 bins and missing), gradient and hessian plus 3 totals per node.
    """
    from tasks.gbdt.histogram import NodeHistograms
    from tasks.gbdt.private_histograms import mask_histograms, unmask_histograms
    from tasks.privacy.secagg import MaskContext, generate_keypair

    rng = np.random.default_rng(0)
    exponent = 30
    shape = (4, 20, 33)
    hist = NodeHistograms.from_parts(
        nodes=np.array([[0, n] for n in (3, 4, 5, 6)], np.int64),
        grad=np.ldexp(np.rint(rng.normal(0, 2**exponent, shape)), -exponent),
        hess=np.ldexp(np.rint(rng.random(shape) * 2**exponent), -exponent),
        totals=np.ones((4, 3)),
    )
    keys = [generate_keypair() for _ in range(n_silos)]
    publics = {i: k.public for i, k in enumerate(keys)}
    mask_s, unmask_s = [], []
    for r in range(repeat):
        context = MaskContext("bench", 1, 0, f"tree{r}-level1")
        started = time.perf_counter()
        parts = [
            mask_histograms(
                hist, i, keys[i].private, publics, context=context, exponent=exponent
            )
            for i in range(n_silos)
        ]
        mask_s.append((time.perf_counter() - started) / n_silos)
        started = time.perf_counter()
        unmask_histograms(parts)
        unmask_s.append(time.perf_counter() - started)
    words = parts[0].masked.values.size
    return (
        f"masking one level ({words:,} words, {n_silos} silos): "
        f"{statistics.median(mask_s) * 1e3:.2f} ms per silo, unmasking the sum "
        f"{statistics.median(unmask_s) * 1e3:.2f} ms (median of {repeat})"
    )


def main() -> None:
    """Run every variant on both data sets and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trees", type=int, default=20)
    parser.add_argument("--trees-per-round", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--synthetic-rows", type=int, default=100_000)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from fedsilo.cluster import embedded_cluster

    quiet_dask_logs()
    print(masking_cost())
    if args.repeats < 1:
        return
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = {
            "breast cancer": write_breast_cancer(root / "bc"),
            f"synthetic {args.synthetic_rows:,} rows": write_synthetic(
                root / "synthetic", args.synthetic_rows
            ),
        }
        cluster = embedded_cluster([f"silo-{i}" for i in range(SILOS)])
        address = str(cluster.scheduler_address)
        print(f"set-up (imports, data, cluster): {time.perf_counter() - T0:.1f} s")
        try:
            warm = make_spec(
                data["breast cancer"],
                trees=2,
                trees_per_round=1,
                store=root / "store",
                address=address,
                secure=True,
                noise=1.0,
            )
            run_variant(warm)  # numba kernels compiled/loaded in every worker
            for name, silos in data.items():
                results: dict[str, list[dict[str, Any]]] = {v[0]: [] for v in VARIANTS}
                for repeat in range(args.repeats):
                    shift = repeat % len(VARIANTS)  # no variant always runs first
                    for label, secure, noise in VARIANTS[shift:] + VARIANTS[:shift]:
                        spec = make_spec(
                            silos,
                            trees=args.trees,
                            trees_per_round=args.trees_per_round,
                            store=root / "store",
                            address=address,
                            secure=secure,
                            noise=noise,
                        )
                        out = run_variant(spec)
                        results[label].append(out)
                        print(
                            f"  {name} {label}: auc {out['auc']:.4f} "
                            f"{out['s_per_tree']:.3f} s/tree",
                            flush=True,
                        )
                print()
                print(table(name, results))
                print()
                report[name] = results
        finally:
            cluster.close()
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2))
    print(f"total: {time.perf_counter() - T0:.1f} s")


if __name__ == "__main__":
    main()
