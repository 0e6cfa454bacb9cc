"""Connectors by source kind: the reader registered for each kind of source.

A reader takes the silo's name, a validated source (as
``fedsilo/source_kinds.py`` describes it) and the silo's storage options, and
returns the source's rows as a pandas DataFrame with string column names; any
failure is a ``SiloDataError`` naming the silo and never a password. Each
connector module registers its reader with :func:`register_reader`;
``connectors/__init__.py`` imports the built-in ones.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pandas as pd

from fedsilo.registry import Registry
from fedsilo.source_kinds import source_kind

Reader = Callable[[str, Any, Mapping[str, Any]], pd.DataFrame]
_READERS: Registry[Reader] = Registry("connector")


def register_reader(kind: str) -> Callable[[Reader], Reader]:
    """Register a reader for the sources of ``kind`` (a function decorator)."""

    def register(reader: Reader) -> Reader:
        return _READERS.register(kind, reader)

    return register


def read_source(
    silo: str, source: Any, storage_options: Mapping[str, Any] | None = None
) -> pd.DataFrame:
    """Read one silo source with the connector registered for its kind."""
    return _READERS.get(source_kind(source).name)(silo, source, storage_options or {})
