"""The silos of a boosting run as the learner sees them, over the run's channels.

:class:`DaskFederation` implements ``gbdt.learner.Federation``. Every silo's
boosting state lives in its own worker's silo runtime (never elsewhere); the
coordinator collects the replies of an exchange and sums them. A tree level is
one exchange: the splits just chosen travel with the request for the next
level's histograms, and the last one of a tree also starts the next tree, so a
tree of depth ``d`` costs ``d`` exchanges. Each exchange is one request per
worker over the run's channel to it (:mod:`tasks.silo.link`), answered once
for all the silos it hosts (:mod:`tasks.boosting.exchange`); they go through
neither Prefect nor Dask's scheduler.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fedsilo.errors import FedsiloError, SiloFailedError
from tasks.boosting.exchange import EXCHANGE_CALLS, payload_bytes
from tasks.boosting.messages import SiloCallFailed
from tasks.boosting.silo_side import CALLS
from tasks.gbdt.histogram import NodeHistograms, sum_histograms
from tasks.gbdt.model import Tree
from tasks.gbdt.private_histograms import MaskedHistograms, unmask_histograms
from tasks.gbdt.silo_state import LossSum, NodeSplit, sum_losses
from tasks.privacy.secagg import MaskContext
from tasks.protocol.codec import RemoteError
from tasks.protocol.messages import Resident
from tasks.silo.failures import failure_of
from tasks.silo.link import SiloLink

#: Observers of every exchange: ``(silo, call name, (sent, reply))``. Tests use
#: them to assert on payloads; nothing else should.
observers: list[Callable[[str, str, Any], None]] = []


def _observe(silo: str, name: str, sent: Any, reply: Any, memo: dict[int, Any]) -> None:
    """Show observers a copy of an exchange (its replies are then summed in place).

    One ``memo`` per exchange: a reply shared by silos stays one object.
    """
    if observers:
        payload = copy.deepcopy((sent, reply), memo)
        for observer in list(observers):
            observer(silo, name, payload)


@dataclass(slots=True)
class Traffic:
    """Bytes sent to and received from one silo, and the exchanges made."""

    down: int = 0
    up: int = 0
    calls: int = 0


def _failure(silo: str, error: BaseException) -> FedsiloError:
    if isinstance(error, FedsiloError) and not isinstance(error, RemoteError):
        return error
    if isinstance(error, TimeoutError):
        return SiloFailedError(silo, "no reply in time")
    return failure_of(silo, error)


#: The slot of a silo's runtime holding its boosting state.
STATE = "gbdt"


@dataclass(slots=True)
class SiloCalls:
    """A boosting run's silos: setup steps, calls and exchanges, failures named.

    ``silos`` are the silos whose boosting state is open, in order.
    """

    link: SiloLink
    silos: list[str] = field(default_factory=list)
    traffic: dict[str, Traffic] = field(default_factory=dict)

    @property
    def workers(self) -> dict[str, str]:
        """Return silo -> address of its worker."""
        return self.link.cluster.workers

    def each(
        self,
        name: str,
        op: str,
        per_silo: dict[str, Sequence[Any]],
        keep: str | None = None,
    ) -> dict[str, Any]:
        """Run silo operation ``op`` at every silo as a setup step; count traffic."""
        replies = self.link.each(op, per_silo, name=name, keep=keep)
        self._count(name, per_silo, replies)
        return replies

    def _count(
        self, name: str, per_silo: dict[str, Sequence[Any]], replies: dict[str, Any]
    ) -> None:
        """Add an exchange's bytes to the traffic (arguments sized once if shared)."""
        sizes: dict[int, int] = {}
        memo: dict[int, Any] = {}
        for silo, args in per_silo.items():
            sent = tuple(a for a in args if not isinstance(a, Resident))
            if id(args) not in sizes:
                sizes[id(args)] = payload_bytes(sent) if sent else 0
            t = self.traffic.setdefault(silo, Traffic())
            t.down += sizes[id(args)]
            t.up += payload_bytes(replies[silo])
            t.calls += 1
            _observe(silo, name, sent, replies[silo], memo)

    # -- silo-resident state -----------------------------------------------------
    def open(self, per_silo: dict[str, Sequence[Any]]) -> None:
        """Bin each silo's rows into its boosting state, held by its runtime."""
        self.link.each("gbdt-open", per_silo, name="gbdt-silo", keep=STATE)
        self.silos = list(per_silo)

    def _groups(self, silos: Sequence[str]) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {}
        for silo in silos:
            groups.setdefault(self.workers[silo], []).append(silo)
        return groups

    def _answers(
        self, groups: dict[str, list[str]], op: str, make: Callable[[list[str]], Any]
    ) -> dict[str, Any]:
        """Send one ``op`` request per worker; raise the first failure, named."""
        answers = self.link.ask_all(
            {
                address: {
                    "op": op,
                    "args": [
                        [self.link.ref(s, STATE) for s in silos],
                        silos,
                        *make(silos),
                    ],
                }
                for address, silos in groups.items()
            }
        )
        for address, silos in groups.items():
            answer = answers[address]
            if isinstance(answer, BaseException):
                raise _failure(silos[0], answer)
            if "failed" in answer:
                failed: SiloCallFailed = answer["failed"]
                raise _failure(failed.silo, failed.error)
        return answers

    def call(self, method: str, per_silo: dict[str, Sequence[Any]]) -> dict[str, Any]:
        """Call ``method`` of every listed silo's state; return replies by silo."""
        if method not in CALLS:
            raise ValueError(f"not a silo call: {method!r}")
        groups = self._groups(list(per_silo))
        answers = self._answers(
            groups,
            "gbdt-calls",
            lambda silos: (method, [list(per_silo[s]) for s in silos]),
        )
        replies = {
            silo: reply
            for address, silos in groups.items()
            for silo, reply in zip(silos, answers[address]["replies"], strict=True)
        }
        self._count(f"gbdt-{method}", per_silo, replies)
        return replies

    def call_all(self, method: str, *args: Any) -> dict[str, Any]:
        """Call ``method(*args)`` at every silo."""
        return self.call(method, {silo: args for silo in self.silos})

    def exchange(self, method: str, *args: Any) -> list[Any]:
        """Call ``method(*args)`` at every silo; return the replies to combine.

        A reply may already be the sum of the silos sharing a worker.
        """
        if method not in EXCHANGE_CALLS:
            raise ValueError(f"not an exchange call: {method!r}")
        groups = self._groups(self.silos)
        answers = self._answers(groups, "gbdt-exchange", lambda _: (method, args))
        sent = payload_bytes(args)
        replies: list[Any] = []
        memo: dict[int, Any] = {}
        for address, silos in groups.items():
            answer = answers[address]
            merged = answer["replies"]
            for i, (silo, size) in enumerate(zip(silos, answer["sizes"], strict=True)):
                t = self.traffic.setdefault(silo, Traffic())
                t.down += sent
                t.up += size
                t.calls += 1
                own = merged[i] if len(merged) == len(silos) else merged[0]
                _observe(silo, f"gbdt-{method}", args, own, memo)
            replies.extend(merged)
        return replies

    def drop(self, silo: str) -> None:
        """Stop calling a silo that dropped out.

        When no other silo of the run shares its worker, the run's channel to
        it closes, and the worker frees what it held for the run.
        """
        if silo in self.silos:
            self.silos.remove(silo)
        address = self.workers.get(silo)
        if address is not None and all(self.workers[s] != address for s in self.silos):
            self.link.drop(address)

    def free(self) -> None:
        """Close the run's channels: every silo frees its state; never raises."""
        self.silos.clear()
        with contextlib.suppress(Exception):
            self.link.close()


