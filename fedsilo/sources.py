"""Where a silo's rows come from, as the spec describes them (no reading here).

The reading is the connectors' business (``connectors/files.py``,
``connectors/sql.py``); this module holds what a spec or a silo config may say
of a source and how to print it without its password.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

from pydantic import BaseModel, ConfigDict, Field, model_validator

DEFAULT_CHUNKSIZE = 10_000
_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<rest>.*)$", re.S)


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
