"""The SecAgg+ neighbour graph: who masks with whom, and how many shares rebuild.

Bell et al. (2020) replace Bonawitz et al.'s complete graph, where every silo
masks with and secret-shares to every other, by a sparse ``k``-regular graph:
a silo masks with its ``k`` neighbours only and gives each of them one share
of its two secrets, ``t`` of which rebuild a secret. A silo's work and traffic
then grow with ``k``, which grows with ``log n``, not with ``n``.

The graph: the roster's names, sorted, are placed on a ring in the order of
pseudo-random keys drawn from a public 32-byte seed (AES-256-CTR keystream
words, ties broken by name), and each silo is joined to the ``k / 2`` nearest
on either side: the Harary graph ``H(n, k)`` under a random relabelling. ``k``
is even, or ``n - 1`` (the complete graph) when the bound below asks for
``n - 1`` or more. Every party computes the same graph from the same roster
and seed (:func:`neighbour_graph`).

Parameters (:func:`choose_parameters`), for ``n`` silos, an expected dropout
rate ``dropout``, an assumed fraction ``colluding`` of a silo's neighbours that
collude with the coordinator, and a failure probability ``2**-failure_bits``:

- ``t = floor((k + ceil(colluding * k)) / 2) + 1``, so ``2t > k + c``. A
  neighbour reveals, for a silo, either the share of its self-mask seed or the
  share of its masking key, never both (:mod:`tasks.privacy.secagg_plus`); to
  rebuild both secrets of one silo the coordinator would need ``t`` shares of
  each, that is ``2t`` answers from its ``k`` neighbours of which ``c`` may
  give both: impossible when ``2t > k + c``. This is the condition in
  Bonawitz et al.'s proof (``t > n/2`` with a semi-honest server, more with
  colluding clients), applied per neighbourhood as in Bell et al.
- ``k``: the smallest even degree for which a round survives independent
  dropouts at rate ``dropout`` with probability at least
  ``1 - 2**-failure_bits``: every silo keeps at least ``t`` of its
  neighbours (``n * P[Binomial(k, dropout) > k - t]``) and the survivors' graph
  stays connected (``H(n, k)`` falls apart only if two runs of ``k / 2``
  consecutive ring positions all drop, ``n * dropout**(k/2)``). Bell et al.
  bound the same two events for their random graphs; both make ``k`` grow
  with ``log n``. A failure here is a refused round, not a leak: silos refuse
  to unmask when their surviving neighbours are fewer than ``t`` or the
  survivors' graph is not connected (:meth:`NeighbourGraph.connected`), which
  would give the coordinator the sums of its parts.

Defaults (``dropout=0.05``, ``colluding=0``, ``failure_bits=20``): ``n = 10``
gives the complete graph (``k = 9``, ``t = 5``); ``n = 100`` gives ``k = 22``,
``t = 12``; ``n = 1000`` gives ``k = 24``, ``t = 13``; ``n = 10**5`` gives
``k = 30``, ``t = 16``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from tasks.privacy.errors import SecureAggregationError
from tasks.privacy.secagg import mask_stream

#: Defaults of :func:`choose_parameters`.
DROPOUT = 0.05
COLLUDING = 0.0
FAILURE_BITS = 20


class GraphError(SecureAggregationError):
    """A neighbour graph cannot be made, or a name is not in it."""


@dataclass(frozen=True, slots=True)
class GraphParameters:
    """The degree ``k`` and threshold ``t`` of a roster of ``n`` silos."""

    n: int
    degree: int
    threshold: int

    @property
    def complete(self) -> bool:
        """Return whether every silo neighbours every other."""
        return self.degree == self.n - 1

    @property
    def tolerated_dropouts(self) -> int:
        """Return how many of a silo's neighbours may drop out: ``k - t``."""
        return self.degree - self.threshold


def _threshold(degree: int, colluding: float) -> int:
    return (degree + math.ceil(colluding * degree)) // 2 + 1


def _binomial_tail(trials: int, p: float, above: int) -> float:
    """Return ``P[Binomial(trials, p) > above]``."""
    return sum(
        math.comb(trials, i) * p**i * (1 - p) ** (trials - i)
        for i in range(max(above + 1, 0), trials + 1)
    )


