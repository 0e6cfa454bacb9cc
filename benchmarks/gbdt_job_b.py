"""Reference job B: federated boosting (model kind xgboost) against pooled xgboost.

Data: ``make_classification(n_samples=500_000, n_features=30, n_informative=15,
random_state=0)``; the last 100,000 rows are the global test set, the others
are dealt to 4 silos (a) iid (a seed-0 permutation, ``np.array_split``) and (b)
sorted by the column with the highest ANOVA F score on the training rows, each
silo a contiguous range of it. Each silo's test file is an equal slice of the
global test set. Parameters: binary:logistic, max_depth 6, eta 0.1, 256 bins,
200 trees (``trees_per_round`` per Prefect round).

Timing, in this one process and alternating, ``--repeat`` times per split:
- xgboost: ``DMatrix`` construction plus ``xgboost.train(tree_method="hist",
  nthread=2)`` on the pooled training rows (in memory);
- fedsilo: the whole ``federated_training`` flow on a running 4-worker cluster
  (one process per silo, the embedded cluster of ``fedsilo run``) and a running
  Prefect API: silos read their Parquet files, check schemas, sketch, bin, then
  every round grows its trees, scores them at every silo and checkpoints.
Cluster start and the Prefect API's start are paid once, before the timed runs,
together with a small warm-up run (numba kernels loaded in every worker); the
script prints them too. Test AUC of fedsilo is the final model.json scored by
stock xgboost on all test rows (pooled), not a mean of silo AUCs.

Printed: both times, their ratio (median over repeats), AUCs, the bytes sent
per tree (both directions, all silos, histograms included) and a breakdown of
fedsilo's time. ``--digits`` adds the multi-class check on scikit-learn's
digits (log loss of fedsilo vs pooled xgboost with the same parameters).

Run from the repository root::

    .venv/bin/python benchmarks/gbdt_job_b.py [--repeat 3] [--split iid sorted]
        [--n-samples 500000] [--n-test 100000] [--trees 200]
        [--trees-per-round 50] [--digits] [--json]
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

from fedsilo.prefect_env import (  # noqa: E402
    apply_defaults,
    quiet_dask_logs,
    unwatched_heartbeats_off,
)

apply_defaults(quiet=True)  # before Prefect starts its ephemeral API
# A busy machine can take longer than Prefect's default 20 s to start the API.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import xgboost as xgb  # noqa: E402
from sklearn.datasets import load_digits, make_classification  # noqa: E402
from sklearn.metrics import log_loss, roc_auc_score  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

from datasets.partition import most_informative_column  # noqa: E402
from fedsilo.spec import parse_spec  # noqa: E402

TARGET = "label"
N_SILOS = 4
# Reference figures from the issue, measured on the machine of docs/benchmarks.md.
REFERENCE = {
    "xgboost_s": 11.7,
    "xgboost_auc": 0.9940,
    "flower_s": 84.0,
    "flower_auc_iid": 0.9938,
    "flower_auc_sorted": 0.9923,
}


def make_data(
    n_samples: int, n_test: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return (X_train, y_train, X_test, y_test) of job B."""
    X, y = make_classification(
        n_samples=n_samples, n_features=30, n_informative=15, random_state=0
    )
    cut = n_samples - n_test
    return X[:cut], y[:cut], X[cut:], y[cut:]


def partition(X: np.ndarray, y: np.ndarray, split: str) -> list[np.ndarray]:
    """Return each silo's training row indices for split "iid" or "sorted"."""
    if split == "iid":
        order = np.random.default_rng(0).permutation(len(X))
    else:
        column = most_informative_column(X, y, task="classification")
        order = np.argsort(X[:, column], kind="stable")
    return np.array_split(order, N_SILOS)


def _write(X: np.ndarray, y: np.ndarray, path: Path) -> None:
    frame = pd.DataFrame(X, columns=[f"x{i}" for i in range(X.shape[1])])
    frame[TARGET] = y
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)


def write_silos(
    parts: list[np.ndarray],
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_test: np.ndarray,
    y_test: np.ndarray,
    out: Path,
) -> list[dict[str, str]]:
    """Write each silo's train rows and its slice of the global test set."""
    test_parts = np.array_split(np.arange(len(X_test)), len(parts))
    silos = []
    for i, (rows, test_rows) in enumerate(zip(parts, test_parts, strict=True)):
        name = f"silo-{i}"
        train_path, test_path = (
            out / name / "train.parquet",
            out / name / "test.parquet",
        )
        _write(X_train[rows], y_train[rows], train_path)
        _write(X_test[test_rows], y_test[test_rows], test_path)
        silos.append({"name": name, "train": str(train_path), "test": str(test_path)})
    return silos


