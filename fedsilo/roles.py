"""The roles a federation's certificates grant, and how a certificate names them.

Every leaf certificate ``fedsilo certs issue`` writes carries one URI subject
alternative name: ``urn:fedsilo:coordinator``, ``urn:fedsilo:scheduler`` or
``urn:fedsilo:silo:<name>``. This module reads and writes those names, with no
Dask import, so that the secure-aggregation maths can check a silo's identity
too (``tasks/privacy/identity.py``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from fedsilo.spec import NAME_PATTERN

ROLE_PREFIX = "urn:fedsilo:"
COORDINATOR = "coordinator"
SCHEDULER = "scheduler"
SILO = "silo"
ROLES = (COORDINATOR, SCHEDULER, SILO)


@dataclass(frozen=True, slots=True)
class Role:
    """What a certificate lets its holder be: a role, and a silo's name."""

    kind: str  # one of ROLES
    silo: str | None = None

    def __str__(self) -> str:
        return self.kind if self.silo is None else f"{self.kind}:{self.silo}"


def role_uri(role: Role) -> str:
    """Return the URI subject alternative name that carries ``role``."""
    return f"{ROLE_PREFIX}{role}"


def parse_role_uri(uri: str) -> Role | None:
    """Return the role a ``urn:fedsilo:...`` URI names, or None for another URI."""
    if not uri.startswith(ROLE_PREFIX):
        return None
    kind, _, silo = uri.removeprefix(ROLE_PREFIX).partition(":")
    if kind == SILO and re.match(NAME_PATTERN, silo) is not None:
        return Role(SILO, silo)
    if kind in (COORDINATOR, SCHEDULER) and not silo:
        return Role(kind)
    return None


def default_role(name: str) -> Role:
    """Return the role ``fedsilo certs issue NAME`` gives without ``--role``."""
    if name in (COORDINATOR, SCHEDULER):
        return Role(name)
    return Role(SILO, name)


def role_of(cert: x509.Certificate) -> Role | None:
    """Return the one role a certificate carries, or None (none, or several)."""
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return None
    roles = {
        role
        for uri in names.value.get_values_for_type(x509.UniformResourceIdentifier)
        if (role := parse_role_uri(uri)) is not None
    }
    return roles.pop() if len(roles) == 1 else None


def peer_role(peercert: dict[str, Any] | None) -> Role | None:
    """Return the role in a verified peer certificate as ``ssl`` gives it.

    ``peercert`` is ``SSLSocket.getpeercert()`` (Dask: ``comm.extra_info
    ["peercert"]``); a certificate with no role, or with more than one, has
    none.
    """
    if not peercert:
        return None
    roles = {
        role
        for kind, value in peercert.get("subjectAltName", ())
        if kind == "URI" and (role := parse_role_uri(str(value))) is not None
    }
    return roles.pop() if len(roles) == 1 else None
