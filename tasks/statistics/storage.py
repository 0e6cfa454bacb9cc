"""Where federated statistics are kept: Parquet tables next to the checkpoints.

Layout::

    <root>/federation=<name>/stats=<stats_id>/<table>.parquet
    <root>/federation=<name>/stats=<stats_id>/_SUCCESS      (written last)

Tables are those of ``FederatedStats.tables()``; each file is written atomically
as checkpoints are (``tasks/store/checkpoints.py``) and carries the spec, the
threshold and the bin count in its key-value metadata.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Mapping
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from fedsilo.errors import CheckpointError
from tasks.store.checkpoints import (
    _IO_ERRORS,
    SUCCESS_FILE,
    _check_name,
    _open_fs,
    _parquet_bytes,
    _show,
    _with_metadata,
    put_file,
)


def stats_path(
    root: str,
    federation: str,
    stats_id: str,
    storage_options: Mapping[str, Any] | None = None,
) -> str:
    """Return the directory of one statistics run, as a user sees it."""
    fs, base = _open_fs(root, storage_options)
    return _show(fs, _directory(base, federation, stats_id))


def _directory(base: str, federation: str, stats_id: str) -> str:
    _check_name("federation", federation)
    _check_name("stats id", stats_id)
    return posixpath.join(base, f"federation={federation}", f"stats={stats_id}")


def write_stats(
    root: str,
    federation: str,
    stats_id: str,
    tables: Mapping[str, pd.DataFrame],
    metadata: Mapping[str, str],
    storage_options: Mapping[str, Any] | None = None,
) -> str:
    """Write every table and then ``_SUCCESS``; return the directory.

    Raises
    ------
    CheckpointError
        The directory already holds a complete statistics run, or I/O failed.
    """
    fs, base = _open_fs(root, storage_options)
    directory = _directory(base, federation, stats_id)
    files = []
    for name, frame in tables.items():
        table = pa.Table.from_pandas(frame, preserve_index=False)
        files.append(
            (f"{name}.parquet", _parquet_bytes(_with_metadata(table, metadata)))
        )
    files.append((SUCCESS_FILE, json.dumps({"tables": list(tables)}).encode()))
    try:
        if fs.exists(posixpath.join(directory, SUCCESS_FILE)):
            raise CheckpointError(
                f"{_show(fs, directory)} is already complete; refusing to overwrite it"
            )
        for name, data in files:
            path = posixpath.join(directory, name)
            put_file(fs, path, data)
    except _IO_ERRORS as exc:
        raise CheckpointError(f"cannot write {_show(fs, directory)}: {exc}") from exc
    return _show(fs, directory)


def read_stats(
    root: str,
    federation: str,
    stats_id: str,
    storage_options: Mapping[str, Any] | None = None,
) -> dict[str, pd.DataFrame]:
    """Return the tables of a complete statistics run by name."""
    fs, base = _open_fs(root, storage_options)
    directory = _directory(base, federation, stats_id)
    try:
        if not fs.exists(posixpath.join(directory, SUCCESS_FILE)):
            raise CheckpointError(f"{_show(fs, directory)}: no complete statistics")
        names = json.loads(fs.cat_file(posixpath.join(directory, SUCCESS_FILE)))
        return {
            name: pq.read_table(
                pa.BufferReader(
                    fs.cat_file(posixpath.join(directory, f"{name}.parquet"))
                )
            ).to_pandas()
            for name in names["tables"]
        }
    except _IO_ERRORS as exc:
        raise CheckpointError(f"cannot read {_show(fs, directory)}: {exc}") from exc