@dataclass(slots=True)
class SecureExchanges:
    """Contexts of the masked exchanges of one attempt at a Prefect round.

    Every histogram exchange gets its own context, ``(run, round, attempt,
    "tree<t>-level<l>")``, so no silo ever masks two vectors with one mask.
    """

    run_id: str
    round: int = 0
    attempt: int = 0
    tree: int = -1
    level: int = 0

    def begin(self, round_number: int, attempt: int) -> None:
        """Start the exchanges of an attempt at a round (trees counted from 0)."""
        self.round, self.attempt, self.tree, self.level = round_number, attempt, -1, 0

    def next_tree(self) -> MaskContext:
        """Return the context of the next tree's root histograms."""
        self.tree += 1
        self.level = 0
        return self._context()

    def next_level(self) -> MaskContext:
        """Return the context of the current tree's next level."""
        self.level += 1
        return self._context()

    def _context(self) -> MaskContext:
        return MaskContext(
            self.run_id, self.round, self.attempt, f"tree{self.tree}-level{self.level}"
        )


def sum_replies(replies: Sequence[Any]) -> NodeHistograms:
    """Return the sum of the silos' histograms, unmasking masked ones.

    The replies were received for this sum alone, so the first one's arrays
    take the sum.
    """
    if replies and isinstance(replies[0], MaskedHistograms):
        return unmask_histograms(list(replies))
    return sum_histograms(list(replies), reuse_first=True)


