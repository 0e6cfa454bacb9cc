"""A registry of kinds: each name maps to one class or object, with clear errors.

Strategies, model kinds and connectors are each looked up by the ``kind`` a
spec names instead of by a chain of ``if`` tests; adding one is registering it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

from fedsilo.errors import RegistryError

T = TypeVar("T")


class Registry(Generic[T]):
    """Items registered under a unique kind, in registration order."""

    def __init__(self, what: str) -> None:
        self.what = what  # e.g. "strategy kind", for messages
        self._items: dict[str, T] = {}

    def register(self, kind: str, item: T) -> T:
        """Add ``item`` under ``kind``; a kind already taken is refused."""
        if kind in self._items:
            raise RegistryError(
                f"{self.what} {kind!r} is already registered "
                f"(known: {', '.join(self._items)})"
            )
        self._items[kind] = item
        return item

    def get(self, kind: str) -> T:
        """Return what ``kind`` is registered as; an unknown kind is refused."""
        try:
            return self._items[kind]
        except (KeyError, TypeError):
            raise RegistryError(self.unknown(kind)) from None

    def unknown(self, kind: object) -> str:
        """Return the message for an unknown ``kind``, naming the known ones."""
        return f"unknown {self.what} {kind!r}; known: {', '.join(self._items)}"

    def kinds(self) -> list[str]:
        """Return the registered kinds, in registration order."""
        return list(self._items)

    def __contains__(self, kind: object) -> bool:
        try:
            return kind in self._items
        except TypeError:
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._items))
