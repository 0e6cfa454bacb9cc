"""Reference job A: FedAvg logistic regression, 10 iid silos, 20 rounds.

Data: ``make_classification(n_samples=200_000, n_features=20, n_informative=10,
n_redundant=5, random_state=42)``; the last 40,000 rows are the global test set,
the first 160,000 are split iid over the silos with ``np.array_split`` of a
seed-0 permutation. Each silo's test file is an equal slice of the global test
set, so fedsilo's pooled ("global") test accuracy is the accuracy on all 40,000
test rows; the script checks that by scoring the final checkpoint itself.

Run from the repository root::

    .venv/bin/python benchmarks/fedavg_job_a.py [--kind logistic] [--rounds 20]
        [--silos 10] [--epochs N] [--workdir DIR] [--json]

Printed figures: process wall time (from the process's start, interpreter and
imports included), time to the first round's result, the median steady round
(rounds 3..N as seen by the parent flow, and in-round seconds), the final
global test accuracy and a pooled scikit-learn LogisticRegression's accuracy on
the same split. ``--json`` adds one machine-readable line (see ``repeat.py``).
"""

from __future__ import annotations

import time

T0 = time.perf_counter()  # before the heavy imports

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402



def _startup_seconds() -> float:
    """Seconds from the process's creation to T0 (Linux /proc; 10 ms resolution)."""
    try:
        import os

        ticks = int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[19])
        uptime = float(open("/proc/uptime").read().split()[0])
        return max(0.0, uptime - ticks / os.sysconf("SC_CLK_TCK") - (time.perf_counter() - T0))
    except (OSError, ValueError, IndexError):
        return 0.0


STARTUP = _startup_seconds()  # interpreter start-up before this file ran

from fedsilo.prefect_env import apply_defaults, quiet_dask_logs  # noqa: E402

apply_defaults(quiet=True)  # before Prefect starts its ephemeral API

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from sklearn.datasets import make_classification  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from fedsilo.spec import parse_spec  # noqa: E402

N_SAMPLES = 200_000
N_TEST = 40_000
N_FEATURES = 20
TARGET = "label"
# Flower 1.42 simulation of the same job on this machine (figures from the issue).
FLOWER = {
    "process_wall_s": 22.3,
    "simulation_s": 17.3,
    "steady_round_s": 0.234,
    "accuracy": 0.8055,
    "pooled_accuracy": 0.8050,
}


def elapsed() -> float:
    """Seconds since the process started (interpreter start-up included)."""
    return STARTUP + time.perf_counter() - T0


def make_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return (X_train, y_train, X_test, y_test) of job A."""
    X, y = make_classification(
        n_samples=N_SAMPLES,
        n_features=N_FEATURES,
        n_informative=10,
        n_redundant=5,
        random_state=42,
    )
    cut = N_SAMPLES - N_TEST
    return X[:cut], y[:cut], X[cut:], y[cut:]


def _write(X: np.ndarray, y: np.ndarray, path: Path) -> None:
    frame = pd.DataFrame(X, columns=[f"x{i}" for i in range(X.shape[1])])
    frame[TARGET] = y
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)


def write_silos(
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_test: np.ndarray,
    y_test: np.ndarray,
    n_silos: int,
    workdir: Path,
) -> list[dict[str, str]]:
    """Write each silo's train rows and its slice of the global test set."""
    order = np.random.default_rng(0).permutation(len(X_train))
    train_parts = np.array_split(order, n_silos)
    test_parts = np.array_split(np.arange(len(X_test)), n_silos)
    silos = []
    for i, (train_rows, test_rows) in enumerate(zip(train_parts, test_parts, strict=True)):
        name = f"silo-{i}"
        train_path = workdir / "data" / name / "train.parquet"
        test_path = workdir / "data" / name / "test.parquet"
        _write(X_train[train_rows], y_train[train_rows], train_path)
        _write(X_test[test_rows], y_test[test_rows], test_path)
        silos.append({"name": name, "train": str(train_path), "test": str(test_path)})
    return silos


def build_spec(
    silos: list[dict[str, str]], kind: str, rounds: int, epochs: int, workdir: Path
) -> Any:
    """Return the federation spec of job A."""
    return parse_spec(
        {
            "name": "job-a",
            "task": "classification",
            "target": TARGET,
            "rounds": rounds,
            "seed": 0,
            "model": {"kind": kind, "params": {}},
            "strategy": {"kind": "fedavg", "fraction": 1.0, "min_silos": len(silos)},
            "local": {"epochs": epochs},
            "silos": silos,
            "checkpoints": str(workdir / "checkpoints"),
        },
        source="job-a",
    )


