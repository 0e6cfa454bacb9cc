"""Kinds of silo source, as the spec describes them: a registry of descriptions.

A source is a bare path or fsspec URL (kind ``path``), or a mapping: with a
``kind`` key, the source kind of that name; without one, an SQL source
(kind ``sql``, ``fedsilo.sources.SqlSource``). Each kind is a
:class:`SourceKind` registered with :func:`register_source_kind`: the type its
description validates as, and how the spec resolves it against the spec's
folder, finds a password or another credential in it, records it in
checkpoints and keeps it out of messages. The connector that reads it
(``connectors/``) is registered under the same name.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Annotated, Any, Union

from pydantic import (
    Discriminator,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    Tag,
    TypeAdapter,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema

from fedsilo.registry import Registry
from fedsilo.sources import (
    SqlSource,
    mask_url,
    resolve_sqlite_url,
    url_credential,
    url_password,
)

#: What a checkpoint records in place of a source's hidden part (an SQL URL).
HIDDEN = "<hidden>"


class SourceKind:
    """How the spec treats one kind of source; subclasses override what differs.

    ``description`` is the type a source of this kind validates as (``str``
    for paths, a frozen pydantic model for a mapping, whose ``kind`` field
    then holds ``name``).
    """

    def __init__(self, name: str, description: type[Any]) -> None:
        self.name = name
        self.description = description

    def holds(self, source: object) -> bool:
        """Return whether a validated source is of this kind."""
        return isinstance(source, self.description)

    def resolve(self, source: Any, base: Path) -> Any:
        """Return the source with relative paths made absolute against ``base``."""
        return source

    def password(self, source: Any) -> str | None:
        """Return a password the source holds, which a central spec must not."""
        return None

    def credential(self, source: Any) -> str | None:
        """Describe any other credential the source carries (never its value)."""
        return None

    def public(self, source: Any) -> Any:
        """Return the source as checkpoints may record it (JSON)."""
        if isinstance(source, str):
            return source
        return source.model_dump(mode="json")

    def private_texts(self, source: Any) -> list[str]:
        """Return the texts naming the source, to keep out of the silo's messages."""
        return [str(source)]


def _is_url(location: str) -> bool:
    return re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", location) is not None


class PathKind(SourceKind):
    """A Parquet or CSV file (or folder), by local path or fsspec URL."""

    def __init__(self) -> None:
        super().__init__("path", str)

    def resolve(self, source: str, base: Path) -> str:
        """Make a relative local path absolute; URLs and absolute paths stay."""
        if _is_url(source) or Path(source).is_absolute():
            return source
        return str((base / source).resolve())

    def credential(self, source: str) -> str | None:
        """Describe the user-info or signed query parameter of a URL, if any."""
        return url_credential(source) if _is_url(source) else None


class SqlKind(SourceKind):
    """A table or a query of a database (``SqlSource``)."""

    def __init__(self) -> None:
        super().__init__("sql", SqlSource)

    def resolve(self, source: SqlSource, base: Path) -> SqlSource:
        """Make a relative SQLite file in the URL absolute."""
        url = resolve_sqlite_url(source.url, base)
        return source.model_copy(update={"url": url})

    def password(self, source: SqlSource) -> str | None:
        """Return the password the URL holds, if any."""
        return url_password(source.url)

    def public(self, source: SqlSource) -> Any:
        """Return the source with its URL hidden."""
        return {**source.model_dump(mode="json"), "url": HIDDEN}

    def private_texts(self, source: SqlSource) -> list[str]:
        """Return the URL, raw and masked."""
        return [source.url, mask_url(source.url)]


_KINDS: Registry[SourceKind] = Registry("source kind")


def register_source_kind(kind: SourceKind) -> SourceKind:
    """Make ``kind`` a source the spec and silo configs accept."""
    _KINDS.register(kind.name, kind)
    _union.cache_clear()
    return kind


def source_kind(source: object) -> SourceKind:
    """Return the kind of a validated source."""
    for name in _KINDS:
        kind = _KINDS.get(name)
        if kind.holds(source):
            return kind
    raise TypeError(f"not a registered kind of source: {type(source).__name__}")


def _tag(value: Any) -> str:
    """Return the kind a raw or validated source names (what validation picks)."""
    if isinstance(value, dict):
        return str(value.get("kind", "sql"))
    for name in _KINDS:
        if _KINDS.get(name).holds(value):
            return name
    return "path"  # anything else fails as a path, with pydantic's message


@functools.cache
def _union() -> TypeAdapter[Any]:
    """Return the tagged union of the registered kinds (rebuilt on registration)."""
    choices = tuple(Annotated[_KINDS.get(k).description, Tag(k)] for k in _KINDS)
    union: Any = Annotated[Union[choices], Discriminator(_tag)]  # noqa: UP007
    return TypeAdapter(union)


class _SourceSchema:
    """Validates, serializes and describes a source as the registered kinds say."""

    def __get_pydantic_core_schema__(
        self, source_type: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            lambda value: _union().validate_python(value),
            serialization=core_schema.plain_serializer_function_ser_schema(
                lambda value, info: _union().dump_python(value, mode=info.mode),
                info_arg=True,
            ),
        )

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return handler(_union().core_schema)


#: Where a silo's rows are: a Parquet/CSV path or fsspec URL, an SQL source
#: ``{url, table}`` / ``{url, query}``, or ``{kind: NAME, ...}`` of another
#: registered kind. Type checkers see the built-in kinds.
DataSource = Annotated[str | SqlSource, _SourceSchema()]

register_source_kind(PathKind())
register_source_kind(SqlKind())