def round_failure(n: int, degree: int, threshold: int, dropout: float) -> float:
    """Return a bound on the chance that independent dropouts make a round fail."""
    if dropout <= 0.0:
        return 0.0
    lost = _binomial_tail(degree, dropout, degree - threshold)
    split = 0.0 if degree == n - 1 else dropout ** (degree // 2)
    return min(1.0, n * (lost + split))


@functools.lru_cache(maxsize=256)
def choose_parameters(
    n: int,
    *,
    dropout: float = DROPOUT,
    colluding: float = COLLUDING,
    failure_bits: int = FAILURE_BITS,
) -> GraphParameters:
    """Return the degree and threshold for ``n`` silos (see the module docstring)."""
    if n < 2:
        raise GraphError(f"a roster of {n} silos: secure aggregation needs two or more")
    if not 0.0 <= dropout < 1.0:
        raise GraphError(f"dropout {dropout}: give a rate in [0, 1)")
    if not 0.0 <= colluding < 1.0:
        raise GraphError(f"colluding {colluding}: give a fraction in [0, 1)")
    if failure_bits < 1:
        raise GraphError(f"failure_bits {failure_bits}: give 1 or more")
    target = 2.0**-failure_bits
    degree = 2
    while degree < n - 1:
        threshold = _threshold(degree, colluding)
        if threshold <= degree and (
            round_failure(n, degree, threshold, dropout) <= target
        ):
            break
        degree += 2
    degree = min(degree, n - 1)
    threshold = _threshold(degree, colluding)
    if threshold > degree:
        raise GraphError(
            f"{n} silos with colluding={colluding}: a threshold of {threshold} "
            f"exceeds the {degree} neighbours a silo has"
        )
    return GraphParameters(n=n, degree=degree, threshold=threshold)


class NeighbourGraph:
    """A relabelled Harary graph ``H(n, k)`` on a roster of silo names."""

    __slots__ = ("_half", "_index", "_position", "names", "parameters", "ring")

    def __init__(
        self, names: Sequence[str], seed: bytes, parameters: GraphParameters
    ) -> None:
        roster = tuple(sorted(names))
        if len(set(roster)) != len(roster):
            raise GraphError("the roster names a silo twice")
        if len(roster) != parameters.n:
            raise GraphError(
                f"parameters for {parameters.n} silos, a roster of {len(roster)}"
            )
        if parameters.degree % 2 and not parameters.complete:
            raise GraphError(f"degree {parameters.degree} is odd and below n - 1")
        keys = mask_stream(seed, len(roster))
        order = np.lexsort((np.arange(len(roster)), keys))
        self.names = roster
        self.parameters = parameters
        self.ring: tuple[str, ...] = tuple(roster[i] for i in order)
        self._index = {name: i for i, name in enumerate(roster)}
        self._position = {name: p for p, name in enumerate(self.ring)}
        self._half = parameters.degree // 2

    @property
    def degree(self) -> int:
        """Return ``k``, every silo's number of neighbours."""
        return self.parameters.degree

    @property
    def threshold(self) -> int:
        """Return ``t``, the shares that rebuild a silo's secret."""
        return self.parameters.threshold

    def index(self, name: str) -> int:
        """Return the silo's index in the sorted roster (0-based)."""
        try:
            return self._index[name]
        except KeyError:
            raise GraphError(f"silo {name!r} is not in the roster") from None

    def point(self, name: str) -> int:
        """Return the silo's Shamir point ``x``: its roster index plus one."""
        return self.index(name) + 1

    def neighbours(self, name: str) -> tuple[str, ...]:
        """Return the silo's neighbours in roster order."""
        self.index(name)
        n = len(self.names)
        if self.parameters.complete:
            return tuple(other for other in self.names if other != name)
        p = self._position[name]
        around = {
            self.ring[(p + step) % n]
            for offset in range(1, self._half + 1)
            for step in (offset, -offset)
        }
        return tuple(sorted(around, key=self._index.__getitem__))

    def adjacent(self, a: str, b: str) -> bool:
        """Return whether silos ``a`` and ``b`` are neighbours."""
        if a == b:
            return False
        if self.parameters.complete:
            self.index(a)
            self.index(b)
            return True
        n = len(self.names)
        distance = abs(self._position[a] - self._position[b])
        return min(distance, n - distance) <= self._half

    def connected(self, survivors: Iterable[str]) -> bool:
        """Return whether the graph induced on ``survivors`` is connected.

        On the ring two survivors are joined when at most ``k / 2`` positions
        apart, so the survivors are connected exactly when at most one gap
        between ring-consecutive survivors exceeds ``k / 2``.
        """
        members = set(survivors)
        for name in members:
            self.index(name)
        if len(members) <= 1 or self.parameters.complete:
            return True
        positions = np.sort([self._position[name] for name in members])
        n = len(self.names)
        gaps = np.diff(np.append(positions, positions[0] + n))
        return int(np.count_nonzero(gaps > self._half)) <= 1


def neighbour_graph(
    names: Sequence[str],
    seed: bytes,
    *,
    dropout: float = DROPOUT,
    colluding: float = COLLUDING,
    failure_bits: int = FAILURE_BITS,
) -> NeighbourGraph:
    """Return the graph every party computes from the roster and a public seed."""
    parameters = choose_parameters(
        len(names), dropout=dropout, colluding=colluding, failure_bits=failure_bits
    )
    return NeighbourGraph(names, seed, parameters)
