"""A federation's own certificate authority, for mutual TLS between Dask peers.

``fedsilo certs init --dir DIR`` makes a self-signed CA (ECDSA P-256) in
``DIR/ca.pem`` and ``DIR/ca-key.pem``; ``fedsilo certs issue NAME --dir DIR``
signs a certificate for a silo worker, the coordinator or the scheduler into
``DIR/NAME.pem`` and ``DIR/NAME-key.pem``. Dask presents the same certificate
when it listens and when it connects, so every leaf certificate allows both
server and client authentication. Private keys are written with mode 0600.

Every leaf certificate carries its role as a URI subject alternative name:
``urn:fedsilo:coordinator``, ``urn:fedsilo:scheduler`` or
``urn:fedsilo:silo:<name>`` (:func:`role_uri`). A peer reads it back from the
certificate a TLS handshake verified (:func:`peer_role`): the scheduler admits
clients only with the coordinator role and a worker only under the silo name
its certificate names, and a silo worker serves only the scheduler and the
coordinator (``fedsilo/admission.py``, ``tasks/silo/guard.py``).

The scheduler, every worker and the coordinator's client trust only this CA and
require a peer certificate it signed (``distributed.Security`` with
``require_encryption``): see :func:`tls_security` and docs/tls.md.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import ssl
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedsilo.errors import FedsiloError
from fedsilo.roles import (
    COORDINATOR,
    ROLES,
    SCHEDULER,
    SILO,
    Role,
    default_role,
    peer_role,
    role_of,
    role_uri,
)
from fedsilo.spec import NAME_PATTERN

__all__ = [
    "COORDINATOR",
    "ROLES",
    "SCHEDULER",
    "SILO",
    "Role",
    "default_role",
    "peer_role",
    "role_of",
    "role_uri",
]

if TYPE_CHECKING:
    from distributed import Security

CA_CERT = "ca.pem"
CA_KEY = "ca-key.pem"
CA_DAYS = 3650
LEAF_DAYS = 365
MAX_DAYS = 36500
DEFAULT_HOSTS = ("127.0.0.1",)
# Clocks of silos and coordinator differ a little; a certificate that is valid
# from a few minutes ago is not refused by a peer whose clock runs behind.
BACKDATE = dt.timedelta(minutes=5)


class CertError(FedsiloError):
    """A CA or certificate cannot be made, read or used."""


@dataclass(frozen=True, slots=True)
class CertFiles:
    """A certificate and its private key as written, and what the cert says."""

    cert: Path
    key: Path
    subject: str
    not_after: dt.datetime
    dns_names: tuple[str, ...] = ()
    ip_addresses: tuple[str, ...] = ()
    role: Role | None = None


def ca_paths(directory: str | Path) -> tuple[Path, Path]:
    """Return the paths of the CA certificate and key in ``directory``."""
    directory = Path(directory)
    return directory / CA_CERT, directory / CA_KEY


def leaf_paths(directory: str | Path, name: str) -> tuple[Path, Path]:
    """Return the paths of NAME's certificate and key in ``directory``."""
    directory = Path(directory)
    return directory / f"{name}.pem", directory / f"{name}-key.pem"


def _check_days(days: int) -> None:
    if not 1 <= days <= MAX_DAYS:
        raise CertError(f"--days {days}: give a number of days from 1 to {MAX_DAYS}")


def _refuse_overwrite(paths: Sequence[Path], what: str) -> None:
    present = [str(p) for p in paths if p.exists()]
    if present:
        verb = "exists" if len(present) == 1 else "exist"
        raise CertError(
            f"{' and '.join(present)} already {verb}; use --force to replace {what}"
        )


