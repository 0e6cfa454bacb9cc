"""Reference job A: FedAvg logistic regression, 10 iid silos, 20 rounds.

Data: ``make_classification(n_samples=200_000, n_features=20, n_informative=10,
n_redundant=5, random_state=42)``; the last 40,000 rows are the global test set,
the first 160,000 are split iid over the silos with ``np.array_split`` of a
seed-0 permutation. Each silo's test file is an equal slice of the global test
set, so fedsilo's pooled ("global") test accuracy is the accuracy on all 40,000
test rows; the script checks that by scoring the final checkpoint itself.

Run from the repository root::

    .venv/bin/python benchmarks/fedavg_job_a.py [--kind logistic] [--rounds 20]
        [--silos 10] [--epochs N] [--workers N] [--no-warm-up] [--workdir DIR]
        [--json]

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
import contextlib  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402


def _startup_seconds() -> float:
    """Seconds from the process's creation to T0 (Linux /proc; 10 ms resolution)."""
    try:
        import os

        with open("/proc/self/stat") as stat, open("/proc/uptime") as up:
            ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
            uptime = float(up.read().split()[0])
        return max(
            0.0, uptime - ticks / os.sysconf("SC_CLK_TCK") - (time.perf_counter() - T0)
        )
    except (OSError, ValueError, IndexError):
        return 0.0


STARTUP = _startup_seconds()  # interpreter start-up before this file ran

from fedsilo.prefect_env import (  # noqa: E402
    apply_defaults,
    quiet_dask_logs,
    unwatched_heartbeats_off,
    warm_up,
)

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
    for i, (train_rows, test_rows) in enumerate(
        zip(train_parts, test_parts, strict=True)
    ):
        name = f"silo-{i}"
        train_path = workdir / "data" / name / "train.parquet"
        test_path = workdir / "data" / name / "test.parquet"
        _write(X_train[train_rows], y_train[train_rows], train_path)
        _write(X_test[test_rows], y_test[test_rows], test_path)
        silos.append({"name": name, "train": str(train_path), "test": str(test_path)})
    return silos


def build_spec(
    silos: list[dict[str, str]],
    kind: str,
    rounds: int,
    epochs: int,
    workdir: Path,
    workers: int | None = None,
) -> Any:
    """Return the federation spec of job A (``workers``: embedded pool workers)."""
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
            "cluster": {"workers": workers},
            "checkpoints": str(workdir / "checkpoints"),
        },
        source="job-a",
    )


def final_accuracy_from_checkpoint(
    spec: Any, run_id: str, round_number: int, X_test: np.ndarray, y_test: np.ndarray
) -> float:
    """Score the final checkpoint's model on the whole global test set."""
    from tasks.averaging.sklearn_models import materialise
    from tasks.store.checkpoints import CheckpointStore

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


