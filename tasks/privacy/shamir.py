"""Shamir secret sharing of 32-byte secrets over a prime field, t of n.

A secret ``s`` (32 bytes, read as a big-endian integer below ``2**256``) is
the constant term of a random polynomial ``f`` of degree ``t - 1`` over
GF(p), ``p = 2**256 + 297`` (the smallest prime above ``2**256``, so every
32-byte string is a field element). The share of the party at ``x`` (an
integer ``1 <= x < p``, unique per party) is ``(x, f(x))``. Any ``t`` shares
fix ``f`` and give ``s = f(0)`` by Lagrange interpolation; ``t - 1`` shares are
consistent with every secret (for each candidate ``s'`` exactly one polynomial
of degree ``t - 1`` passes through ``(0, s')`` and the ``t - 1`` points), so
they say nothing about ``s``.

:func:`combine` given more than ``t`` shares checks that the extra ones lie
on the polynomial the first ``t`` define, so a corrupted share among
redundant ones is found (:class:`InconsistentSharesError`); with exactly ``t``
shares a wrong one cannot be told from a right one and gives a wrong secret,
which the caller checks where it can (a reconstructed private key against its
public key).

Coefficients come from :mod:`secrets` (the operating system's CSPRNG).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from tasks.privacy.errors import SecureAggregationError

#: The field's prime: the smallest prime above 2**256.
PRIME = 2**256 + 297
#: Length of a secret in bytes.
SECRET_BYTES = 32
#: Length of a share's value ``y`` in bytes (big-endian, below PRIME).
SHARE_BYTES = 33


class ShamirError(SecureAggregationError):
    """Shares cannot be made or combined."""


class InvalidShareError(ShamirError):
    """A share's point or value lies outside the field, or its encoding is wrong."""


class DuplicateShareError(ShamirError):
    """Two shares are at the same point ``x``."""


class NotEnoughSharesError(ShamirError):
    """Fewer shares than the threshold: the secret cannot be reconstructed."""


class InconsistentSharesError(ShamirError):
    """More than ``t`` shares that do not lie on one polynomial of degree t-1."""


@dataclass(frozen=True, slots=True)
class Share:
    """One party's share: the point ``x`` and the polynomial's value ``y`` there."""

    x: int
    y: int

    def value_bytes(self) -> bytes:
        """Return ``y`` as :data:`SHARE_BYTES` big-endian bytes."""
        return self.y.to_bytes(SHARE_BYTES, "big")

    @classmethod
    def from_bytes(cls, x: int, value: bytes) -> Share:
        """Return the share at ``x`` whose value :meth:`value_bytes` wrote."""
        if len(value) != SHARE_BYTES:
            raise InvalidShareError(
                f"share at x={x}: a value has {SHARE_BYTES} bytes, got {len(value)}"
            )
        share = cls(x, int.from_bytes(value, "big"))
        _check_share(share)
        return share


def _check_threshold(threshold: int, n_shares: int) -> None:
    if not 1 <= threshold <= n_shares:
        raise ShamirError(
            f"threshold {threshold}: give 1 <= threshold <= {n_shares} (the shares)"
        )


def _check_share(share: Share) -> None:
    if not (isinstance(share.x, int) and 0 < share.x < PRIME):
        raise InvalidShareError(f"share at x={share.x!r}: x must be in [1, p)")
    if not (isinstance(share.y, int) and 0 <= share.y < PRIME):
        raise InvalidShareError(f"share at x={share.x}: its value is not below p")


def _secret_int(secret: bytes) -> int:
    if len(secret) != SECRET_BYTES:
        raise ShamirError(f"a secret has {SECRET_BYTES} bytes, got {len(secret)}")
    return int.from_bytes(secret, "big")


def _evaluate(coefficients: Sequence[int], x: int) -> int:
    """Return the polynomial (constant term first) at ``x``, by Horner's rule."""
    value = 0
    for coefficient in reversed(coefficients):
        value = (value * x + coefficient) % PRIME
    return value


