"""SQL silo sources: a table or a query read through an SQLAlchemy URL, at the silo.

Rows are streamed from the database in chunks (a server-side cursor where the
driver has one, e.g. psycopg) and concatenated in the silo's worker; the frame
then goes through the same schema checks as a Parquet or CSV file. Messages
never show a password: URLs are masked before they are printed.

SQLAlchemy is imported only when a source is read, so specs that name SQL
sources validate without it; install ``fedsilo[sql]`` (SQLAlchemy and psycopg)
where silos read SQL.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pandas as pd

from connectors.readers import register_reader
from fedsilo.errors import SiloDataError
from fedsilo.sources import (
    DEFAULT_CHUNKSIZE,
    SqlSource,
    mask_url,
    redact,
    resolve_sqlite_url,
    url_password,
)

__all__ = [
    "DEFAULT_CHUNKSIZE",
    "SqlSource",
    "iter_sql",
    "mask_url",
    "read_sql",
    "read_sql_source",
    "redact",
    "resolve_sqlite_url",
    "url_password",
]

_NUMERIC = frozenset({"integer", "floating", "mixed-integer-float", "decimal"})


def _numeric_objects(frame: pd.DataFrame) -> pd.DataFrame:
    """Turn object columns holding only numbers (Decimal, or ints with NULLs) numeric.

    Chunks are typed one by one: a column NULL in one chunk and numeric in the
    next comes out of ``concat`` as object, which the schema check would call a
    string feature.
    """
    for name in frame.columns:
        column = frame[name]
        if column.dtype == object and pd.api.types.infer_dtype(column) in _NUMERIC:
            frame[name] = pd.to_numeric(column).astype("float64")
    return frame


def iter_sql(silo: str, source: SqlSource) -> Iterator[pd.DataFrame]:
    """Yield a source's rows in chunks of ``source.chunksize``.

    Any failure (missing driver, bad URL, unreachable server, missing table,
    failing query) becomes a SiloDataError naming the silo and the table or
    query, with the URL's password masked.
    """
    try:
        import sqlalchemy as sa
    except ImportError:
        raise SiloDataError(
            silo, "SQL sources need SQLAlchemy: pip install 'fedsilo[sql]'"
        ) from None
    where = source.describe()
    try:
        engine = sa.create_engine(source.url, poolclass=sa.pool.NullPool)
    except Exception as error:
        raise SiloDataError(
            silo, f"cannot read {where}: {_first_line(error, source)}"
        ) from None
    try:
        with engine.connect() as connection:
            streaming = connection.execution_options(
                stream_results=True, max_row_buffer=source.chunksize
            )
            statement: Any
            if source.table is not None:
                if not sa.inspect(connection).has_table(source.table):
                    raise SiloDataError(silo, f"no such table: {where}")
                statement = sa.select(sa.literal_column("*")).select_from(
                    sa.table(source.table)
                )
            else:
                statement = sa.text(source.query or "")
            yield from pd.read_sql(statement, streaming, chunksize=source.chunksize)
    except SiloDataError:
        raise
    except Exception as error:
        raise SiloDataError(
            silo, f"cannot read {where}: {_first_line(error, source)}"
        ) from None
    finally:
        engine.dispose()


@register_reader("sql")
def read_sql_source(
    silo: str, source: SqlSource, storage_options: Mapping[str, Any]
) -> pd.DataFrame:
    """Read an SQL source (the ``sql`` kind's reader; no storage options apply)."""
    return read_sql(silo, source)


def read_sql(silo: str, source: SqlSource) -> pd.DataFrame:
    """Read a whole SQL source at the silo, streamed in chunks and concatenated."""
    chunks = list(iter_sql(silo, source))
    if not chunks:
        return pd.DataFrame()
    frame = chunks[0] if len(chunks) == 1 else pd.concat(chunks, ignore_index=True)
    frame.columns = [str(c) for c in frame.columns]
    return _numeric_objects(frame)


def _first_line(error: BaseException, source: SqlSource) -> str:
    text = str(getattr(error, "orig", None) or error).strip()
    line = text.splitlines()[0] if text else type(error).__name__
    return redact(line, source.url)
