"""Where a silo's rows come from, as the spec describes them (no reading here).

The reading is the connectors' business (``connectors/files.py``,
``connectors/sql.py``); this module holds what a spec or a silo config may say
of a source, how to print it without its password, and how to find a
credential the central spec must not hold (options named as credentials, URLs
with user-info).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
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


#: The one option of the checkpoint store's ``storage_options`` that names where
#: its credentials are instead of holding them: a Prefect Secret block whose
#: mapping the coordinator merges in when it opens the store.
CREDENTIALS_BLOCK = "credentials_block"
#: Words that make an option's name a credential, its name split at ``_ - .``
#: and case changes (``aws_secret_access_key``, ``SSECustomerKey``, ``sas_token``).
CREDENTIAL_WORDS = frozenset(
    {
        "auth",
        "authorization",
        "credential",
        "credentials",
        "key",
        "passphrase",
        "passwd",
        "password",
        "pkey",
        "pwd",
        "sas",
        "secret",
        "sig",
        "signature",
        "token",
    }
)
#: Names that are credentials though none of their words says so (Azure's).
CREDENTIAL_NAMES = frozenset({"connectionstring"})
_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")
_QUERY = re.compile(r"[?&]([^=&#]+)=[^&#]*")


def is_credential_name(name: str) -> bool:
    """Return whether an option or query parameter of this name holds a credential."""
    words = {w.lower() for w in _WORD.findall(name)}
    flat = re.sub(r"[^a-z0-9]", "", name.lower())
    return bool(words & CREDENTIAL_WORDS) or flat in CREDENTIAL_NAMES


def url_credential(url: str) -> str | None:
    """Describe the credential a URL carries, or None.

    That is user-info (``scheme://user:pw@host``, ``s3://KEY@bucket``) or a
    query parameter named as a credential (``?sig=``, ``X-Amz-Signature``). The
    description never holds any of the URL's user-info or values.
    """
    match = _SCHEME.match(url)
    if match is None:
        return None
    rest = match["rest"]
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    if "@" in authority:
        user = authority.rsplit("@", 1)[0]
        return "user-info (***:***@)" if ":" in user else "user-info (***@)"
    for name in _QUERY.findall(rest):
        if is_credential_name(unquote(name)):
            return f"the query parameter {unquote(name)!r}"
    return None


def find_credential(
    options: Mapping[str, Any], allowed: frozenset[str] = frozenset()
) -> tuple[str, str] | None:
    """Return (dotted path, what) of the first credential in storage options.

    A credential is an option named as one (at any depth, ``allowed`` names at
    the top excepted) or a string value that is a URL carrying one
    (:func:`url_credential`).
    """

    def walk(value: Any, path: str) -> tuple[str, str] | None:
        if isinstance(value, Mapping):
            for key, inner in value.items():
                where = f"{path}.{key}" if path else str(key)
                if not (path == "" and key in allowed) and is_credential_name(str(key)):
                    return where, "a credential"
                found = walk(inner, where)
                if found is not None:
                    return found
        elif isinstance(value, list | tuple):
            for i, inner in enumerate(value):
                found = walk(inner, f"{path}.{i}")
                if found is not None:
                    return found
        elif isinstance(value, str):
            carried = url_credential(value)
            if carried is not None:
                return path, f"a URL with {carried}"
        return None

    return walk(options, "")


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