def build_spec(
    name: str,
    silos: list[dict[str, str]],
    params: dict[str, Any],
    rounds: int,
    trees_per_round: int,
    address: str,
    store: Path,
    workers: int | None = None,
) -> Any:
    """Return a boosting federation spec attached to the running cluster.

    With ``--workers`` the cluster runs that many pool workers; a spec file
    cannot say both (``cluster.workers`` starts an embedded pool), so the
    attached spec gets ``workers`` set afterwards, as ``fedsilo compare`` does.
    """
    spec = parse_spec(
        {
            "name": name,
            "task": "classification",
            "target": TARGET,
            "rounds": rounds,
            "seed": 0,
            "model": {
                "kind": "xgboost",
                "params": params,
                "trees_per_round": trees_per_round,
            },
            "strategy": {"kind": "fedavg", "fraction": 1.0, "min_silos": len(silos)},
            "silos": silos,
            "cluster": {"address": address},
            "checkpoints": str(store),
        },
        source=name,
    )
    if workers is None:
        return spec
    cluster = spec.cluster.model_copy(update={"workers": workers})
    return spec.model_copy(update={"cluster": cluster})


def _cpu_seconds() -> float:
    """CPU seconds (user + system) this process has used, all threads."""
    t = os.times()
    return t.user + t.system


def _cpu_and_pid() -> tuple[float, int]:
    return _cpu_seconds(), os.getpid()


def cluster_cpu(address: str) -> dict[str, float]:
    """CPU seconds used so far by every worker process and the scheduler.

    The embedded cluster's scheduler runs inside this process: it is then
    left out here (the coordinator's own figure includes it).
    """
    from distributed import Client

    with Client(address, set_as_default=False) as client:
        workers = client.run(_cpu_seconds)
        info = client.scheduler_info(n_workers=-1)["workers"]
        out = {str(info[a]["name"]): float(v) for a, v in workers.items()}
        cpu, pid = client.run_on_scheduler(_cpu_and_pid)
        if pid != os.getpid():
            out["scheduler"] = float(cpu)
    return out


def run_fedsilo(spec: Any) -> tuple[float, dict[str, Any], list[Any]]:
    """Run the federation; return wall seconds, the flow's summary and its rounds.

    The summary gains ``cpu_s``: CPU seconds of this process (the coordinator
    and Prefect's client side; the ephemeral API server runs in a subprocess
    and is not counted), the scheduler and the silo workers.
    """
    from flows.training import federated_training
    from tasks import run_state

    history: list[Any] = []

    def listener(result: Any, state: Any) -> None:
        history.append(result)

    address = spec.cluster.address
    with run_state.listening(listener):
        before, coordinator = cluster_cpu(address), _cpu_seconds()
        started = time.perf_counter()
        with unwatched_heartbeats_off():  # as `fedsilo run` does
            summary = federated_training(spec)
        seconds = time.perf_counter() - started
        after = cluster_cpu(address)
        cpu = {k: after[k] - before.get(k, 0.0) for k in after}
        name = "coordinator" if "scheduler" in cpu else "coordinator+scheduler"
        cpu[name] = _cpu_seconds() - coordinator
        summary["cpu_by_process"] = cpu
        summary["cpu_s"] = sum(cpu.values())
    return seconds, summary, history


def final_booster(spec: Any, summary: dict[str, Any]) -> xgb.Booster:
    """Load the last checkpoint's model.json with stock xgboost."""
    from tasks.store.checkpoints import CheckpointStore

    store = CheckpointStore(spec.checkpoints, spec.name, summary["run_id"])
    text = store.read_model_json(summary["rounds"][-1])
    assert text is not None
    booster = xgb.Booster()
    booster.load_model(bytearray(text.encode()))
    return booster


def run_xgboost(
    params: dict[str, Any],
    trees: int,
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_test: np.ndarray,
) -> tuple[float, np.ndarray]:
    """Train pooled xgboost (hist, 2 threads); return seconds and test predictions."""
    started, cpu = time.perf_counter(), _cpu_seconds()
    dtrain = xgb.DMatrix(X_train, label=y_train, nthread=2)
    booster = xgb.train(
        {**params, "tree_method": "hist", "nthread": 2}, dtrain, num_boost_round=trees
    )
    seconds = time.perf_counter() - started
    run_xgboost.cpu_s = _cpu_seconds() - cpu  # type: ignore[attr-defined]
    return seconds, booster.predict(xgb.DMatrix(X_test, nthread=2))


def _features(n: int) -> list[str]:
    return [f"x{i}" for i in range(n)]