def split(secret: bytes, threshold: int, points: Sequence[int]) -> tuple[Share, ...]:
    """Return one share of ``secret`` per point; any ``threshold`` of them rebuild it.

    ``points`` are the parties' ``x`` (distinct, in ``[1, p)``), in the order
    the shares are returned.
    """
    _check_threshold(threshold, len(points))
    if len(set(points)) != len(points):
        raise DuplicateShareError(f"points {list(points)} repeat an x")
    coefficients = [_secret_int(secret)]
    coefficients += [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    shares = tuple(Share(x, _evaluate(coefficients, x)) for x in points)
    for share in shares:
        _check_share(share)
    return shares


def _inverses(values: Sequence[int]) -> list[int]:
    """Return the inverses of non-zero field elements with one exponentiation."""
    prefix = [1]
    for value in values:
        prefix.append(prefix[-1] * value % PRIME)
    inverse = pow(prefix[-1], -1, PRIME)
    out = [0] * len(values)
    for i in range(len(values) - 1, -1, -1):
        out[i] = inverse * prefix[i] % PRIME
        inverse = inverse * values[i] % PRIME
    return out


def _lagrange_at(shares: Sequence[Share], at: int) -> int:
    """Return the value at ``at`` of the polynomial through ``shares``.

    The basis polynomials' numerators and denominators are products of
    differences of the points, reduced once; one exponentiation inverts all
    denominators.
    """
    xs = [share.x for share in shares]
    numerators = []
    denominators = []
    for i, xi in enumerate(xs):
        numerator = 1
        denominator = 1
        for j, xj in enumerate(xs):
            if j != i:
                numerator *= at - xj
                denominator *= xi - xj
        numerators.append(numerator % PRIME)
        denominators.append(denominator % PRIME)
    total = 0
    for share, numerator, inverse in zip(
        shares, numerators, _inverses(denominators), strict=True
    ):
        total += share.y * numerator * inverse
    return total % PRIME


def _checked(shares: Sequence[Share]) -> list[Share]:
    seen: set[int] = set()
    for share in shares:
        _check_share(share)
        if share.x in seen:
            raise DuplicateShareError(f"two shares at x={share.x}")
        seen.add(share.x)
    return list(shares)


def interpolate(shares: Sequence[Share], at: int = 0) -> int:
    """Return the value at ``at`` of the least-degree polynomial through ``shares``."""
    shares = _checked(shares)
    if not shares:
        raise NotEnoughSharesError("no shares to interpolate")
    return _lagrange_at(shares, at % PRIME)


def combine(shares: Sequence[Share], threshold: int) -> bytes:
    """Return the secret of ``threshold``-of-n ``shares``; check any extra shares.

    Raises :class:`NotEnoughSharesError` below the threshold,
    :class:`DuplicateShareError` for two shares at one ``x``,
    :class:`InvalidShareError` for a share outside the field and
    :class:`InconsistentSharesError` when shares beyond the first ``threshold``
    do not lie on their polynomial or the secret is not 32 bytes.
    """
    if threshold < 1:
        raise ShamirError(f"threshold {threshold}: give 1 or more")
    shares = _checked(shares)
    if len(shares) < threshold:
        raise NotEnoughSharesError(
            f"{len(shares)} shares, {threshold} needed to reconstruct the secret"
        )
    base, extra = shares[:threshold], shares[threshold:]
    for share in extra:
        if _lagrange_at(base, share.x) != share.y:
            raise InconsistentSharesError(
                f"the share at x={share.x} does not lie on the polynomial of the "
                f"shares at x={[s.x for s in base]}"
            )
    secret = _lagrange_at(base, 0)
    if secret >= 2 ** (8 * SECRET_BYTES):
        raise InconsistentSharesError(
            f"the shares at x={[s.x for s in base]} give no {SECRET_BYTES}-byte secret"
        )
    return secret.to_bytes(SECRET_BYTES, "big")
