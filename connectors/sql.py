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

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

from fedsilo.errors import SiloDataError

DEFAULT_CHUNKSIZE = 10_000
_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<rest>.*)$", re.S)
_NUMERIC = frozenset({"integer", "floating", "mixed-integer-float", "decimal"})


class SqlSource(BaseModel):
    """A table or a query of a database, named by an SQLAlchemy URL."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(min_length=1)
    table: str | None = Field(None, min_length=1)
    query: str | None = Field(None, min_length=1)
    chunksize: int = Field(DEFAULT_CHUNKSIZE, ge=1)

    @model_validator(mode="after")
    def _table_or_query(self) -> SqlSource:
        if (self.table is None) == (self.query is None):
            raise ValueError("give exactly one of table or query")
        if _SCHEME.match(self.url) is None:
            raise ValueError("url must look like dialect[+driver]://...")
        return self

    def describe(self) -> str:
        """Return the table or query and the masked URL, for messages."""
        what = f"table {self.table!r}" if self.table else f"query {self.query!r}"
        return f"{what} at {mask_url(self.url)}"


# How SQLAlchemy itself splits the user and password off a URL (sqlalchemy.engine.url).
_USERINFO = re.compile(r"^(?P<user>[^:/]*)(?::(?P<password>[^@]*))?@")
_QUERY_PASSWORD = re.compile(r"(?i)([?&](?:password|passwd|pwd)=)([^&]*)")


def url_password(url: str) -> str | None:
    """Return the password a URL holds (in its user part or its query), or None."""
    match = _SCHEME.match(url)
    if match is None:
        return None
    userinfo = _USERINFO.match(match["rest"])
    if userinfo is not None and userinfo["password"]:
        return userinfo["password"]
    query = _QUERY_PASSWORD.search(match["rest"])
    return query[2] if query is not None and query[2] else None


def mask_url(url: str) -> str:
    """Return the URL with any password replaced by ``***``."""
    match = _SCHEME.match(url)
    if match is None:
        return url
    rest = match["rest"]
    userinfo = _USERINFO.match(rest)
    if userinfo is not None and userinfo["password"] is not None:
        rest = f"{userinfo['user']}:***@{rest[userinfo.end() :]}"
    rest = _QUERY_PASSWORD.sub(r"\1***", rest)
    return f"{match['scheme']}://{rest}"


def redact(text: str, url: str) -> str:
    """Remove a URL's password from any text (a driver's error message, say)."""
    password = url_password(url)
    text = text.replace(url, mask_url(url))
    if password:
        for form in {password, unquote(password)}:
            text = text.replace(form, "***")
    return text


def resolve_sqlite_url(url: str, base: Path) -> str:
    """Make a relative SQLite file path in ``url`` absolute, relative to ``base``."""
    match = re.match(r"^(sqlite(?:\+[A-Za-z0-9_]+)?:///)([^/?][^?]*)(\?.*)?$", url)
    if match is None or match[2] == ":memory:":
        return url
    return f"{match[1]}{(base / match[2]).resolve()}{match[3] or ''}"


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