def final_accuracy_from_checkpoint(
    spec: Any, run_id: str, round_number: int, X_test: np.ndarray, y_test: np.ndarray
) -> float:
    """Score the final checkpoint's model on the whole global test set."""
    from fedsilo.tasks.checkpoint_store import CheckpointStore
    from fedsilo.tasks.sklearn_models import materialise

    store = CheckpointStore(spec.checkpoints, spec.name, run_id)
    params = store.read_params(round_number)
    model = json.loads(store.read_metadata(round_number)["fedsilo.model"])
    estimator = materialise(
        model["kind"],
        model["params"],
        n_features=len(model["features"]),
        classes=np.asarray(model["classes"]).astype(y_test.dtype),
        seed=spec.seed,
        params=params,
    )
    scaler = model["scaler"]
    names = [f"x{i}" for i in range(X_test.shape[1])]
    columns = [names.index(f) for f in model["features"]]
    X = (X_test[:, columns] - np.asarray(scaler["mean"])) / np.asarray(scaler["scale"])
    return float(np.mean(estimator.predict(X) == y_test))


def pooled_accuracy(
    X_train: np.ndarray, y_train: np.ndarray, X_test: np.ndarray, y_test: np.ndarray
) -> float:
    """Accuracy of one LogisticRegression trained on all training rows."""
    scaler = StandardScaler().fit(X_train)
    model = LogisticRegression(max_iter=1000).fit(scaler.transform(X_train), y_train)
    return float(model.score(scaler.transform(X_test), y_test))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", default="logistic", choices=["logistic", "sgd-logistic"])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--silos", type=int, default=10)
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="local.epochs: L-BFGS iterations per round (logistic, default 5) or "
        "passes over the silo's rows (sgd-logistic, default 1)",
    )
    parser.add_argument("--workdir", help="keep data and checkpoints here")
    parser.add_argument("--json", action="store_true", help="also print one JSON line")
    args = parser.parse_args(argv)
    epochs = args.epochs or (5 if args.kind == "logistic" else 1)

    with tempfile.TemporaryDirectory(prefix="fedsilo-job-a-") as tmp:
        workdir = Path(args.workdir).resolve() if args.workdir else Path(tmp)
        X_train, y_train, X_test, y_test = make_data()
        silos = write_silos(X_train, y_train, X_test, y_test, args.silos, workdir)
        spec = build_spec(silos, args.kind, args.rounds, epochs, workdir)
        data_ready = elapsed()

        from fedsilo.flows.training import federated_training
        from fedsilo.tasks import run_state

        quiet_dask_logs()
        arrivals: list[tuple[int, float, float]] = []  # (round, at, in-round seconds)

        def listener(result: Any, state: Any) -> None:
            arrivals.append((result.round, elapsed(), result.seconds))

        run_state.listeners.append(listener)
        flow_started = elapsed()
        try:
            summary = federated_training(spec)
        finally:
            run_state.listeners.remove(listener)
        flow_ended = elapsed()
        process_wall = flow_ended  # data, federation and imports; not the checks below

        last = summary["rounds"][-1]
        fed_accuracy = float(summary["final_metrics"]["accuracy"])
        check_accuracy = final_accuracy_from_checkpoint(
            spec, summary["run_id"], last, X_test, y_test
        )
        pooled = pooled_accuracy(X_train, y_train, X_test, y_test)

    gaps = [b[1] - a[1] for a, b in zip(arrivals, arrivals[1:], strict=False)]
    steady_gaps = gaps[1:]  # the gap ending at round 3 onwards
    steady_inside = [s for r, _, s in arrivals if r >= 3]
    figures = {
        "kind": args.kind,
        "epochs": epochs,
        "silos": args.silos,
        "rounds": args.rounds,
        "interpreter_startup_s": STARTUP,
        "data_ready_s": data_ready,
        "process_wall_s": process_wall,
        "federated_training_s": flow_ended - flow_started,
        "first_round_s": arrivals[0][1] - flow_started,
        "first_round_from_process_start_s": arrivals[0][1],
        "steady_round_s": statistics.median(steady_gaps) if steady_gaps else float("nan"),
        "steady_round_inside_s": statistics.median(steady_inside)
        if steady_inside
        else float("nan"),
        "accuracy": fed_accuracy,
        "accuracy_full_test_set": check_accuracy,
        "pooled_accuracy": pooled,
    }
    print(f"job A: {args.kind} (local.epochs {epochs}), {args.silos} silos, {args.rounds} rounds")
    print(f"  process wall time          {process_wall:7.2f} s  (Flower 22.3 s)")
    print(f"    interpreter start-up     {STARTUP:7.2f} s")
    print(f"    imports + data written   {data_ready:7.2f} s")
    print(f"    federated_training()     {figures['federated_training_s']:7.2f} s  (Flower 17.3 s in simulation)")
    print(f"  first round (from flow)    {figures['first_round_s']:7.2f} s")
    print(f"  steady round, median r3..  {figures['steady_round_s']:7.3f} s  (Flower 0.234 s)")
    print(f"    of which inside round    {figures['steady_round_inside_s']:7.3f} s")
    print(f"  global test accuracy       {fed_accuracy:7.4f}    (Flower 0.8055)")
    print(f"    final model, 40k rows    {check_accuracy:7.4f}")
    print(f"  pooled LogisticRegression  {pooled:7.4f}    (Flower's pooled 0.8050)")
    if abs(check_accuracy - fed_accuracy) > 1e-12:
        print("  MISMATCH: pooled-from-sums accuracy differs from the full test set", file=sys.stderr)
        return 1
    if args.json:
        print("JSON " + json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
