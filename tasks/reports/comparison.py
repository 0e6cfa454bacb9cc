"""The comparison table of ``fedsilo compare``: schema, derived figures, storage.

One table holds every number a comparison report shows, in the long metrics
schema of the checkpoint store plus ``variant``, ``run`` and ``round``::

    <store>/federation=<name>/compare=<id>/comparison.parquet
    <store>/federation=<name>/compare=<id>/report.html

Rows with ``round >= 1`` are learning curves (a metric of one silo, or
``global``, after that round). Rows with ``round == 0`` are totals of a
variant's whole run: ``bytes_up``, ``bytes_down``, ``raw_bytes``,
``wall_seconds`` and ``rounds_to_95pct``. Pure code: no Prefect, no Dask.
"""

from __future__ import annotations

import json
import math
import posixpath
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from fedsilo.errors import CheckpointError
from tasks.store.checkpoints import METRICS_SCHEMA, put_file, required_fields

#: The variants in the order reports show them.
VARIANTS = ("federated", "personalized", "local", "centralized")
LABELS = {
    "federated": "federated",
    "personalized": "personalized (federated + local fine-tuning)",
    "local": "local only (each silo alone)",
    "centralized": "centralized (pooled rows, upper bound)",
}
COMPARISON_SCHEMA = pa.schema(
    [
        *required_fields(
            {"variant": pa.string(), "run": pa.string(), "round": pa.int64()}
        ),
        *METRICS_SCHEMA,  # the checkpoints' metrics columns, as they are
    ]
)
COMPARISON_FILE = "comparison.parquet"
REPORT_FILE = "report.html"
NOTES_KEY = "fedsilo.compare"
TOTALS_ROUND = 0
TARGET_SHARE = 0.95
TRAFFIC = ("bytes_up", "bytes_down")
TOTALS = ("bytes_up", "bytes_down", "raw_bytes", "wall_seconds", "rounds_to_95pct")
#: float64 features and label: the least a silo's rows cost to move.
VALUE_BYTES = 8


def primary_metric(task: str) -> str:
    """Return the metric the report ranks by (higher is better)."""
    return "accuracy" if task == "classification" else "r2"


def reach_target(final: float, share: float = TARGET_SHARE) -> float:
    """Return the value that counts as reaching ``share`` of ``final``.

    A higher-is-better metric ends at ``final``; reaching 95% of it means coming
    within 5% of ``|final|`` below it (also sensible when R² is negative).
    """
    return final - (1.0 - share) * abs(final)


def rounds_to_reach(points: Iterable[tuple[int, float]], target: float) -> float:
    """Return the first round whose value reaches ``target`` (NaN if none does)."""
    for round_number, value in sorted(points):
        if not math.isnan(value) and value >= target:
            return float(round_number)
    return float("nan")


def raw_bytes(n_rows: int, n_features: int) -> int:
    """Return the bytes of ``n_rows`` rows as float64 features plus a label."""
    return int(n_rows) * (int(n_features) + 1) * VALUE_BYTES


def comparison_table(rows: pd.DataFrame | Sequence[Mapping[str, Any]]) -> pa.Table:
    """Validate rows and cast them to :data:`COMPARISON_SCHEMA`."""
    frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    if frame.empty:
        frame = pd.DataFrame({name: [] for name in COMPARISON_SCHEMA.names})
    missing = [n for n in COMPARISON_SCHEMA.names if n not in frame.columns]
    if missing:
        raise CheckpointError(f"comparison: missing column {missing[0]!r}")
    extra = [str(c) for c in frame.columns if c not in COMPARISON_SCHEMA.names]
    if extra:
        raise CheckpointError(f"comparison: unexpected column {extra[0]!r}")
    arrays = []
    for field in COMPARISON_SCHEMA:
        column = frame[field.name]
        if column.isna().any() and field.name != "value":
            raise CheckpointError(f"comparison: column {field.name!r} has nulls")
        try:
            arrays.append(pa.array(column, type=field.type, from_pandas=False))
        except (pa.ArrowException, TypeError, ValueError) as error:
            raise CheckpointError(
                f"comparison: column {field.name!r} is not {field.type}: {error}"
            ) from None
    return pa.Table.from_arrays(arrays, schema=COMPARISON_SCHEMA)