def job_b(args: argparse.Namespace, address: str, work: Path) -> list[dict[str, Any]]:
    """Run every split ``args.repeat`` times; return one record per run pair."""
    X_train, y_train, X_test, y_test = make_data(args.n_samples, args.n_test)
    test_frame = pd.DataFrame(X_test, columns=_features(X_test.shape[1]))
    params = {
        "objective": "binary:logistic",
        "max_depth": 6,
        "eta": 0.1,
        "max_bin": 256,
    }
    if args.trees % args.trees_per_round:
        raise SystemExit("--trees must be a multiple of --trees-per-round")
    rounds = args.trees // args.trees_per_round
    specs = {}
    for split in args.split:
        parts = partition(X_train, y_train, split)
        silos = write_silos(
            parts, X_train, y_train, X_test, y_test, work / "data" / split
        )
        specs[split] = build_spec(
            f"job-b-{split}",
            silos,
            params,
            rounds,
            args.trees_per_round,
            address,
            work / "checkpoints",
            args.workers,
        )
    records = []
    for repeat in range(args.repeat):
        for split, spec in specs.items():
            xgb_s, xgb_pred = run_xgboost(params, args.trees, X_train, y_train, X_test)
            fed_s, summary, history = run_fedsilo(spec)
            booster = final_booster(spec, summary)
            fed_pred = booster.predict(xgb.DMatrix(test_frame, nthread=2))
            exchange = summary["exchange_seconds"]
            round_bytes = sum(r.bytes_down + r.bytes_up for r in history)
            silo_compute = [sum(t.values()) for t in summary["silo_seconds"].values()]
            record = {
                "split": split,
                "repeat": repeat,
                "rows": len(X_train),
                "trees": summary["trees"],
                "xgboost_s": xgb_s,
                "fedsilo_s": fed_s,
                "ratio": fed_s / xgb_s,
                "xgboost_auc": float(roc_auc_score(y_test, xgb_pred)),
                "fedsilo_auc": float(roc_auc_score(y_test, fed_pred)),
                "bytes_per_tree": round_bytes / summary["trees"],
                "bytes_up_per_tree": sum(r.bytes_up for r in history)
                / summary["trees"],
                "exchanges_per_tree": summary["exchanges"] / summary["trees"],
                "transport": summary.get("transport", "channel"),
                "rounds_s": sum(r.seconds for r in history),
                "grow_s": summary["grow_seconds"],
                "exchange_s": sum(exchange.values()),
                "silo_compute_s": silo_compute,
                "xgboost_cpu_s": run_xgboost.cpu_s,  # type: ignore[attr-defined]
                "fedsilo_cpu_s": summary["cpu_s"],
                "cpu_by_process": summary["cpu_by_process"],
            }
            record["setup_s"] = fed_s - record["rounds_s"]
            record["load_1min"] = os.getloadavg()[0]
            print(
                f"{split:6} #{repeat}  xgboost {xgb_s:6.2f}s auc "
                f"{record['xgboost_auc']:.4f} | fedsilo {fed_s:6.2f}s auc "
                f"{record['fedsilo_auc']:.4f} | ratio {record['ratio']:.2f} | "
                f"{record['bytes_per_tree'] / 1e6:.2f} MB/tree | CPU s xgboost "
                f"{record['xgboost_cpu_s']:.1f}, fedsilo {record['fedsilo_cpu_s']:.1f}"
                f" | load {record['load_1min']:.1f}",
                flush=True,
            )
            print(
                f"         fedsilo: setup {record['setup_s']:.2f}s; growing "
                f"{record['grow_s']:.2f}s = exchanges {record['exchange_s']:.2f}s "
                f"({record['exchanges_per_tree']:.1f}/tree, {record['transport']}; "
                "silo CPU "
                + "/".join(f"{c:.1f}" for c in silo_compute)
                + f"s) + coordinator {record['grow_s'] - record['exchange_s']:.2f}s; "
                f"scoring, checkpoints, Prefect "
                f"{record['rounds_s'] - record['grow_s']:.2f}s",
                flush=True,
            )
            print(
                "         CPU s by process: "
                + ", ".join(
                    f"{k} {v:.1f}" for k, v in record["cpu_by_process"].items()
                ),
                flush=True,
            )
            records.append(record)
    return records


def digits(address: str, work: Path, trees: int, workers: int | None) -> dict[str, Any]:
    """Multi-class log loss of fedsilo and pooled xgboost on digits (4 iid silos)."""
    data = load_digits()
    X_train, X_test, y_train, y_test = train_test_split(
        data.data, data.target, test_size=0.25, random_state=0, stratify=data.target
    )
    params = {
        "objective": "multi:softprob",
        "num_class": 10,
        "max_depth": 4,
        "eta": 0.1,
        "max_bin": 256,
    }
    parts = np.array_split(np.random.default_rng(0).permutation(len(X_train)), N_SILOS)
    silos = write_silos(parts, X_train, y_train, X_test, y_test, work / "digits")
    spec = build_spec(
        "digits", silos, params, 1, trees, address, work / "checkpoints", workers
    )
    fed_s, summary, _ = run_fedsilo(spec)
    frame = pd.DataFrame(X_test, columns=_features(X_test.shape[1]))
    fed = final_booster(spec, summary).predict(xgb.DMatrix(frame))
    xgb_s, pooled = run_xgboost(params, trees, X_train, y_train, X_test)
    out = {
        "fedsilo_log_loss": float(log_loss(y_test, fed, labels=np.arange(10))),
        "xgboost_log_loss": float(log_loss(y_test, pooled, labels=np.arange(10))),
        "fedsilo_s": fed_s,
        "xgboost_s": xgb_s,
    }
    out["relative"] = out["fedsilo_log_loss"] / out["xgboost_log_loss"] - 1.0
    return out


