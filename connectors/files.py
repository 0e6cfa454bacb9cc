"""Parquet and CSV silo sources, by local path or fsspec URL, read at the silo."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import fsspec
import pandas as pd
import pyarrow.parquet as pq

from connectors.readers import register_reader
from fedsilo.errors import SiloDataError

FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".csv.gz": "csv"}


def detect_format(location: str) -> str:
    """Return "parquet" or "csv" from a location's suffix (a directory is Parquet)."""
    lowered = location.lower().rstrip("/")
    for suffix, kind in sorted(FORMATS.items(), key=lambda item: -len(item[0])):
        if lowered.endswith(suffix):
            return kind
    if "." not in lowered.rsplit("/", 1)[-1]:
        return "parquet"
    raise ValueError(f"unknown file type of {location!r} (use .parquet or .csv)")


def read_table(
    silo: str,
    location: str,
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Read one silo table; any failure becomes a SiloDataError naming the file."""
    options = dict(storage_options or {})
    try:
        kind = detect_format(location)
    except ValueError as error:
        raise SiloDataError(silo, str(error)) from None
    try:
        fs, path = fsspec.core.url_to_fs(location, **options)
        if not fs.exists(path):
            raise SiloDataError(silo, f"no such file: {location}")
        if kind == "parquet":
            frame = pq.read_table(path, filesystem=fs).to_pandas()
        else:
            with fs.open(path, "rb", compression="infer") as handle:
                frame = pd.read_csv(handle)
    except SiloDataError:
        raise
    except Exception as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise SiloDataError(silo, f"cannot read {location}: {message}") from None
    frame.columns = [str(c) for c in frame.columns]
    return frame


@register_reader("path")
def read_path(
    silo: str, location: str, storage_options: Mapping[str, Any]
) -> pd.DataFrame:
    """Read a path source (the ``path`` kind's reader)."""
    return read_table(silo, location, storage_options=storage_options)