def instrument(marks: dict[str, float]) -> None:
    """Record when the parent flow enters and leaves its start-up steps.

    Wraps two names looked up at call time (the parent flow's cluster context
    manager and the averaged family's ``open_silos`` task) without changing them.
    """
    from flows import training
    from tasks.averaging import averaged as family

    real_cluster, real_open = training.spec_cluster, family.open_silos

    @contextlib.contextmanager
    def timed_cluster(*args: Any, **kwargs: Any) -> Iterator[Any]:
        marks["flow_body_started"] = elapsed()
        with real_cluster(*args, **kwargs) as cluster:
            marks["cluster_ready"] = elapsed()
            yield cluster

    def timed_open(*args: Any, **kwargs: Any) -> Any:
        try:
            return real_open(*args, **kwargs)
        finally:
            marks["silos_opened"] = elapsed()

    training.spec_cluster = timed_cluster  # type: ignore[assignment]
    family.open_silos = timed_open


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--kind", default="logistic", choices=["logistic", "sgd-logistic"]
    )
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--silos", type=int, default=10)
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="local.epochs: L-BFGS iterations per round (logistic, default 5) or "
        "passes over the silo's rows (sgd-logistic, default 1)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="cluster.workers: silos share this many embedded pool workers "
        "(default: one worker per silo)",
    )
    parser.add_argument("--workdir", help="keep data and checkpoints here")
    parser.add_argument("--json", action="store_true", help="also print one JSON line")
    parser.add_argument(
        "--no-warm-up",
        action="store_true",
        help="do not start the ephemeral API and the fork server while the data "
        "is made (fedsilo run starts them while it imports)",
    )
    args = parser.parse_args(argv)
    warmed = (lambda: None) if args.no_warm_up else warm_up(embedded_cluster=True)
    epochs = args.epochs or (5 if args.kind == "logistic" else 1)

    with tempfile.TemporaryDirectory(prefix="fedsilo-job-a-") as tmp:
        workdir = Path(args.workdir).resolve() if args.workdir else Path(tmp)
        X_train, y_train, X_test, y_test = make_data()
        silos = write_silos(X_train, y_train, X_test, y_test, args.silos, workdir)
        spec = build_spec(silos, args.kind, args.rounds, epochs, workdir, args.workers)
        marks = {"data_ready": elapsed()}

        from flows.training import federated_training
        from tasks import run_state

        quiet_dask_logs()
        instrument(marks)
        arrivals: list[tuple[int, float, float]] = []  # (round, at, in-round s)

        def listener(result: Any, state: Any) -> None:
            arrivals.append((result.round, elapsed(), result.seconds))

        warmed()
        marks["flow_called"] = elapsed()
        # heartbeats off as `fedsilo run` does
        with run_state.listening(listener), unwatched_heartbeats_off():
            summary = federated_training(spec)
        marks["flow_returned"] = elapsed()

        last = summary["rounds"][-1]
        fed_accuracy = float(summary["final_metrics"]["accuracy"])
        check_accuracy = final_accuracy_from_checkpoint(
            spec, summary["run_id"], last, X_test, y_test
        )
        pooled = pooled_accuracy(X_train, y_train, X_test, y_test)

    gaps = [b[1] - a[1] for a, b in itertools.pairwise(arrivals)]
    steady_gaps = gaps[1:]  # the gaps ending at round 3 onwards
    steady_inside = [s for r, _, s in arrivals if r >= 3]
    nan = float("nan")
    figures = {
        "kind": args.kind,
        "epochs": epochs,
        "silos": args.silos,
        "rounds": args.rounds,
        # data, imports and the whole federation; not the accuracy checks after it
        "process_wall_s": marks["flow_returned"],
        "interpreter_startup_s": STARTUP,
        "imports_and_data_s": marks["data_ready"],
        "federated_training_s": marks["flow_returned"] - marks["flow_called"],
        "prefect_start_s": marks["flow_body_started"] - marks["flow_called"],
        "cluster_start_s": marks["cluster_ready"] - marks["flow_body_started"],
        "open_silos_s": marks["silos_opened"] - marks["cluster_ready"],
        "round_1_s": arrivals[0][1] - marks["silos_opened"],
        "first_round_s": arrivals[0][1] - marks["flow_called"],
        "first_round_from_process_start_s": arrivals[0][1],
        "rounds_s": arrivals[-1][1] - arrivals[0][1],
        "shutdown_s": marks["flow_returned"] - arrivals[-1][1],
        "steady_round_s": statistics.median(steady_gaps) if steady_gaps else nan,
        "steady_round_inside_s": statistics.median(steady_inside)
        if steady_inside
        else nan,
        "accuracy": fed_accuracy,
        "accuracy_full_test_set": check_accuracy,
        "pooled_accuracy": pooled,
    }
    lines = [
        ("process wall time", "process_wall_s", "s", "Flower 22.3 s"),
        ("  interpreter start-up", "interpreter_startup_s", "s", ""),
        ("  imports + data written", "imports_and_data_s", "s", ""),
        ("  federated_training()", "federated_training_s", "s", "Flower 17.3 s"),
        ("    Prefect API + flow run", "prefect_start_s", "s", ""),
        ("    silo cluster start", "cluster_start_s", "s", ""),
        ("    open_silos", "open_silos_s", "s", ""),
        ("    round 1", "round_1_s", "s", ""),
        ("    rounds 2..N", "rounds_s", "s", ""),
        ("    cluster shutdown, summary", "shutdown_s", "s", ""),
        ("first round (from the call)", "first_round_s", "s", ""),
        ("steady round, median r3..N", "steady_round_s", "s", "Flower 0.234 s"),
        ("  inside the round flow", "steady_round_inside_s", "s", ""),
        ("global test accuracy", "accuracy", "", "Flower 0.8055"),
        ("  final model on all 40k rows", "accuracy_full_test_set", "", ""),
        ("pooled LogisticRegression", "pooled_accuracy", "", "Flower's 0.8050"),
    ]
    print(
        f"job A: {args.kind} (local.epochs {epochs}), "
        f"{args.silos} silos, {args.rounds} rounds"
    )
    for label, key, unit, reference in lines:
        value = figures[key]
        shown = f"{value:8.3f} s" if unit else f"{value:8.4f}  "
        print(f"  {label:<30}{shown}  {reference}".rstrip())
    if abs(check_accuracy - fed_accuracy) > 1e-12:
        print("MISMATCH: accuracy from silo sums != full test set", file=sys.stderr)
        return 1
    if args.json:
        print("JSON " + json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
