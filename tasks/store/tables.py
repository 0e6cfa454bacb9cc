"""The schemas of trees.parquet and manifest.parquet, and their validation.

One file name of the store always holds one schema (docs/checkpoints.md):
model.parquet the tensor table, trees.parquet the tree table of a boosted
model, metrics.parquet the long metrics, and manifest.parquet one row of plain
columns describing the run.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import pyarrow as pa

from fedsilo.errors import CheckpointError

__all__ = [
    "MANIFEST_SCHEMA",
    "TREES_SCHEMA",
    "manifest_table",
    "trees_table",
]

MODEL_FILE = "model.parquet"
TREES_FILE = "trees.parquet"

#: The columns of ``xgboost.Booster.trees_to_dataframe()``, one row per node.
#: Split, Yes, No and Missing are null on a leaf; Category is null unless a
#: split is categorical (fedsilo's never are).
TREES_SCHEMA = pa.schema(
    [
        pa.field("Tree", pa.int64(), nullable=False),
        pa.field("Node", pa.int64(), nullable=False),
        pa.field("ID", pa.string(), nullable=False),
        pa.field("Feature", pa.string(), nullable=False),
        pa.field("Split", pa.float64()),
        pa.field("Yes", pa.string()),
        pa.field("No", pa.string()),
        pa.field("Missing", pa.string()),
        pa.field("Gain", pa.float64(), nullable=False),
        pa.field("Cover", pa.float64(), nullable=False),
        pa.field("Category", pa.float64()),
    ]
)

#: Library versions of the manifest: column name and key in ``fedsilo.versions``.
VERSION_COLUMNS = {
    "fedsilo_version": "fedsilo",
    "numpy_version": "numpy",
    "pyarrow_version": "pyarrow",
    "pandas_version": "pandas",
    "sklearn_version": "scikit-learn",
}

MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("model_kind", pa.string()),
        pa.field("task", pa.string()),
        pa.field("model_file", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("last_round", pa.int64(), nullable=False),
        pa.field("rounds_done", pa.int64(), nullable=False),
        pa.field("rounds_planned", pa.int64()),
        pa.field("spec_hash", pa.string()),
        *(pa.field(name, pa.string()) for name in VERSION_COLUMNS),
        pa.field("xgboost_version", pa.string()),
        pa.field("updated_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("spec", pa.string()),
    ]
)


def trees_table(table: pa.Table) -> pa.Table:
    """Return a tree table cast to `TREES_SCHEMA`, without schema metadata.

    Raises
    ------
    CheckpointError
        Naming the column that is missing, unexpected, of a type that cannot
        be cast, or null where the schema forbids it.
    """
    if not isinstance(table, pa.Table):
        raise CheckpointError(
            f"trees: expected a pyarrow.Table, got {type(table).__name__}"
        )
    names = table.column_names
    missing = [n for n in TREES_SCHEMA.names if n not in names]
    if missing:
        raise CheckpointError(f"trees: missing column {missing[0]!r}")
    extra = [n for n in names if n not in TREES_SCHEMA.names]
    if extra:
        raise CheckpointError(f"trees: unexpected column {extra[0]!r}")
    columns = []
    for field in TREES_SCHEMA:
        column = table.column(field.name)
        try:
            column = column.cast(field.type)
        except (pa.ArrowException, ValueError) as exc:
            raise CheckpointError(
                f"trees: column {field.name!r} cannot be cast to {field.type}: {exc}"
            ) from exc
        if not field.nullable and column.null_count:
            raise CheckpointError(
                f"trees: column {field.name!r} has {column.null_count} missing value(s)"
            )
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=TREES_SCHEMA)


def _json_field(metadata: Mapping[str, str], key: str) -> dict[str, Any]:
    """Return the JSON object under ``key``, or an empty dict if absent."""
    raw = metadata.get(key)
    if raw is None:
        return {}
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise CheckpointError(f"metadata {key!r} is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise CheckpointError(f"metadata {key!r} is not a JSON object")
    return value


def manifest_table(
    metadata: Mapping[str, str],
    *,
    model_file: str,
    last_round: int,
    rounds_done: int,
    updated_at: datetime,
) -> pa.Table:
    """Return the one-row manifest of a run from its files' key-value metadata.

    ``metadata`` holds the keys every Parquet file of the run carries
    (``fedsilo.spec``, ``fedsilo.model``, ``fedsilo.versions``, ...); a key
    the writer did not give leaves its column null. ``status`` is
    ``complete`` once ``last_round`` reaches the spec's ``rounds``, else
    ``partial``.
    """
    spec = _json_field(metadata, "fedsilo.spec")
    model = _json_field(metadata, "fedsilo.model")
    versions = _json_field(metadata, "fedsilo.versions")
    planned = spec.get("rounds")
    planned = int(planned) if isinstance(planned, int) else None
    done = planned is not None and last_round >= planned
    row: dict[str, Any] = {
        "model_kind": model.get("kind"),
        "task": spec.get("task"),
        "model_file": model_file,
        "status": "complete" if done else "partial",
        "last_round": int(last_round),
        "rounds_done": int(rounds_done),
        "rounds_planned": planned,
        "spec_hash": metadata.get("fedsilo.spec_hash"),
        **{column: versions.get(key) for column, key in VERSION_COLUMNS.items()},
        "xgboost_version": metadata.get("fedsilo.xgboost_version"),
        "updated_at": updated_at,
        "spec": metadata.get("fedsilo.spec"),
    }
    return pa.Table.from_pylist([row], schema=MANIFEST_SCHEMA)