@dataclass(slots=True)
class DaskFederation:
    """``learner.Federation`` over Dask: silo-resident state, summed replies.

    ``trees_left`` (set per Prefect round) says how many more rounds of trees
    follow; while it is positive, finishing a round also starts the next one at
    every silo with the last gradient grid, saving an exchange per tree. The
    start is used only when the learner asks for that same grid.
    """

    calls: SiloCalls
    secure: SecureExchanges | None = None
    trees_left: int = 0
    seconds: dict[str, float] = field(
        default_factory=lambda: {"start": 0.0, "level": 0.0, "finish": 0.0}
    )
    exchanges: int = 0
    _exponent: int | None = None
    _started: NodeHistograms | None = None

    def start_round(self, exponent: int) -> NodeHistograms:
        """Start a round at every silo; return the summed root histograms."""
        started = time.perf_counter()
        ready, self._started = self._started, None
        if ready is None or exponent != self._exponent:
            args: tuple[Any, ...] = (exponent,)
            if self.secure is not None:
                args = (exponent, self.secure.next_tree())
            ready = sum_replies(self.calls.exchange("start_round", *args))
            self.exchanges += 1
        self._exponent = exponent
        self.seconds["start"] += time.perf_counter() - started
        return ready

    def level(
        self, splits: Sequence[NodeSplit], nodes: Sequence[tuple[int, int]]
    ) -> NodeHistograms:
        """Send a level's splits with the request for the next nodes' histograms."""
        started = time.perf_counter()
        args: tuple[Any, ...] = (list(splits), list(nodes))
        if self.secure is not None:
            args = (*args, self.secure.next_level())
        total = sum_replies(self.calls.exchange("grow_level", *args))
        self.exchanges += 1
        self.seconds["level"] += time.perf_counter() - started
        return total

    def finish_round(self, trees: Sequence[Tree], loss: bool = True) -> LossSum | None:
        """Send the round's trees; return the summed training loss (if ``loss``)."""
        started = time.perf_counter()
        self.trees_left -= 1
        if self.trees_left > 0 and self._exponent is not None:
            args: tuple[Any, ...] = (list(trees), self._exponent, loss)
            if self.secure is not None:
                args = (*args, self.secure.next_tree())
            replies = self.calls.exchange("finish_and_start", *args)
            total = sum_losses([r[0] for r in replies])
            self._started = sum_replies([h for _, h in replies])
        else:
            total = sum_losses(self.calls.exchange("finish_round", list(trees), loss))
        self.exchanges += 1
        self.seconds["finish"] += time.perf_counter() - started
        return total

    def abandon(self) -> None:
        """Forget a prefetched start (after an aborted round)."""
        self._started = None
        self._exponent = None
