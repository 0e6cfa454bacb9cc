"""Checkpoint store: one hive-partitioned directory of Parquet files per round.

Layout (the contract analytics tools rely on, see docs/checkpoints.md)::

    <root>/federation=<name>/run=<run_id>/manifest.parquet   (after each round)
    <root>/federation=<name>/run=<run_id>/round=<NNNNN>/model.parquet   (tensors)
    <root>/federation=<name>/run=<run_id>/round=<NNNNN>/trees.parquet   (trees)
    <root>/federation=<name>/run=<run_id>/round=<NNNNN>/model.json      (optional)
    <root>/federation=<name>/run=<run_id>/round=<NNNNN>/metrics.parquet
    <root>/federation=<name>/run=<run_id>/round=<NNNNN>/_SUCCESS   (written last)

A round holds model.parquet or trees.parquet, never both: one file name, one
schema. A round is complete once ``_SUCCESS`` exists. Every file is written
atomically: on the local filesystem to a hidden temporary name in the same
directory, then ``os.replace``; on any other fsspec filesystem as one object put
of the finished bytes. The store assumes one writer per run.

A store written before trees.parquet and manifest.parquet existed kept a boosted
model's trees in model.parquet: the readers accept it, a run's first write
brings that run to the current layout, and `migrate_store` brings a whole store.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import json
import os
import posixpath
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

import fedsilo
from fedsilo.errors import CheckpointError
from tasks.store.credentials import resolve_storage_options
from tasks.store.tables import (
    MODEL_FILE,
    TREES_FILE,
    manifest_table,
    trees_table,
)

if TYPE_CHECKING:
    from fedsilo.spec import FederationSpec

__all__ = [
    "METRICS_SCHEMA",
    "MODEL_SCHEMA",
    "CheckpointStore",
    "MetricRow",
    "check_run_id",
    "list_runs",
    "metrics_table",
    "migrate_store",
    "new_run_id",
    "params_to_table",
    "table_to_params",
]


def required_fields(columns: Mapping[str, pa.DataType]) -> list[pa.Field]:
    """Return a non-null field for each column name and type, in order."""
    return [pa.field(name, kind, nullable=False) for name, kind in columns.items()]


METRICS_SCHEMA = pa.schema(
    required_fields(
        {
            "silo": pa.string(),
            "split": pa.string(),
            "metric": pa.string(),
            "value": pa.float64(),
            "n_samples": pa.int64(),
        }
    )
)
MODEL_SCHEMA = pa.schema(
    required_fields(
        {"tensor": pa.string(), "flat_index": pa.int64(), "value": pa.float64()}
    )
)

TENSORS_KEY = "fedsilo.tensors"
ROUND_KEY = "fedsilo.round"
VERSIONS_KEY = "fedsilo.versions"
FEDERATION_KEY = "fedsilo.federation"
RUN_KEY = "fedsilo.run"
_RESERVED_KEYS = frozenset(
    {TENSORS_KEY, ROUND_KEY, VERSIONS_KEY, FEDERATION_KEY, RUN_KEY}
)

METRICS_FILE = "metrics.parquet"
MODEL_JSON_FILE = "model.json"
SUCCESS_FILE = "_SUCCESS"
MANIFEST_FILE = "manifest.parquet"
MAX_ROUND = 99_999

# Same rule as spec.NAME_PATTERN: safe as a hive partition value and a path part.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_ROUND_DIR_RE = re.compile(r"^round=(\d{5})$")
_RUN_DIR_RE = re.compile(r"^run=(.+)$")
_VERSIONED = ("fedsilo", "numpy", "pyarrow", "pandas", "scikit-learn")
# Integer and float dtypes stored as float64; integers are checked to be exact.
_STORABLE_KINDS = frozenset("biuf")


def _botocore_error() -> type[Exception]:
    """Return botocore's base error, or OSError when botocore is not installed."""
    try:
        from botocore.exceptions import BotoCoreError
    except ImportError:
        return OSError
    return BotoCoreError


# What fsspec backends and pyarrow raise on I/O or corrupt data. s3fs turns S3's
# error replies into OSError but lets botocore's own errors through (no
# credentials, endpoint unreachable, invalid bucket name): those are I/O too.
_IO_ERRORS = (OSError, pa.ArrowException, _botocore_error())


