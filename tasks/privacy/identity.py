"""Who a party is: its certificate from the federation's CA, and its signatures.

A silo's certificate carries the URI ``urn:fedsilo:silo:<name>`` in its
Subject Alternative Name, the coordinator's ``urn:fedsilo:coordinator``. A
silo signs what it advertises (its secure-aggregation public keys and their
context) with its certificate's private key (ECDSA P-256 with SHA-256, the
keys ``fedsilo certs`` makes); another party accepts the signature only if the
certificate was issued by the federation's CA, both are valid at the time of
the check, the certificate names exactly that silo, and the signature
verifies (:meth:`TrustStore.silo_key`).

The CA signs leaf certificates directly (``fedsilo certs`` makes no
intermediates), so the chain is the leaf and the CA.

``fedsilo certs issue`` writes these URIs (``fedsilo.certs.role_uri``). This
module reads them itself rather than through ``fedsilo.certs.role_of``:
``fedsilo.certs`` imports Dask's ``Security``, which the pure-maths layer may
not import, even indirectly (the import-linter contract in pyproject.toml).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedsilo.roles import ROLE_PREFIX, SILO, Role, role_of, role_uri
from tasks.privacy.errors import SecureAggregationError

_SIGNATURE = ec.ECDSA(hashes.SHA256())

Clock = Callable[[], dt.datetime]


class IdentityError(SecureAggregationError):
    """A certificate or a signature does not prove who a party claims to be."""


def utc_now() -> dt.datetime:
    """Return the current time, timezone-aware in UTC."""
    return dt.datetime.now(dt.UTC)


def silo_uri(name: str) -> str:
    """Return the URI a silo's certificate carries: ``urn:fedsilo:silo:<name>``."""
    return role_uri(Role(SILO, name))


def silo_name_of(certificate: x509.Certificate) -> str:
    """Return the silo a certificate was issued to; refuse any other certificate."""
    role = role_of(certificate)
    if role is None or role.kind != SILO or not role.silo:
        subject = certificate.subject.rfc4514_string()
        raise IdentityError(
            f"certificate {subject!r} names {role_uri(role) if role else 'no role'}; "
            "a silo's "
            f"certificate names exactly one {ROLE_PREFIX}{SILO}:<name>"
        )
    return role.silo


def _check_window(certificate: x509.Certificate, at: dt.datetime, what: str) -> None:
    if not certificate.not_valid_before_utc <= at <= certificate.not_valid_after_utc:
        raise IdentityError(
            f"{what} is valid from {certificate.not_valid_before_utc:%Y-%m-%d %H:%M} "
            f"to {certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC, not at "
            f"{at:%Y-%m-%d %H:%M} UTC"
        )


def _is_ca(certificate: x509.Certificate) -> bool:
    try:
        constraints = certificate.extensions.get_extension_for_class(
            x509.BasicConstraints
        )
    except x509.ExtensionNotFound:
        return False
    return bool(constraints.value.ca)


def _p256_key(certificate: x509.Certificate, what: str) -> ec.EllipticCurvePublicKey:
    key = certificate.public_key()
    if not (
        isinstance(key, ec.EllipticCurvePublicKey)
        and isinstance(key.curve, ec.SECP256R1)
    ):
        raise IdentityError(f"{what} does not hold an ECDSA P-256 key")
    return key


@dataclass(frozen=True, slots=True)
class SiloIdentity:
    """A silo's name, certificate and the certificate's private key (kept home)."""

    name: str
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def __post_init__(self) -> None:
        named = silo_name_of(self.certificate)
        if named != self.name:
            raise IdentityError(
                f"silo {self.name!r}: its certificate is issued to silo {named!r}"
            )
        if self.key.public_key() != self.certificate.public_key():
            raise IdentityError(
                f"silo {self.name!r}: the key does not belong to its certificate"
            )

    @classmethod
    def load(
        cls, name: str, cert_file: str | Path, key_file: str | Path
    ) -> SiloIdentity:
        """Read a silo's certificate and private key from PEM files."""
        try:
            certificate = x509.load_pem_x509_certificate(Path(cert_file).read_bytes())
        except (OSError, ValueError) as error:
            raise IdentityError(
                f"{cert_file}: not a PEM certificate: {error}"
            ) from None
        try:
            key = serialization.load_pem_private_key(Path(key_file).read_bytes(), None)
        except (OSError, ValueError, TypeError) as error:
            raise IdentityError(
                f"{key_file}: not an unencrypted PEM key: {error}"
            ) from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise IdentityError(f"{key_file}: expected an EC private key")
        return cls(name, certificate, key)

    @property
    def certificate_der(self) -> bytes:
        """Return the certificate in DER, as it travels in advertisements."""
        return self.certificate.public_bytes(serialization.Encoding.DER)

    def sign(self, payload: bytes) -> bytes:
        """Return the DER ECDSA-SHA256 signature of ``payload``."""
        return self.key.sign(payload, _SIGNATURE)