def warm_up(address: str, work: Path, workers: int | None) -> float:
    """A small run: starts the Prefect API and loads the kernels in every worker."""
    X, y, Xt, yt = make_data(4_000, 1_000)
    parts = np.array_split(np.arange(len(X)), N_SILOS)
    silos = write_silos(parts, X, y, Xt, yt, work / "warm-up")
    spec = build_spec(
        "warm-up",
        silos,
        {"objective": "binary:logistic", "max_depth": 6, "max_bin": 256},
        1,
        2,
        address,
        work / "checkpoints",
        workers,
    )
    return run_fedsilo(spec)[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--split", nargs="+", default=["iid", "sorted"])
    parser.add_argument("--n-samples", type=int, default=500_000)
    parser.add_argument("--n-test", type=int, default=100_000)
    parser.add_argument("--trees", type=int, default=200)
    parser.add_argument("--trees-per-round", type=int, default=50)
    parser.add_argument("--digits", action="store_true", help="add the digits check")
    parser.add_argument("--workdir", help="keep data and checkpoints here")
    parser.add_argument("--json", action="store_true", help="also print one JSON line")
    parser.add_argument(
        "--workers",
        type=int,
        help="cluster.workers: the 4 silos share this many pool workers of the "
        "running cluster (default: one worker per silo)",
    )
    args = parser.parse_args(argv)

    from fedsilo.cluster import embedded_cluster

    quiet_dask_logs()
    with tempfile.TemporaryDirectory(prefix="fedsilo-job-b-") as tmp:
        work = Path(args.workdir or tmp)
        started = time.perf_counter()
        cluster = embedded_cluster(
            [f"silo-{i}" for i in range(N_SILOS)], n_workers=args.workers
        )
        try:
            address = str(cluster.scheduler_address)
            cluster_s = time.perf_counter() - started
            warm_s = warm_up(address, work, args.workers)
            print(
                f"cluster start {cluster_s:.1f}s, warm-up run (Prefect API start, "
                f"kernels loaded at the silos) {warm_s:.1f}s; not in the times below",
                flush=True,
            )
            records = job_b(args, address, work)
            digits_result = (
                digits(address, work, 200, args.workers) if args.digits else None
            )
        finally:
            cluster.close()

    print()
    print(
        f"job B: {records[0]['rows']:,} training rows, {N_SILOS} silos, "
        f"{args.trees} trees, median of {args.repeat}"
    )
    header = (
        f"{'split':7}{'xgboost s':>10}{'fedsilo s':>10}{'ratio':>7}"
        f"{'xgb AUC':>9}{'fed AUC':>9}{'MB/tree':>9}"
    )
    print(header)
    for split in args.split:
        mine = [r for r in records if r["split"] == split]
        med = {
            k: statistics.median(r[k] for r in mine)
            for k in ("xgboost_s", "fedsilo_s", "ratio", "xgboost_auc", "fedsilo_auc")
        }
        print(
            f"{split:7}{med['xgboost_s']:>10.2f}{med['fedsilo_s']:>10.2f}"
            f"{med['ratio']:>7.2f}{med['xgboost_auc']:>9.4f}{med['fedsilo_auc']:>9.4f}"
            f"{mine[0]['bytes_per_tree'] / 1e6:>9.2f}"
        )
    print(
        f"reference (issue): xgboost {REFERENCE['xgboost_s']}s AUC "
        f"{REFERENCE['xgboost_auc']}; Flower bagging {REFERENCE['flower_s']}s AUC "
        f"{REFERENCE['flower_auc_iid']} (iid) / {REFERENCE['flower_auc_sorted']} "
        "(sorted)"
    )
    if digits_result is not None:
        print(
            f"digits (10 classes, 4 iid silos, 200 trees): log loss fedsilo "
            f"{digits_result['fedsilo_log_loss']:.4f}, xgboost "
            f"{digits_result['xgboost_log_loss']:.4f} "
            f"({100 * digits_result['relative']:+.2f}% relative)"
        )
    if args.json:
        print(json.dumps({"job_b": records, "digits": digits_result}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