@dataclass(frozen=True, slots=True)
class MetricRow:
    """One measurement: a metric of one silo (or ``global``) on one split."""

    silo: str
    split: str
    metric: str
    value: float
    n_samples: int


def new_run_id() -> str:
    """Return a sortable run id: UTC time and 6 random hex digits."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{secrets.token_hex(3)}"


def metrics_table(rows: Iterable[MetricRow] | pd.DataFrame | pa.Table) -> pa.Table:
    """Validate metrics and cast them to `METRICS_SCHEMA`.

    Parameters
    ----------
    rows
        `MetricRow` objects, or a DataFrame / Arrow table with exactly the
        columns of `METRICS_SCHEMA` (any order).

    Returns
    -------
    pa.Table
        Table with `METRICS_SCHEMA` and no schema metadata.

    Raises
    ------
    CheckpointError
        Naming the offending column: missing, extra, wrong type, null values or
        negative ``n_samples``.
    """
    columns: dict[str, Any]
    if isinstance(rows, pd.DataFrame | pa.Table):
        names = [str(c) for c in rows.columns]
        missing = [n for n in METRICS_SCHEMA.names if n not in names]
        if missing:
            raise CheckpointError(f"metrics: missing column {missing[0]!r}")
        extra = [n for n in names if n not in METRICS_SCHEMA.names]
        if extra:
            raise CheckpointError(f"metrics: unexpected column {extra[0]!r}")
        if len(set(names)) != len(names):
            raise CheckpointError("metrics: duplicated column names")
        columns = {n: rows[n] for n in METRICS_SCHEMA.names}
    else:
        materialized = list(rows)
        for row in materialized:
            if not isinstance(row, MetricRow):
                raise CheckpointError(
                    f"metrics: expected MetricRow, got {type(row).__name__}"
                )
        columns = {
            n: [getattr(r, n) for r in materialized] for n in METRICS_SCHEMA.names
        }
    arrays = [_metric_column(f, columns[f.name]) for f in METRICS_SCHEMA]
    return pa.Table.from_arrays(arrays, schema=METRICS_SCHEMA)


def _metric_column(field: pa.Field, data: Any) -> pa.Array:
    """Convert one metrics column to ``field.type`` or raise naming the column."""
    name = field.name
    try:
        if isinstance(data, pa.ChunkedArray):
            array = data.combine_chunks()
        elif isinstance(data, pd.Series):
            # from_pandas=False keeps NaN as a value (an undefined metric) not null.
            array = pa.array(data, from_pandas=False)
        else:
            array = pa.array(data)
    except (pa.ArrowException, TypeError, ValueError) as exc:
        raise CheckpointError(
            f"metrics: column {name!r} cannot be read as {field.type}: {exc}"
        ) from exc
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    kind = array.type
    if pa.types.is_null(kind) and len(array) == 0:
        return pa.array([], type=field.type)
    if array.null_count:
        raise CheckpointError(
            f"metrics: column {name!r} has {array.null_count} missing value(s)"
        )
    if pa.types.is_string(field.type):
        ok = pa.types.is_string(kind) or pa.types.is_large_string(kind)
        ok = ok or pa.types.is_string_view(kind)
    elif pa.types.is_floating(field.type):
        ok = pa.types.is_floating(kind) or pa.types.is_integer(kind)
    else:
        ok = pa.types.is_integer(kind)
    if not ok:
        raise CheckpointError(
            f"metrics: column {name!r} must be {field.type}, got {kind}"
        )
    try:
        array = array.cast(field.type)
    except pa.ArrowException as exc:
        raise CheckpointError(
            f"metrics: column {name!r} cannot be cast to {field.type}: {exc}"
        ) from exc
    if name == "n_samples" and len(array) and pc.min(array).as_py() < 0:
        raise CheckpointError("metrics: column 'n_samples' has negative values")
    return array


def params_to_table(params: Mapping[str, np.ndarray]) -> pa.Table:
    """Flatten named arrays into one long table (tensor, flat_index, value).

    One row per element in C order. Shapes and dtypes go into the schema
    metadata key ``fedsilo.tensors`` so `table_to_params` restores them exactly.

    Raises
    ------
    CheckpointError
        A name is not a non-empty string, a dtype is not bool/int/uint/float, or
        an integer is too large to be stored exactly as float64.
    """
    spec: dict[str, dict[str, Any]] = {}
    flats: list[np.ndarray] = []
    for name, value in params.items():
        if not isinstance(name, str) or not name:
            raise CheckpointError(
                f"params: tensor name {name!r} must be a non-empty str"
            )
        array = np.asarray(value)
        if array.dtype.kind not in _STORABLE_KINDS or array.dtype.itemsize > 8:
            raise CheckpointError(
                f"params: tensor {name!r} has dtype {array.dtype}, "
                "expected bool, integer or float of at most 64 bits"
            )
        flat = array.reshape(-1)
        as_float = flat.astype(np.float64)
        if array.dtype.kind in "iu" and array.dtype.itemsize == 8:
            with np.errstate(invalid="ignore"):  # out-of-range casts are checked
                exact = np.array_equal(as_float.astype(array.dtype), flat)
        else:
            exact = True
        if not exact:
            raise CheckpointError(
                f"params: tensor {name!r} holds integers beyond 2**53 that "
                "float64 cannot store exactly"
            )
        spec[name] = {"shape": list(array.shape), "dtype": array.dtype.name}
        flats.append(as_float)
    sizes = np.array([f.size for f in flats], dtype=np.int64)
    codes = np.repeat(np.arange(len(flats), dtype=np.int32), sizes)
    tensor = pa.DictionaryArray.from_arrays(
        pa.array(codes, type=pa.int32()), pa.array(list(spec), type=pa.string())
    ).cast(pa.string())
    offsets = np.repeat(np.cumsum(sizes) - sizes, sizes)
    flat_index = np.arange(int(sizes.sum()), dtype=np.int64) - offsets
    values = np.concatenate(flats) if flats else np.empty(0, dtype=np.float64)
    table = pa.Table.from_arrays(
        [tensor, pa.array(flat_index), pa.array(values)], schema=MODEL_SCHEMA
    )
    return table.replace_schema_metadata({TENSORS_KEY: json.dumps(spec)})


def table_to_params(table: pa.Table) -> dict[str, np.ndarray]:
    """Restore named arrays written by `params_to_table` (any row order).

    Raises
    ------
    CheckpointError
        The table lacks the ``fedsilo.tensors`` metadata or does not match it.
    """
    raw = (table.schema.metadata or {}).get(TENSORS_KEY.encode())
    if raw is None:
        raise CheckpointError(
            f"model table has no {TENSORS_KEY!r} metadata (not written from params)"
        )
    try:
        spec = json.loads(raw)
        shapes = {n: tuple(int(d) for d in s["shape"]) for n, s in spec.items()}
        dtypes = {n: np.dtype(s["dtype"]) for n, s in spec.items()}
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise CheckpointError(f"model table: malformed {TENSORS_KEY!r}: {exc}") from exc
    missing = [c for c in MODEL_SCHEMA.names if c not in table.column_names]
    if missing:
        raise CheckpointError(f"model table: missing column {missing[0]!r}")
    names = list(shapes)
    encoded = table.column("tensor").combine_chunks()
    if not pa.types.is_dictionary(encoded.type):
        encoded = encoded.dictionary_encode()
    dictionary = encoded.dictionary.to_pylist()
    unknown = [n for n in dictionary if n not in shapes]
    if unknown:
        raise CheckpointError(f"model table: tensor {unknown[0]!r} not in metadata")
    position = {n: i for i, n in enumerate(names)}
    remap = np.array([position[n] for n in dictionary], dtype=np.int64)
    codes = remap[encoded.indices.to_numpy(zero_copy_only=False)]
    flat_index = table.column("flat_index").to_numpy()
    values = table.column("value").to_numpy()
    order = np.lexsort((flat_index, codes))
    counts = np.bincount(codes, minlength=len(names))
    result: dict[str, np.ndarray] = {}
    start = 0
    for code, name in enumerate(names):
        size = int(np.prod(shapes[name], dtype=np.int64))
        if counts[code] != size:
            raise CheckpointError(
                f"model table: tensor {name!r} has {counts[code]} values, "
                f"its shape {list(shapes[name])} needs {size}"
            )
        rows = order[start : start + size]
        start += size
        if not np.array_equal(flat_index[rows], np.arange(size)):
            raise CheckpointError(
                f"model table: tensor {name!r} has missing or repeated flat_index"
            )
        result[name] = values[rows].astype(dtypes[name]).reshape(shapes[name])
    return result


@functools.cache
def _library_versions() -> str:
    """Return the versions of the libraries a checkpoint depends on, as JSON."""
    versions: dict[str, str | None] = {}
    for dist in _VERSIONED:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    if versions["fedsilo"] is None:  # running from a source tree, not installed
        versions["fedsilo"] = fedsilo.__version__
    return json.dumps(versions, sort_keys=True)


def _open_fs(
    root: str, storage_options: Mapping[str, Any] | None
) -> tuple[fsspec.AbstractFileSystem, str]:
    """Return the filesystem of ``root`` and the path of ``root`` inside it.

    A Prefect Secret block the options name is merged in here, in memory only
    (``tasks/store/credentials.py``).
    """
    options = resolve_storage_options(storage_options)
    try:
        fs, path = fsspec.core.url_to_fs(root, **options)
    except (ImportError, ValueError, *_IO_ERRORS) as exc:
        raise CheckpointError(f"cannot open checkpoint root {root!r}: {exc}") from exc
    return fs, str(path).rstrip("/") or "/"


def _check_name(kind: str, value: str) -> None:
    """Raise unless ``value`` is safe as a path part and hive partition value."""
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise CheckpointError(
            f"{kind} {value!r} must match {_NAME_RE.pattern} "
            "(it becomes a directory name)"
        )


def check_run_id(run_id: str) -> None:
    """Raise ``CheckpointError`` unless ``run_id`` can name a run directory."""
    _check_name("run id", run_id)


def _parquet_bytes(table: pa.Table) -> bytes:
    """Serialize ``table`` to Parquet bytes."""
    sink = pa.BufferOutputStream()
    try:
        pq.write_table(table, sink)
    except pa.ArrowException as exc:
        raise CheckpointError(f"cannot encode a table as Parquet: {exc}") from exc
    return bytes(sink.getvalue().to_pybytes())


class CheckpointStore:
    """Write and read the rounds of one run of one federation.

    Parameters
    ----------
    root
        Local path or fsspec URL (``s3://bucket/prefix``, ``memory://...``).
    federation
        Federation name; becomes ``federation=<name>``.
    run_id
        Run id (see `new_run_id`); becomes ``run=<run_id>``.
    storage_options
        Passed to ``fsspec.core.url_to_fs``.
    metadata
        Written into every Parquet file's key-value metadata (spec JSON, spec
        hash, ...), together with ``fedsilo.round``, ``fedsilo.federation``,
        ``fedsilo.run`` and ``fedsilo.versions`` (library versions as JSON).
    """

    def __init__(
        self,
        root: str,
        federation: str,
        run_id: str,
        *,
        storage_options: Mapping[str, Any] | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        _check_name("federation", federation)
        _check_name("run id", run_id)
        extra = dict(metadata or {})
        for key, value in extra.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise CheckpointError(f"metadata {key!r}: keys and values must be str")
            if key in _RESERVED_KEYS:
                raise CheckpointError(f"metadata {key!r} is reserved for the store")
        self.root = root
        self.federation = federation
        self.run_id = run_id
        self._fs, base = _open_fs(root, storage_options)
        self._local = isinstance(self._fs, LocalFileSystem)
        self._run = posixpath.join(base, f"federation={federation}", f"run={run_id}")
        self._metadata = {
            **extra,
            FEDERATION_KEY: federation,
            RUN_KEY: run_id,
            VERSIONS_KEY: _library_versions(),
        }
        #: Complete rounds, read at the first write and kept up to date after.
        self._done: set[int] | None = None

    @classmethod
    def of_run(
        cls,
        spec: FederationSpec,
        run_id: str,
        metadata: Mapping[str, str] | None = None,
    ) -> CheckpointStore:
        """Return the store of one run of ``spec`` (its checkpoints' location)."""
        return cls(
            spec.checkpoints,
            spec.name,
            run_id,
            storage_options=spec.storage_options,
            metadata=metadata,
        )

    @property
    def run_path(self) -> str:
        """Directory of this run (a local path, or a URL with its protocol)."""
        return self._show(self._run)

    def round_path(self, round_number: int) -> str:
        """Directory of one round (a local path, or a URL with its protocol)."""
        return self._show(self._round_dir(round_number))

    def write_round(
        self,
        round_number: int,
        metrics: pa.Table | pd.DataFrame | Iterable[MetricRow],
        params: Mapping[str, np.ndarray] | None = None,
        *,
        model_json: str | None = None,
        model_table: pa.Table | None = None,
    ) -> str:
        """Write one complete round and return its directory.

        Exactly one of ``params`` (arrays, see `params_to_table`) and
        ``model_table`` (a boosted model's tree table, cast to `TREES_SCHEMA`)
        gives the model: model.parquet or trees.parquet. Files are written in
        that order: the model, model.json, metrics.parquet, _SUCCESS, and then
        the run's manifest.parquet again. A leftover incomplete round directory
        is removed first. The store's first write brings a run written in the
        earlier layout to the current one (see `migrate_run`).

        Raises
        ------
        CheckpointError
            Invalid input, the round is already complete, or an I/O failure
            (the message names the path).
        """
        if (params is None) == (model_table is None):
            raise CheckpointError(
                f"round {round_number}: give exactly one of params and model_table"
            )
        round_dir = self._round_dir(round_number)
        round_number = int(round_number)  # numpy integers are accepted too
        file_metadata = {**self._metadata, ROUND_KEY: str(round_number)}
        # Build every file before touching storage: invalid input writes nothing.
        if params is not None:
            model_file, model = MODEL_FILE, params_to_table(params)
        else:
            if not isinstance(model_table, pa.Table):
                raise CheckpointError(
                    f"round {round_number}: model_table must be a pyarrow.Table, "
                    f"got {type(model_table).__name__}"
                )
            model_file, model = TREES_FILE, trees_table(model_table)
        files: list[tuple[str, bytes]] = [
            (model_file, _parquet_bytes(_with_metadata(model, file_metadata)))
        ]
        if model_json is not None:
            files.append((MODEL_JSON_FILE, model_json.encode("utf-8")))
        metrics_bytes = _parquet_bytes(
            _with_metadata(metrics_table(metrics), file_metadata)
        )
        files.append((METRICS_FILE, metrics_bytes))
        files.append((SUCCESS_FILE, json.dumps({"round": round_number}).encode()))

        if self._is_complete(round_dir):
            raise CheckpointError(
                f"round {round_number} is already complete at "
                f"{self._show(round_dir)}; refusing to overwrite it"
            )
        if self._done is None:
            self.migrate_run()
            self._done = set(self.complete_rounds())
        done = self._done | {round_number}
        manifest = self._manifest_bytes(
            self._metadata, model_file, max(done), len(done)
        )
        self._remove_incomplete(round_dir)
        for name, data in files:
            self._put(posixpath.join(round_dir, name), data)
        self._done = done
        self._put(posixpath.join(self._run, MANIFEST_FILE), manifest)
        return self._show(round_dir)

    def migrate_run(self) -> list[str]:
        """Bring this run's checkpoints to the current layout; return what moved.

        A complete round whose model.parquet holds trees (the layout before
        trees.parquet) gets trees.parquet, cast to `TREES_SCHEMA` with its
        key-value metadata kept, and loses that model.parquet. A run with
        complete rounds and no manifest.parquet gets one, built from its latest
        round's metadata. A run already in the current layout is left as it is.

        Returns
        -------
        list[str]
            The paths written, as a user sees them (empty if none).
        """
        manifest_path = posixpath.join(self._run, MANIFEST_FILE)
        if self._isfile(manifest_path):
            return []
        rounds = self.complete_rounds()
        if not rounds:
            return []
        written = []
        for round_number in rounds:
            moved = self._move_legacy_trees(self._round_dir(round_number))
            if moved is not None:
                written.append(moved)
        latest = rounds[-1]
        trees = self._isfile(posixpath.join(self._round_dir(latest), TREES_FILE))
        self._put(
            manifest_path,
            self._manifest_bytes(
                self.read_metadata(latest),
                TREES_FILE if trees else MODEL_FILE,
                latest,
                len(rounds),
            ),
        )
        written.append(self._show(manifest_path))
        return written

    def _move_legacy_trees(self, round_dir: str) -> str | None:
        """Turn a round's tree model.parquet into trees.parquet; return its path.

        The trees are cast to `TREES_SCHEMA` and keep their ``fedsilo.*``
        metadata; trees.parquet is written before model.parquet is removed.
        """
        legacy = posixpath.join(round_dir, MODEL_FILE)
        target = posixpath.join(round_dir, TREES_FILE)
        if not self._isfile(legacy) or not _holds_trees(self._read_schema(legacy)):
            return None
        if self._isfile(target):  # moved before a crash, not yet removed
            self._remove(legacy)
            return None
        table = self._read_table(legacy)
        kept = {
            key.decode(): value.decode()
            for key, value in (table.schema.metadata or {}).items()
            if key.startswith(b"fedsilo.")
        }
        try:
            trees = trees_table(table)
        except CheckpointError as exc:
            raise CheckpointError(f"{self._show(legacy)}: {exc.reason}") from exc
        self._put(target, _parquet_bytes(_with_metadata(trees, kept)))
        self._remove(legacy)
        return self._show(target)

    def read_manifest(self) -> dict[str, Any] | None:
        """Return the run's manifest row as a dict, or None if it has none."""
        path = posixpath.join(self._run, MANIFEST_FILE)
        if not self._isfile(path):
            return None
        rows = self._read_table(path).to_pylist()
        if len(rows) != 1:
            raise CheckpointError(
                f"{self._show(path)}: holds {len(rows)} rows, expected one"
            )
        return dict(rows[0])

    def _manifest_bytes(
        self,
        metadata: Mapping[str, str],
        model_file: str,
        last_round: int,
        rounds_done: int,
    ) -> bytes:
        """Return manifest.parquet's bytes, with ``metadata`` as key-value pairs."""
        table = manifest_table(
            metadata,
            model_file=model_file,
            last_round=last_round,
            rounds_done=rounds_done,
            updated_at=datetime.now(UTC),
        )
        file_metadata = {**metadata, ROUND_KEY: str(last_round)}
        return _parquet_bytes(_with_metadata(table, file_metadata))

    def complete_rounds(self) -> list[int]:
        """Return the round numbers that have ``_SUCCESS``, sorted."""
        pattern = posixpath.join(self._run, "round=*", SUCCESS_FILE)
        found = self._glob(pattern)
        rounds = set()
        for path in found:
            match = _ROUND_DIR_RE.match(posixpath.basename(posixpath.dirname(path)))
            if match:
                rounds.add(int(match.group(1)))
        return sorted(rounds)

    def latest_complete_round(self) -> int | None:
        """Return the highest complete round, or None if there is none."""
        rounds = self.complete_rounds()
        return rounds[-1] if rounds else None

    def read_params(self, round_number: int) -> dict[str, np.ndarray]:
        """Return the arrays of a complete round written from params."""
        round_dir = self._complete_dir(round_number)
        path = posixpath.join(round_dir, MODEL_FILE)
        if not self._isfile(path) and self._isfile(
            posixpath.join(round_dir, TREES_FILE)
        ):
            raise CheckpointError(
                f"{self._show(round_dir)}: holds trees ({TREES_FILE}), not tensors; "
                "read it with read_trees"
            )
        table = self._read_table(path)
        try:
            return table_to_params(table)
        except CheckpointError as exc:
            raise CheckpointError(f"{self._show(path)}: {exc.reason}") from exc

    def read_trees(self, round_number: int) -> pa.Table:
        """Return the tree table of a complete round of a boosted run.

        Reads trees.parquet, or in a round written before that file existed,
        the trees its model.parquet holds (cast to `TREES_SCHEMA` alike).
        """
        round_dir = self._complete_dir(round_number)
        path = posixpath.join(round_dir, TREES_FILE)
        if not self._isfile(path):
            legacy = posixpath.join(round_dir, MODEL_FILE)
            if self._isfile(legacy) and _holds_trees(self._read_schema(legacy)):
                path = legacy
            else:
                raise CheckpointError(
                    f"{self._show(round_dir)}: no {TREES_FILE} (not a boosted run's "
                    "round)"
                )
        table = self._read_table(path)
        try:
            return trees_table(table)
        except CheckpointError as exc:
            raise CheckpointError(f"{self._show(path)}: {exc.reason}") from exc

    def read_metrics(self, round_number: int) -> pd.DataFrame:
        """Return metrics.parquet of a complete round as a DataFrame."""
        path = posixpath.join(self._complete_dir(round_number), METRICS_FILE)
        return self._read_table(path).to_pandas()

    def read_model_json(self, round_number: int) -> str | None:
        """Return model.json of a complete round, or None if it has none."""
        path = posixpath.join(self._complete_dir(round_number), MODEL_JSON_FILE)
        try:
            if not self._fs.exists(path):
                return None
            return bytes(self._fs.cat_file(path)).decode("utf-8")
        except (*_IO_ERRORS, UnicodeDecodeError) as exc:
            raise CheckpointError(f"cannot read {self._show(path)}: {exc}") from exc

    def read_metadata(self, round_number: int) -> dict[str, str]:
        """Return the key-value metadata of a complete round's metrics.parquet."""
        path = posixpath.join(self._complete_dir(round_number), METRICS_FILE)
        try:
            schema = pq.read_schema(pa.BufferReader(self._fs.cat_file(path)))
        except _IO_ERRORS as exc:
            raise CheckpointError(f"cannot read {self._show(path)}: {exc}") from exc
        return {
            k.decode(): v.decode()
            for k, v in (schema.metadata or {}).items()
            if k != b"ARROW:schema"
        }

    def _round_dir(self, round_number: int) -> str:
        """Return the storage path of a round, validating its number."""
        if (
            not isinstance(round_number, int | np.integer)
            or isinstance(round_number, bool)
            or not 0 <= round_number <= MAX_ROUND
        ):
            raise CheckpointError(
                f"round number {round_number!r} must be an int in [0, {MAX_ROUND}]"
            )
        return posixpath.join(self._run, f"round={int(round_number):05d}")

    def _complete_dir(self, round_number: int) -> str:
        """Return a round's storage path, or raise if the round is not complete."""
        round_dir = self._round_dir(round_number)
        if not self._is_complete(round_dir):
            raise CheckpointError(
                f"round {round_number} is not complete: no {SUCCESS_FILE} "
                f"in {self._show(round_dir)}"
            )
        return round_dir

    def _is_complete(self, round_dir: str) -> bool:
        """Return True if ``round_dir`` holds ``_SUCCESS``."""
        path = posixpath.join(round_dir, SUCCESS_FILE)
        try:
            self._fs.invalidate_cache(round_dir)
            return bool(self._fs.isfile(path))
        except _IO_ERRORS as exc:
            raise CheckpointError(f"cannot check {self._show(path)}: {exc}") from exc

    def _remove_incomplete(self, round_dir: str) -> None:
        """Delete what a crashed write left in an incomplete round directory."""
        try:
            if self._fs.exists(round_dir):
                self._fs.rm(round_dir, recursive=True)
        except _IO_ERRORS as exc:
            raise CheckpointError(
                f"cannot remove incomplete round {self._show(round_dir)}: {exc}"
            ) from exc

    def _put(self, path: str, data: bytes) -> None:
        """Write ``data`` to ``path`` atomically."""
        try:
            put_file(self._fs, path, data)
        except _IO_ERRORS as exc:
            raise CheckpointError(f"cannot write {self._show(path)}: {exc}") from exc

    def _read_table(self, path: str) -> pa.Table:
        """Read one Parquet file."""
        try:
            return pq.read_table(pa.BufferReader(self._fs.cat_file(path)))
        except _IO_ERRORS as exc:
            raise CheckpointError(f"cannot read {self._show(path)}: {exc}") from exc

    def _read_schema(self, path: str) -> pa.Schema:
        """Read one Parquet file's schema (its footer only)."""
        try:
            with self._fs.open(path, "rb") as handle:
                return pq.read_schema(handle)
        except _IO_ERRORS as exc:
            raise CheckpointError(f"cannot read {self._show(path)}: {exc}") from exc

    def _isfile(self, path: str) -> bool:
        """Return True if ``path`` is a file (listing afresh), wrapping I/O errors."""
        try:
            self._fs.invalidate_cache(posixpath.dirname(path))
            return bool(self._fs.isfile(path))
        except _IO_ERRORS as exc:
            raise CheckpointError(f"cannot check {self._show(path)}: {exc}") from exc

    def _remove(self, path: str) -> None:
        """Delete one file; a file already gone is no error."""
        try:
            self._fs.rm_file(path)
        except FileNotFoundError:
            pass
        except _IO_ERRORS as exc:
            raise CheckpointError(f"cannot remove {self._show(path)}: {exc}") from exc

    def _glob(self, pattern: str) -> list[str]:
        """Glob on the store's filesystem, wrapping I/O errors."""
        return _glob(self._fs, pattern)

    def _show(self, path: str) -> str:
        """Return ``path`` as a user sees it: local path or URL with protocol."""
        return _show(self._fs, path)


def _holds_trees(schema: pa.Schema) -> bool:
    """Return True for a tree table's schema (a boosted model.parquet of old)."""
    return "tensor" not in schema.names and "Tree" in schema.names


def _with_metadata(table: pa.Table, metadata: Mapping[str, str]) -> pa.Table:
    """Return ``table`` with ``metadata`` merged into its schema metadata."""
    merged = {**(table.schema.metadata or {})}
    merged.update({k.encode(): v.encode() for k, v in metadata.items()})
    return table.replace_schema_metadata(merged)


def put_file(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (local rename, or one object put).

    I/O errors propagate; callers name the path.
    """
    if isinstance(fs, LocalFileSystem):
        _atomic_local_write(path, data)
    else:
        fs.pipe_file(path, data)


def _atomic_local_write(path: str, data: bytes) -> None:
    """Write to a hidden temporary file in the same directory, then rename."""
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(
        directory, f".{os.path.basename(path)}.tmp-{secrets.token_hex(4)}"
    )
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def _show(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """Return ``path`` as a user sees it: local path or URL with protocol."""
    return path if isinstance(fs, LocalFileSystem) else str(fs.unstrip_protocol(path))


def _glob(fs: fsspec.AbstractFileSystem, pattern: str) -> list[str]:
    """Glob ``pattern`` on ``fs`` after dropping cached listings."""
    try:
        fs.invalidate_cache()
        return [str(p) for p in fs.glob(pattern)]
    except _IO_ERRORS as exc:
        raise CheckpointError(f"cannot list {_show(fs, pattern)}: {exc}") from exc


def _complete_rounds(
    root: str,
    storage_options: Mapping[str, Any] | None,
    federation: str,
    run: str,
) -> list[tuple[str, str, str]]:
    """Return the (federation, run, round) directory names of rounds with _SUCCESS.

    ``federation`` and ``run`` are partition values or glob patterns such as ``*``.
    """
    fs, base = _open_fs(root, storage_options)
    pattern = posixpath.join(
        base, f"federation={federation}", f"run={run}", "round=*", SUCCESS_FILE
    )
    found = []
    for path in _glob(fs, pattern):
        federation_dir, run_dir, round_dir, _ = path.split("/")[-4:]
        found.append((federation_dir, run_dir, round_dir))
    return found


def list_runs(
    root: str, federation: str, *, storage_options: Mapping[str, Any] | None = None
) -> list[str]:
    """Return the sorted run ids of ``federation`` with at least one complete round."""
    _check_name("federation", federation)
    runs = set()
    for _, run_dir, round_dir in _complete_rounds(
        root, storage_options, federation, "*"
    ):
        match = _RUN_DIR_RE.match(run_dir)
        if match and _ROUND_DIR_RE.match(round_dir):
            runs.add(match.group(1))
    return sorted(runs)


def federations_of_run(
    root: str, run_id: str, *, storage_options: Mapping[str, Any] | None = None
) -> list[str]:
    """Return the federations under ``root`` holding a complete round of ``run_id``."""
    _check_name("run id", run_id)
    names = set()
    for name, _, _ in _complete_rounds(root, storage_options, "*", run_id):
        if name.startswith("federation="):
            names.add(name.removeprefix("federation="))
    return sorted(names)


def migrate_store(
    root: str, *, storage_options: Mapping[str, Any] | None = None
) -> dict[str, list[str]]:
    """Bring every run under ``root`` to the current layout (`migrate_run`).

    Safe to run again: a run already in the current layout is left as it is.
    Run it while no fedsilo of an earlier version writes to the store.

    Returns
    -------
    dict[str, list[str]]
        ``federation/run`` of each run that changed, with the paths written.
    """
    changed: dict[str, list[str]] = {}
    runs = sorted(
        {(f, r) for f, r, _ in _complete_rounds(root, storage_options, "*", "*")}
    )
    for federation_dir, run_dir in runs:
        federation = federation_dir.removeprefix("federation=")
        run = run_dir.removeprefix("run=")
        if not (
            federation_dir.startswith("federation=")
            and run_dir.startswith("run=")
            and _NAME_RE.match(federation)
            and _NAME_RE.match(run)
        ):
            continue
        store = CheckpointStore(root, federation, run, storage_options=storage_options)
        written = store.migrate_run()
        if written:
            changed[f"{federation}/{run}"] = written
    return changed