class TrustStore:
    """The federation's CA, and the silo certificates it has already checked."""

    __slots__ = ("_checked", "ca", "clock")

    def __init__(self, ca: x509.Certificate, clock: Clock = utc_now) -> None:
        if not _is_ca(ca):
            raise IdentityError(
                f"{ca.subject.rfc4514_string()!r} is not a CA certificate"
            )
        _p256_key(ca, "the CA certificate")
        try:
            ca.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            raise IdentityError(
                f"{ca.subject.rfc4514_string()!r} is not a self-signed CA"
            ) from None
        self.ca = ca
        self.clock = clock
        self._checked: dict[bytes, tuple[x509.Certificate, str]] = {}

    @classmethod
    def load(cls, ca_file: str | Path, clock: Clock = utc_now) -> TrustStore:
        """Read the CA certificate from a PEM file."""
        try:
            ca = x509.load_pem_x509_certificate(Path(ca_file).read_bytes())
        except (OSError, ValueError) as error:
            raise IdentityError(f"{ca_file}: not a PEM certificate: {error}") from None
        return cls(ca, clock)

    def _issued(self, der: bytes, claimed: str) -> tuple[x509.Certificate, str]:
        known = self._checked.get(der)
        if known is not None:
            return known
        try:
            certificate = x509.load_der_x509_certificate(der)
        except ValueError as error:
            raise IdentityError(
                f"silo {claimed!r}: its certificate is not DER: {error}"
            ) from None
        try:
            certificate.verify_directly_issued_by(self.ca)
        except (ValueError, TypeError, InvalidSignature):
            raise IdentityError(
                f"silo {claimed!r}: its certificate "
                f"{certificate.subject.rfc4514_string()!r} was not issued by the "
                f"federation's CA {self.ca.subject.rfc4514_string()!r}"
            ) from None
        if _is_ca(certificate):
            raise IdentityError(f"silo {claimed!r}: presents a CA certificate")
        _p256_key(certificate, f"silo {claimed!r}'s certificate")
        named = silo_name_of(certificate)
        self._checked[der] = (certificate, named)
        return certificate, named

    def silo_key(
        self, der: bytes, name: str, at: dt.datetime | None = None
    ) -> ec.EllipticCurvePublicKey:
        """Return silo ``name``'s signing key from its DER certificate, checked.

        The certificate must be issued by the CA, both valid at ``at`` (the
        store's clock by default), and name exactly ``urn:fedsilo:silo:<name>``.
        """
        certificate, named = self._issued(der, name)
        if named != name:
            raise IdentityError(
                f"silo {name!r}: the certificate presented is silo {named!r}'s"
            )
        when = self.clock() if at is None else at
        _check_window(self.ca, when, "the federation's CA")
        _check_window(certificate, when, f"silo {name!r}'s certificate")
        return _p256_key(certificate, f"silo {name!r}'s certificate")

    def verify(
        self, der: bytes, name: str, payload: bytes, signature: bytes, what: str
    ) -> None:
        """Check that silo ``name`` signed ``payload`` (``what`` names it in errors)."""
        key = self.silo_key(der, name)
        try:
            key.verify(signature, payload, _SIGNATURE)
        except InvalidSignature:
            raise IdentityError(
                f"silo {name!r}: the signature on its {what} does not verify with "
                "its certificate's key"
            ) from None
