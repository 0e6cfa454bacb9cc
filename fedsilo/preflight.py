"""Check the silos' sources from the coordinator before any cluster or flow starts.

A run reads and checks every silo's rows at the silo's worker, after Prefect
and the cluster have started (seconds to tens of seconds). The mistakes found
most often (a file not written yet, a target or feature column misspelt,
silos whose columns disagree) are visible much sooner from the files' schemas:
:func:`preflight` reads each Parquet footer (or a CSV's first rows), never the
rows themselves, and applies the same schema checks as the silos' opening
(``tasks.silo.schema.check_schemas``), so its errors read the same. Each error
names the silo, the column and the file, and says how to fix it (the
``fedsilo datasets split`` command in the spec's header, the columns that do
exist).

Only what the coordinator may read is checked. Not checked, and left to the
silo: silos whose ``train`` is null (their worker's own config holds the
sources), SQL and other registered source kinds, local paths when the
cluster's scheduler is not on this machine (such paths are the silos' own),
and CSV files at URLs (their column types need rows; a local CSV's first
rows are read, the silos' files being on this machine). A URL the
coordinator may not open (no credentials here, s3fs not installed) is left
to the silo too: its worker may hold what the coordinator lacks. Of a
Parquet source the coordinator reads the footer only: the schema and the row
count are kept, the rest (row groups' statistics) is dropped unread.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from fedsilo.errors import SiloDataError
from fedsilo.spec import FederationSpec, SiloSpec

if TYPE_CHECKING:
    from tasks.protocol.messages import SiloSchema

#: Rows of a CSV file read to infer its column types.
CSV_ROWS = 1000
#: Sources read at once (each read is a file footer, or one request to a store).
READERS = 8
#: Columns listed in a message before "... (N in all)".
SHOWN_COLUMNS = 8
#: File suffixes and their formats, as the file connector reads them
#: (``connectors.files.FORMATS``; that module imports pandas, which a missing
#: file does not need).
FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".csv.gz": "csv"}
_SPLIT_COMMAND = re.compile(r"(fedsilo datasets split\s.*\S)")

__all__ = ["Checked", "preflight"]


@dataclass(frozen=True, slots=True)
class Checked:
    """What the preflight found: the silos it checked and why it left others."""

    silos: tuple[str, ...]
    skipped: dict[str, str] = field(default_factory=dict)  # silo -> why


@dataclass(frozen=True, slots=True)
class _Table:
    """One source's column names, its schema, and its rows.

    ``schema`` is a pyarrow schema (Parquet) or a zero-row pandas frame (a
    CSV's first rows): what pandas makes of it gives the dtypes the silo sees.
    """

    location: str
    names: tuple[str, ...]
    schema: Any
    rows: int


@dataclass(frozen=True, slots=True)
class _Silo:
    """One silo's sources as read: train, and test unless held out."""

    name: str
    train: _Table
    test: _Table | None  # None: the silo holds out test_fraction of train
    n_train: int
    n_test: int
    test_source: str


class _Unreachable(Exception):
    """The coordinator may not open a URL the silo's worker may: not checked."""


def preflight(spec: FederationSpec, spec_path: str | Path | None = None) -> Checked:
    """Check every silo source the coordinator may read; raise on the first problem.

    Parameters
    ----------
    spec : FederationSpec
        The federation, its relative paths already resolved (``load_spec``).
    spec_path : str or Path, optional
        The spec file, named in messages; a ``fedsilo datasets split`` command
        in its header comments is suggested when a silo's file is missing.

    Returns
    -------
    Checked
        The silos checked and, for the others, why they were left to the silo.

    Raises
    ------
    fedsilo.errors.SiloDataError
        Naming the silo, the column and the file, with the fix.
    """
    fix = _Fix(spec_path)
    local = _scheduler_here(spec.cluster.address)
    skipped: dict[str, str] = {}
    wanted: list[tuple[int, SiloSpec]] = []
    for index, silo in enumerate(spec.silos):
        why = _not_checked(silo, local)
        if why is None:
            wanted.append((index, silo))
        else:
            skipped[silo.name] = why
    with ThreadPoolExecutor(max_workers=min(READERS, max(1, len(wanted)))) as pool:
        found = list(pool.map(lambda item: _read_silo(item[0], item[1], fix), wanted))
    silos: list[_Silo] = []
    for (_, silo), result in zip(wanted, found, strict=True):
        if isinstance(result, SiloDataError):
            raise result
        if result is None:
            skipped[silo.name] = "its URL cannot be opened from here (read at the silo)"
        else:
            silos.append(result)
    if silos:
        _check_across(spec, silos, fix)
    return Checked(tuple(s.name for s in silos), skipped)


def _not_checked(silo: SiloSpec, local: bool) -> str | None:
    """Return why a silo's sources are left to the silo, or None to check them."""
    if silo.train is None:
        return "configured at the silo (fedsilo worker --data)"
    for source in (silo.train, silo.test):
        if source is not None and not isinstance(source, str):
            return "not a file source (read at the silo)"
    if not local and isinstance(silo.train, str) and not _is_url(silo.train):
        return "a path on the silo's machine (the scheduler is elsewhere)"
    for source in (silo.train, silo.test):
        if isinstance(source, str) and _is_url(source) and _format(source) == "csv":
            # A CSV's types need rows; the coordinator reads a URL's footer only.
            return "a CSV at a URL (its rows are read at the silo only)"
    return None


def _read_silo(index: int, silo: SiloSpec, fix: _Fix) -> _Silo | SiloDataError | None:
    """Read a silo's sources' schemas; None if its URL cannot be opened from here."""
    assert isinstance(silo.train, str)  # _not_checked lets file sources through only
    try:
        train = _read_table(silo, silo.train, f"silos.{index}.train", fix)
        if isinstance(silo.test, str):
            test = _read_table(silo, silo.test, f"silos.{index}.test", fix)
            return _Silo(silo.name, train, test, train.rows, test.rows, "file")
    except _Unreachable:
        return None
    except SiloDataError as error:
        return error
    n = train.rows  # the silo holds out test_fraction of its rows, as it will
    n_test = round(n * silo.test_fraction) if n > 1 else 0
    return _Silo(silo.name, train, None, n - n_test, n_test, "holdout")


def _read_table(silo: SiloSpec, location: str, field: str, fix: _Fix) -> _Table:
    """Read one source's schema and row count (Parquet footers, a CSV's head)."""
    kind = _format(location)
    if kind is None:
        raise SiloDataError(
            silo.name,
            f"unknown file type of {location!r} (use .parquet or .csv; "
            f"{field}{fix.where})",
        )
    try:
        fs, path = fsspec.core.url_to_fs(location, **silo.storage_options)
        exists = fs.exists(path)
    except Exception as error:
        if _is_url(location):
            raise _Unreachable(location) from error
        raise SiloDataError(
            silo.name, f"cannot read {location}: {_first_line(error)}"
        ) from None
    if not exists:
        raise SiloDataError(
            silo.name, f"no such file: {location} ({field}{fix.where}); {fix.missing}"
        )
    try:
        if kind == "csv":
            import pandas as pd

            with fs.open(path, "rb", compression="infer") as handle:
                frame = pd.read_csv(handle, nrows=CSV_ROWS)
            frame.columns = [str(c) for c in frame.columns]
            return _Table(location, tuple(frame.columns), frame.iloc[:0], len(frame))
        if fs.isdir(path):
            import pyarrow.dataset as ds

            dataset = ds.dataset(
                path, filesystem=fs, format="parquet", partitioning="hive"
            )
            schema, rows = dataset.schema, dataset.count_rows()
        else:
            with fs.open(path, "rb") as handle:
                parquet = pq.ParquetFile(handle)
                schema, rows = parquet.schema_arrow, parquet.metadata.num_rows
    except PermissionError as error:
        if _is_url(location):
            raise _Unreachable(location) from error
        raise SiloDataError(
            silo.name, f"cannot read {location}: permission denied"
        ) from None
    except Exception as error:
        raise SiloDataError(
            silo.name, f"cannot read {location}: {_first_line(error)}"
        ) from None
    return _Table(location, _column_names(schema), schema, rows)


def _format(location: str) -> str | None:
    """Return "parquet" or "csv" from a location's suffix (a folder is Parquet)."""
    lowered = location.lower().rstrip("/")
    for suffix, kind in sorted(FORMATS.items(), key=lambda item: -len(item[0])):
        if lowered.endswith(suffix):
            return kind
    return "parquet" if "." not in lowered.rsplit("/", 1)[-1] else None


def _column_names(schema: pa.Schema) -> tuple[str, ...]:
    """Return the columns pandas makes of a schema (its stored index is no column)."""
    index = {
        name
        for name in (schema.pandas_metadata or {}).get("index_columns", [])
        if isinstance(name, str)
    }
    return tuple(str(name) for name in schema.names if name not in index)


def _check_silo(silo: _Silo, target: str) -> None:
    """Apply a silo's own checks of its files, in the order its opening does."""
    for split, table in (("train", silo.train), ("test", silo.test or silo.train)):
        if target not in table.names:
            raise SiloDataError(
                silo.name,
                f"target column is missing from the {split} rows in "
                f"{table.location}{_close(target, table.names)}",
                column=target,
            )
    test = silo.test
    if test is None or sorted(silo.train.names) == sorted(test.names):
        return
    column = sorted(set(silo.train.names) ^ set(test.names))[0]
    has, lacks = (
        (silo.train, test) if column in silo.train.names else (test, silo.train)
    )
    raise SiloDataError(
        silo.name,
        f"test file columns differ from the train file: it is in {has.location}, "
        f"not in {lacks.location}",
        column=column,
    )


def _check_across(spec: FederationSpec, silos: Sequence[_Silo], fix: _Fix) -> None:
    """Apply the silos' schema checks; add the file and the columns that exist."""
    target = spec.target
    if all(target not in silo.train.names for silo in silos):
        first = silos[0].train
        raise SiloDataError(
            silos[0].name,
            f"target column is missing from {first.location}, as from every silo "
            f"checked: fix `target` in {fix.spec}{_close(target, first.names)}; "
            f"its columns are {_listed(first.names)}",
            column=target,
        )
    for silo in silos:
        _check_silo(silo, target)
    from tasks.silo.schema import check_schemas

    try:
        check_schemas(
            [_schema(silo) for silo in silos],
            target=target,
            task=spec.task,
            categorical=spec.preprocessing.categorical,
        )
    except SiloDataError as error:
        raise _explained(error, {silo.name: silo.train for silo in silos}) from None


def _schema(silo: _Silo) -> SiloSchema:
    """Return what the silo's opening will report of its table (no labels)."""
    import pandas as pd

    from tasks.protocol.messages import SiloSchema
    from tasks.silo.schema import describe_columns

    schema = silo.train.schema
    frame = (
        schema if isinstance(schema, pd.DataFrame) else schema.empty_table().to_pandas()
    )
    frame.columns = [str(c) for c in frame.columns]
    return SiloSchema(
        silo=silo.name,
        worker="",
        columns=describe_columns(frame),
        n_train=silo.n_train,
        n_test=silo.n_test,
        test_source=silo.test_source,
    )


def _explained(error: SiloDataError, tables: Mapping[str, _Table]) -> SiloDataError:
    """Return a schema error with the silo's file and the columns it does have."""
    table = tables.get(error.silo)
    if table is None:
        return error
    column = f", column {error.column!r}" if error.column else ""
    reason = error.reason.removeprefix(f"silo {error.silo!r}{column}: ")
    reason = f"{reason} in {table.location}"
    if error.column is not None and error.column not in table.names:
        others = {
            name
            for silo, other in tables.items()
            if silo != error.silo
            for name in other.names
        }
        own = [name for name in table.names if name not in others] or table.names
        reason += f"{_close(error.column, own)}; its columns are {_listed(table.names)}"
    return SiloDataError(error.silo, reason, column=error.column)


class _Fix:
    """How messages name the spec, and the command that writes its silos' files."""

    def __init__(self, spec_path: str | Path | None) -> None:
        self.spec = str(spec_path) if spec_path is not None else "the spec"
        self.where = f" in {spec_path}" if spec_path is not None else ""
        command = _split_command(spec_path)
        if command is not None:
            self.missing = (
                f"write the silos' files with `{command}` (the command in the "
                "spec's header), run from the folder it was made in"
            )
        else:
            self.missing = (
                "write the file, or fix the path (a relative path is relative to "
                "the spec's folder)"
            )


def _split_command(spec_path: str | Path | None) -> str | None:
    """Return the ``fedsilo datasets split`` command in the spec's header comments."""
    if spec_path is None:
        return None
    try:
        lines = Path(spec_path).read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if not line.lstrip().startswith("#"):
            if line.strip():
                break  # the header ends at the first non-comment line
            continue
        match = _SPLIT_COMMAND.search(line)
        if match is not None:
            return match[1]
    return None


def _close(name: str, candidates: Sequence[str]) -> str:
    """Return "; did you mean 'x'?" for a near spelling of ``name``, or ""."""
    near = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    if not near:
        near = [
            c
            for c in candidates
            if name.lower() in c.lower() or c.lower() in name.lower()
        ]
    return f"; did you mean {near[0]!r}?" if near else ""


def _listed(names: Sequence[str]) -> str:
    """Return the first column names, quoted, and how many there are in all."""
    shown = ", ".join(repr(n) for n in names[:SHOWN_COLUMNS])
    return (
        shown if len(names) <= SHOWN_COLUMNS else f"{shown}, ... ({len(names)} in all)"
    )


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _is_url(location: str) -> bool:
    return re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", location) is not None and not (
        location.startswith("file://")
    )


def _scheduler_here(address: str | None) -> bool:
    """Return whether the silo workers run on this machine (embedded, or loopback)."""
    if address is None:
        return True
    location = address.split("://", 1)[-1]
    if location.startswith("["):  # [v6]:port
        host = location[1:].split("]", 1)[0]
    else:
        host = location.rsplit(":", 1)[0] if location.count(":") == 1 else location
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
