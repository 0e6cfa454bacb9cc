"""DP randomness nobody can replay: Gaussian noise and silo samples from the OS CSPRNG.

Why not a seeded numpy ``Generator``: seeded from the spec's ``seed``, anyone who
holds the spec (it is a Prefect flow parameter and sits in every checkpoint's
metadata) regenerates the noise and subtracts it. Seeded from ``os.urandom``
instead, it is unpredictable at first, but PCG64 is a statistical generator
whose state can be recovered from its outputs, and its seed and state sit in the
process's memory for as long as the generator lives.

What is used: every draw reads fresh bytes from the operating system's
cryptographically secure generator (``os.urandom``: ``getrandom(2)`` on Linux, a
ChaCha20 generator that erases its own key as it goes). There is no seed, key or
state in this process to record, pickle, checkpoint or resume: a
:class:`SecureRandom` holds nothing, so two runs of one spec differ, and a
resumed round draws new noise (its accounting does not depend on the draws).
The cost is a system call per draw of a whole tensor (about 8 bytes per value).

Floating point: the keystream is turned into Gaussians by the Box-Muller
transform on uniforms with 53 random bits, ``u1`` in ``(0, 1]`` (never 0, so
the logarithm is finite) and ``u2`` in ``[0, 1)``. The largest value it can
return is ``sqrt(-2 ln 2**-53) = 8.57`` standard deviations: the tail cut off
weighs about ``1e-17`` per value, far below any ``delta`` in use. What this does
not address is the attack on textbook floating-point noise (Mironov 2012: the
low-order bits of ``x + noise`` tell which ``x`` produced it). Under
distributed noise the noised update is rounded to the fixed-point grid
``2**-24`` before it is masked, which is that attack's usual mitigation
(snapping); a value released at full float64 precision (central noise) is not
protected from it. The discrete Gaussian, whose guarantee would be exact on a
grid, is not implemented.
"""

from __future__ import annotations

import math
import os
import secrets
from typing import overload

import numpy as np

#: Shapes as numpy takes them.
Shape = int | tuple[int, ...]


def _shape(size: Shape | None) -> tuple[int, ...]:
    if size is None:
        return ()
    return (int(size),) if isinstance(size, int | np.integer) else tuple(size)


class SecureRandom:
    """Uniforms, Gaussians and samples from ``os.urandom``; holds no state at all.

    Offers the ``normal`` and ``random`` calls of a numpy ``Generator`` that the
    DP functions use, so they take either: a seeded ``Generator`` for tests that
    need the same draws twice, this class wherever the draws must stay secret.
    """

    __slots__ = ()

    def words(self, count: int) -> np.ndarray:
        """Return ``count`` uint64 words of fresh OS randomness."""
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        return np.frombuffer(os.urandom(8 * count), dtype="<u8").astype(np.uint64)

    def _unit(self, count: int, *, open_low: bool) -> np.ndarray:
        """Return ``count`` uniforms on the 2**-53 grid: [0, 1), or (0, 1]."""
        top = (self.words(count) >> np.uint64(11)).astype(np.float64)
        return (top + (1.0 if open_low else 0.0)) * 2.0**-53

    @overload
    def random(self, size: None = None) -> float: ...

    @overload
    def random(self, size: Shape) -> np.ndarray: ...

    def random(self, size: Shape | None = None) -> float | np.ndarray:
        """Return uniforms in ``[0, 1)`` (a float when ``size`` is None)."""
        shape = _shape(size)
        out = self._unit(math.prod(shape), open_low=False).reshape(shape)
        return float(out) if size is None else out

    @overload
    def normal(
        self, loc: float = 0.0, scale: float = 1.0, size: None = None
    ) -> float: ...

    @overload
    def normal(self, loc: float, scale: float, size: Shape) -> np.ndarray: ...

    def normal(
        self, loc: float = 0.0, scale: float = 1.0, size: Shape | None = None
    ) -> float | np.ndarray:
        """Return N(loc, scale**2) draws (a float when ``size`` is None).

        Box-Muller: ``sqrt(-2 ln u1) * (cos, sin)(2 pi u2)`` gives two
        independent standard normals per pair of uniforms.
        """
        if not (math.isfinite(scale) and scale >= 0):
            raise ValueError(f"scale must be finite and >= 0, got {scale}")
        shape = _shape(size)
        count = math.prod(shape)
        pairs = (count + 1) // 2
        radius = np.sqrt(-2.0 * np.log(self._unit(pairs, open_low=True)))
        angle = (2.0 * math.pi) * self._unit(pairs, open_low=False)
        standard = np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])
        out = loc + scale * standard[:count].reshape(shape)
        return float(out) if size is None else out

    def sample(self, population: int, count: int) -> list[int]:
        """Return ``count`` distinct indices of ``range(population)``, sorted.

        Uniform over all subsets of that size (``secrets.SystemRandom``, which
        reads ``os.urandom`` too).
        """
        if not 0 <= count <= population:
            raise ValueError(f"cannot draw {count} of {population}")
        return sorted(secrets.SystemRandom().sample(range(population), count))

    def __repr__(self) -> str:
        return "SecureRandom(os.urandom)"


#: What the DP functions draw their noise from: a seeded numpy generator (tests,
#: reproducible maths) or :class:`SecureRandom` (every run).
NoiseSource = np.random.Generator | SecureRandom
