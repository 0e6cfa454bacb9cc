"""Named arrays as one vector, and fixed-point encoding modulo 2**64.

Secure aggregation masks integers modulo ``2**64``: a silo flattens its named
arrays into one float64 vector (tensors in sorted name order, so every silo
agrees without talking), encodes it in fixed point, adds masks with wrapping
``uint64`` arithmetic, and the coordinator decodes the unmasked sum.

Fixed point (``FixedPoint(frac_bits=f, bound=B)``): a value ``x`` with
``|x| <= B`` is encoded as ``rint(x * 2**f)`` in two's complement, i.e. an
``int64`` viewed as ``uint64``. Sums of encodings wrap modulo ``2**64``; the
decoded sum is right as long as the true integer sum stays in ``int64``, which
holds for up to ``max_silos = (2**63 - 1) // ceil(B * 2**f)`` summands. The
default ``f=24, B=2**31`` gives a step of ``2**-24`` (about 6e-8), values up to
about 2.1e9 (large enough for an update multiplied by a sample count) and 255
silos; each value is off by at most half a step, a sum of ``n`` by at most
``n * 2**-(f+1)`` (``FixedPoint.tolerance``). Values outside ``[-B, B]`` or not
finite are refused, not clipped: a silently clipped update would give a wrong
model that nobody notices. ``FixedPoint.exact(Q)`` encodes GBDT histograms that
silos already rounded to multiples of ``2**-Q`` (``gbdt.histogram.quantize``)
without any rounding, so the securely summed histograms are bitwise the plain
ones.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fedsilo.errors import InconsistentUpdatesError
from tasks.privacy.errors import FixedPointRangeError

Params = Mapping[str, np.ndarray]


@dataclass(frozen=True, slots=True)
class Layout:
    """Names, shapes and dtypes of named arrays laid end to end in a vector."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]

    @property
    def size(self) -> int:
        """Return the length of the flat vector."""
        return int(sum(math.prod(shape) for shape in self.shapes))


def layout_of(params: Params) -> Layout:
    """Return the layout of named arrays, tensors in sorted name order."""
    names = tuple(sorted(params))
    return Layout(
        names=names,
        shapes=tuple(tuple(np.shape(params[name])) for name in names),
        dtypes=tuple(np.asarray(params[name]).dtype.str for name in names),
    )


def flatten(params: Params, layout: Layout | None = None) -> tuple[np.ndarray, Layout]:
    """Return named arrays as one float64 vector and the layout to undo it."""
    own = layout_of(params)
    if layout is None:
        layout = own
    elif own.names != layout.names or own.shapes != layout.shapes:
        raise InconsistentUpdatesError(
            f"arrays {dict(zip(own.names, own.shapes, strict=True))} do not match "
            f"the layout {dict(zip(layout.names, layout.shapes, strict=True))}"
        )
    if not layout.names:
        return np.zeros(0, dtype=np.float64), layout
    vector = np.concatenate(
        [np.asarray(params[name], dtype=np.float64).ravel() for name in layout.names]
    )
    return vector, layout


def unflatten(vector: np.ndarray, layout: Layout) -> dict[str, np.ndarray]:
    """Return the named arrays of a flat vector, in the layout's shapes and dtypes."""
    vector = np.asarray(vector)
    if vector.shape != (layout.size,):
        raise InconsistentUpdatesError(
            f"vector of shape {vector.shape} does not fit a layout of {layout.size}"
        )
    out: dict[str, np.ndarray] = {}
    start = 0
    for name, shape, dtype in zip(
        layout.names, layout.shapes, layout.dtypes, strict=True
    ):
        stop = start + math.prod(shape)
        out[name] = vector[start:stop].reshape(shape).astype(dtype)
        start = stop
    return out


@dataclass(frozen=True, slots=True)
class FixedPoint:
    """Fixed-point encoding of floats in ``[-bound, bound]`` as integers mod 2**64."""

    frac_bits: int = 24
    bound: float = 2.0**31

    def __post_init__(self) -> None:
        if not 0 <= self.frac_bits <= 62:
            raise ValueError(f"frac_bits must be in [0, 62], got {self.frac_bits}")
        if not (math.isfinite(self.bound) and self.bound > 0):
            raise ValueError(f"bound must be finite and > 0, got {self.bound}")
        if self.max_silos < 1:
            raise ValueError(
                f"bound * 2**frac_bits = {self.bound * 2.0**self.frac_bits:.3g} "
                "does not fit in int64"
            )

    @classmethod
    def exact(cls, exponent: int) -> FixedPoint:
        """Return the encoding of values on the grid ``2**-exponent`` (no rounding).

        Meant for GBDT histograms quantised with ``gradient_exponent``: their
        federated sums stay below ``2**52`` grid steps, so ``bound`` is
        ``2**(52 - exponent)``.
        """
        return cls(frac_bits=exponent, bound=2.0 ** (52 - exponent))

    @property
    def step(self) -> float:
        """Return the smallest representable difference, ``2**-frac_bits``."""
        return 2.0**-self.frac_bits

    @property
    def max_silos(self) -> int:
        """Return how many encodings can be summed without leaving int64."""
        largest = math.ceil(self.bound * 2.0**self.frac_bits)
        return (2**63 - 1) // max(largest, 1)

    def tolerance(self, n_summands: int) -> float:
        """Return the largest rounding error of a decoded sum of ``n_summands``."""
        return n_summands * self.step / 2

    def check_capacity(self, n_summands: int) -> None:
        """Raise if a sum of ``n_summands`` encodings could overflow int64."""
        if n_summands > self.max_silos:
            raise FixedPointRangeError(
                f"{n_summands} silos exceed the {self.max_silos} that fixed point "
                f"with frac_bits={self.frac_bits}, bound={self.bound:g} can sum"
            )

    def encode(self, values: np.ndarray) -> np.ndarray:
        """Return ``rint(values * 2**frac_bits)`` as uint64 (two's complement)."""
        x = np.asarray(values, dtype=np.float64)
        if not np.all(np.isfinite(x)):
            bad = int(np.count_nonzero(~np.isfinite(x)))
            raise FixedPointRangeError(f"{bad} values are not finite")
        outside = np.abs(x) > self.bound
        if np.any(outside):
            raise FixedPointRangeError(
                f"{int(np.count_nonzero(outside))} values exceed the fixed-point "
                f"bound {self.bound:g} (largest |value| {float(np.abs(x).max()):.4g})"
            )
        scaled = np.rint(np.ldexp(x, self.frac_bits)).astype(np.int64)
        encoded: np.ndarray = scaled.view(np.uint64)
        return encoded

    def decode(self, encoded: np.ndarray) -> np.ndarray:
        """Return the floats of a (summed) uint64 encoding."""
        signed = np.ascontiguousarray(encoded, dtype=np.uint64).view(np.int64)
        decoded: np.ndarray = np.ldexp(signed.astype(np.float64), -self.frac_bits)
        return decoded