def _make_dir(directory: Path) -> None:
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as error:
        raise CertError(f"{directory}: cannot create: {error.strerror}") from None
    if not directory.is_dir():
        raise CertError(f"{directory}: not a directory")


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` under a temporary name with ``mode``, then rename it."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    except OSError as error:
        raise CertError(f"{path.parent}: cannot write: {error.strerror}") from None
    try:
        os.fchmod(fd, mode)  # mkstemp makes 0600; certificates are public
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _subject(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string()


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public: ec.EllipticCurvePublicKey,
    now: dt.datetime,
    not_after: dt.datetime,
    *,
    ca: bool,
) -> x509.CertificateBuilder:
    """Return a certificate's builder up to its basic constraints and key usage.

    A CA's (``ca``) key signs certificates; a peer's key signs and agrees keys.
    """
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(
            x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True
        )
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=not ca,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )


def init_ca(
    directory: str | Path,
    *,
    days: int = CA_DAYS,
    common_name: str = "fedsilo federation CA",
    force: bool = False,
) -> CertFiles:
    """Create a self-signed ECDSA P-256 CA in ``directory`` (key mode 0600).

    Refuses to replace an existing CA unless ``force``: replacing it makes every
    certificate it issued untrusted.
    """
    _check_days(days)
    directory = Path(directory)
    cert_path, key_path = ca_paths(directory)
    if not force:
        _refuse_overwrite(
            (cert_path, key_path),
            "the CA (every certificate it issued stops being trusted)",
        )
    _make_dir(directory)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    public = key.public_key()
    cert = (
        _builder(name, name, public, now, now + dt.timedelta(days=days), ca=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), False)
        .sign(key, hashes.SHA256())
    )
    _write_atomic(key_path, _key_pem(key), 0o600)
    _write_atomic(cert_path, _cert_pem(cert), 0o644)
    return CertFiles(cert_path, key_path, _subject(cert), cert.not_valid_after_utc)


def load_ca(
    directory: str | Path,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Read the CA certificate and key from ``directory``; check they belong."""
    cert_path, key_path = ca_paths(directory)
    if not cert_path.exists() or not key_path.exists():
        raise CertError(
            f"no CA in {directory} (need {CA_CERT} and {CA_KEY}); "
            f"create one with `fedsilo certs init --dir {directory}`"
        )
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError) as error:
        raise CertError(f"{cert_path}: not a PEM certificate: {error}") from None
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    except (OSError, ValueError, TypeError) as error:
        raise CertError(f"{key_path}: not an unencrypted PEM key: {error}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertError(f"{key_path}: expected an EC private key")
    if key.public_key() != cert.public_key():
        raise CertError(f"{key_path} does not belong to {cert_path}")
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.value.ca:
        raise CertError(f"{cert_path}: not a CA certificate")
    return cert, key


def _check_name(name: str) -> None:
    if re.match(NAME_PATTERN, name) is None:
        raise CertError(
            f"certificate name {name!r}: use letters, digits, '.', '_' and '-' "
            "(a silo's name as the spec has it, or 'coordinator', 'scheduler')"
        )
    if name == "ca" or name.endswith("-key"):
        raise CertError(
            f"certificate name {name!r} would clash with the CA's or a key's file"
        )


def _subject_alt_names(
    name: str, hosts: Sequence[str]
) -> tuple[list[str], list[ipaddress.IPv4Address | ipaddress.IPv6Address]]:
    dns = [name, "localhost"]
    ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for host in hosts:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            if re.match(r"^[A-Za-z0-9*]([A-Za-z0-9.-]*[A-Za-z0-9])?$", host) is None:
                raise CertError(
                    f"--host {host!r}: give an IP address or a DNS name"
                ) from None
            if host not in dns:
                dns.append(host)
        else:
            if ip not in ips:
                ips.append(ip)
    return dns, ips


def issue_cert(
    directory: str | Path,
    name: str,
    *,
    days: int = LEAF_DAYS,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    role: Role | None = None,
    force: bool = False,
) -> CertFiles:
    """Sign a certificate for ``name`` with the CA in ``directory``.

    ``role`` defaults to :func:`default_role` (``coordinator`` and
    ``scheduler`` by name, any other name a silo's). The certificate carries
    subject alternative names (the role's URI, DNS ``name``, ``localhost``,
    and each of ``hosts`` as an IP address or DNS name) and both
    serverAuth and clientAuth usages, since a Dask peer presents the same
    certificate when it listens and when it connects. It expires with the CA at
    the latest. Written to ``NAME.pem`` and ``NAME-key.pem`` (mode 0600).
    """
    _check_name(name)
    _check_days(days)
    role = default_role(name) if role is None else role
    if role.kind not in ROLES or (role.kind == SILO) != (role.silo is not None):
        raise CertError(f"role {role}: give coordinator, scheduler or silo:<name>")
    if role.silo is not None:
        _check_name(role.silo)
    cert_path, key_path = leaf_paths(directory, name)
    ca_cert, ca_key = load_ca(directory)
    if not force:
        _refuse_overwrite((cert_path, key_path), f"{name}'s certificate")
    dns, ips = _subject_alt_names(name, hosts)
    now = _now()
    not_after = min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    if not_after <= now:
        raise CertError(f"the CA in {directory} has expired; make a new one")
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key()
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        _builder(subject, ca_cert.subject, public, now, not_after, ca=False)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(role_uri(role))]
                + [x509.DNSName(d) for d in dns]
                + [x509.IPAddress(i) for i in ips]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                ca_ski.value
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    _make_dir(cert_path.parent)
    _write_atomic(key_path, _key_pem(key), 0o600)
    _write_atomic(cert_path, _cert_pem(cert), 0o644)
    return CertFiles(
        cert_path,
        key_path,
        _subject(cert),
        cert.not_valid_after_utc,
        tuple(dns),
        tuple(str(i) for i in ips),
        role,
    )


def tls_security(
    ca_file: str | Path, cert_file: str | Path, key_file: str | Path
) -> Security:
    """Return a Dask ``Security`` for mutual TLS in every role, checked now.

    One certificate serves as scheduler, worker and client certificate; peers
    must present a certificate signed by the CA in ``ca_file``, and plain TCP is
    refused (``require_encryption``). Unreadable or mismatched files raise
    :class:`CertError` naming them.
    """
    from distributed import Security

    files = {"CA file": ca_file, "certificate": cert_file, "key": key_file}
    for what, path in files.items():
        if not Path(path).is_file():
            raise CertError(f"TLS {what} {path}: no such file")
    ca, cert, key = str(ca_file), str(cert_file), str(key_file)
    in_every_role = {
        f"tls_{role}_{part}": path
        for role in ("client", "scheduler", "worker")
        for part, path in (("cert", cert), ("key", key))
    }
    security = Security(tls_ca_file=ca, require_encryption=True, **in_every_role)
    try:
        security.get_connection_args("client")
    except (ssl.SSLError, OSError, ValueError) as error:
        raise CertError(
            f"cannot use TLS files ca={ca} cert={cert} key={key}: {error}"
        ) from None
    return security