def totals_rows(
    curves: pd.DataFrame,
    *,
    task: str,
    runs: Mapping[str, str],
    silo_rows: Mapping[str, int],
    n_features: int,
    wall_seconds: Mapping[tuple[str, str], float],
    extra_traffic: Mapping[str, Mapping[str, tuple[int, int]]] | None = None,
) -> pd.DataFrame:
    """Return the round-0 rows: traffic, raw size, wall time, rounds to 95%.

    ``curves`` holds the per-round rows of every variant; ``runs`` maps a
    variant to its run id; ``silo_rows`` gives each silo's training rows;
    ``wall_seconds`` maps (variant, silo or "global") to seconds;
    ``extra_traffic`` maps a variant to per-silo (up, down) bytes beyond the
    federated run it builds on (personalization of a tree model).

    Traffic per variant: federated, what its rounds sent; personalized, the
    federated run's plus its own; local only, nothing; centralized, every silo
    uploads its raw rows once.
    """
    out: list[dict[str, Any]] = []
    silos = list(silo_rows)

    def add(variant: str, silo: str, metric: str, value: float, n: int = 0) -> None:
        out.append(
            {
                "variant": variant,
                "run": runs.get(variant, ""),
                "round": TOTALS_ROUND,
                "silo": silo,
                "split": "train"
                if metric in TRAFFIC or metric == "raw_bytes"
                else "test",
                "metric": metric,
                "value": float(value),
                "n_samples": int(n),
            }
        )

    raw = {s: raw_bytes(silo_rows[s], n_features) for s in silos}
    fed = curves[(curves["variant"] == "federated") & curves["metric"].isin(TRAFFIC)]
    sent = fed.groupby(["silo", "metric"])["value"].sum()
    for variant in (v for v in VARIANTS if v in set(curves["variant"])):
        up_total = down_total = 0.0
        for silo in silos:
            if variant == "local":
                up, down = 0.0, 0.0
            elif variant == "centralized":
                up, down = float(raw[silo]), 0.0
            else:
                up = float(sent.get((silo, "bytes_up"), 0.0))
                down = float(sent.get((silo, "bytes_down"), 0.0))
                more = (extra_traffic or {}).get(variant, {}).get(silo, (0, 0))
                up, down = up + more[0], down + more[1]
            add(variant, silo, "bytes_up", up, silo_rows[silo])
            add(variant, silo, "bytes_down", down, silo_rows[silo])
            add(variant, silo, "raw_bytes", raw[silo], silo_rows[silo])
            up_total, down_total = up_total + up, down_total + down
        n_all = sum(silo_rows.values())
        add(variant, "global", "bytes_up", up_total, n_all)
        add(variant, "global", "bytes_down", down_total, n_all)
        add(variant, "global", "raw_bytes", sum(raw.values()), n_all)
    for (variant, silo), seconds in wall_seconds.items():
        if variant in set(curves["variant"]):
            add(variant, silo, "wall_seconds", seconds)
    metric = primary_metric(task)
    test = curves[(curves["split"] == "test") & (curves["metric"] == metric)]
    federated = test[test["variant"] == "federated"]
    if not federated.empty:
        last = federated[federated["round"] == federated["round"].max()]
        finals = dict(zip(last["silo"], last["value"], strict=True))
        for key, group in test.groupby(["variant", "silo"]):
            variant, silo = (str(k) for k in key)
            if silo not in finals:
                continue
            target = reach_target(float(finals[silo]))
            points = zip(group["round"].astype(int), group["value"], strict=True)
            add(
                str(variant),
                str(silo),
                "rounds_to_95pct",
                rounds_to_reach(points, target),
            )
    return pd.DataFrame(out, columns=COMPARISON_SCHEMA.names)


def compare_dir(root: str, federation: str, compare_id: str) -> str:
    """Return the directory of one comparison in the store (path or URL)."""
    return posixpath.join(
        root.rstrip("/") or "/", f"federation={federation}", f"compare={compare_id}"
    )


def _fs(
    location: str, storage_options: Mapping[str, Any] | None
) -> tuple[fsspec.AbstractFileSystem, str]:
    try:
        fs, path = fsspec.core.url_to_fs(location, **dict(storage_options or {}))
    except (ImportError, ValueError, OSError) as error:
        raise CheckpointError(f"cannot open {location!r}: {error}") from None
    return fs, str(path)


def put_atomic(
    location: str, data: bytes, storage_options: Mapping[str, Any] | None = None
) -> str:
    """Write ``data`` to a file atomically (temporary name and rename, or one put)."""
    fs, path = _fs(location, storage_options)
    try:
        put_file(fs, path, data)
    except OSError as error:
        raise CheckpointError(f"cannot write {location}: {error}") from None
    return location


def write_comparison(
    directory: str,
    table: pa.Table,
    notes: Mapping[str, Any],
    storage_options: Mapping[str, Any] | None = None,
) -> str:
    """Write comparison.parquet atomically with ``notes`` as JSON metadata."""
    metadata = {**(table.schema.metadata or {}), NOTES_KEY.encode(): json.dumps(notes)}
    sink = pa.BufferOutputStream()
    pq.write_table(table.replace_schema_metadata(metadata), sink)
    path = posixpath.join(directory, COMPARISON_FILE)
    return put_atomic(path, sink.getvalue().to_pybytes(), storage_options)


def read_comparison(
    directory: str, storage_options: Mapping[str, Any] | None = None
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Return a comparison's rows and its notes, as stored."""
    path = posixpath.join(directory, COMPARISON_FILE)
    fs, inner = _fs(path, storage_options)
    try:
        table = pq.read_table(pa.BufferReader(fs.cat_file(inner)))
    except (OSError, pa.ArrowException) as error:
        raise CheckpointError(f"cannot read {path}: {error}") from None
    raw = (table.schema.metadata or {}).get(NOTES_KEY.encode(), b"{}")
    return table.to_pandas(), json.loads(raw)


def final_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Return each variant's rows of its last round (test and train metrics)."""
    curves = frame[frame["round"] > TOTALS_ROUND]
    last = curves.groupby("variant")["round"].transform("max")
    return curves[curves["round"] == last]


def metric_names(task: str) -> tuple[str, ...]:
    """Return the task's metrics in report order."""
    if task == "classification":
        return ("accuracy", "roc_auc", "log_loss")
    return ("r2", "rmse", "mae")


def present_variants(frame: pd.DataFrame) -> list[str]:
    """Return the variants the table holds, in report order."""
    found = set(frame["variant"])
    return [v for v in VARIANTS if v in found]


def silo_order(frame: pd.DataFrame) -> list[str]:
    """Return the silos of a table (without ``global``) in a stable order."""
    names = {str(s) for s in frame["silo"]} - {"global"}
    return sorted(names, key=lambda s: (len(s), s))


def nan_to_none(value: float) -> float | None:
    """Return ``value``, or None when it is NaN (JSON has no NaN)."""
    value = float(value)
    return None if np.isnan(value) else value
