"""The silos of a boosting run as the learner sees them, over the Dask client.

:class:`DaskFederation` implements ``gbdt.learner.Federation``. Every silo's
boosting state lives on its own worker (never elsewhere) as a Dask actor made
by a pinned ``Client.submit(..., actor=True)``; the coordinator collects the
replies of an exchange and sums them. A tree level is one exchange: the splits
just chosen travel with the request for the next level's histograms, and the
last one of a tree also starts the next tree, so a tree of depth ``d`` costs
``d`` exchanges. They go through Dask directly, not as Prefect tasks, in one of
four ways (:data:`TRANSPORTS`, chosen with ``FEDSILO_GBDT_TRANSPORT``):

- ``"channel"`` (default): as ``"worker"``, but each request and answer travel
  over a socket of their own between the coordinator and the worker, opened
  through Dask when the silos' state is resident (TLS with the cluster's
  certificates when it has them; :mod:`tasks.silo.channel`). About
  1.5 ms less per exchange than Dask's comm here. When a worker cannot be
  reached that way (a firewall), the run says so in its log and uses ``worker``;
- ``"worker"``: one request per worker and exchange to fedsilo's handler on
  that worker (:mod:`tasks.boosting.worker`), which runs the call for every
  silo it hosts on the worker's event loop and answers once; plain histograms
  of silos sharing a worker (pool workers) are summed there;
- ``"actor"``: one actor method call per silo (the actor's thread runs it);
- ``"submit"``: a pinned ``Client.submit`` per silo on the future of the
  silo's state, then a direct gather. Each such task passes the client's,
  scheduler's and worker's batched streams (10, 5 and 2 ms send intervals), so
  back-to-back exchanges cost 15-40 ms each here; see docs/gbdt.md.

Every transport grows the same trees. The coordinator holds only futures (and
actor handles) of the silo-resident state, and :meth:`SiloCalls.free` releases
them.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import itertools
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from distributed import Actor, Client, Future

from fedsilo.errors import FedsiloError, SiloFailedError
from tasks.boosting import silo_side as gbdt_silo
from tasks.boosting.worker import (
    CHANNEL_HANDLER,
    EXCHANGE_CALLS,
    HANDLER,
    SiloCallFailed,
    payload_bytes,
)
from tasks.gbdt.histogram import NodeHistograms, sum_histograms
from tasks.gbdt.model import Tree
from tasks.gbdt.private_histograms import MaskedHistograms, unmask_histograms
from tasks.gbdt.silo_state import LossSum, NodeSplit, sum_losses
from tasks.privacy.secagg import MaskContext
from tasks.protocol.codec import RemoteError
from tasks.silo import worker_rpc
from tasks.silo.channel import (
    WATCH_SECONDS,
    Channel,
    ChannelError,
    first_ready,
    new_token,
)
from tasks.silo.failures import failure_of, wait_silo

Transport = Literal["channel", "worker", "actor", "submit"]
TRANSPORTS: tuple[Transport, ...] = ("channel", "worker", "actor", "submit")
#: Environment variable that selects the transport of per-level exchanges.
TRANSPORT_ENV = "FEDSILO_GBDT_TRANSPORT"


def default_transport() -> Transport:
    """Return the transport named by ``FEDSILO_GBDT_TRANSPORT`` (default channel)."""
    value = os.environ.get(TRANSPORT_ENV, "channel")
    for transport in TRANSPORTS:
        if value == transport:
            return transport
    raise FedsiloError(f"{TRANSPORT_ENV}={value!r}: use one of {list(TRANSPORTS)}")


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


def _wait_all(futures: Sequence[Future], timeout: float) -> bool:
    """Wait until every future is done (or failed); False after ``timeout`` s.

    Unlike ``distributed.wait`` this uses the futures' own client, not the
    process's default one.
    """
    if not futures:
        return True
    remaining = [len(futures)]
    lock = threading.Lock()
    done = threading.Event()

    def one_done(_: Future) -> None:
        with lock:
            remaining[0] -= 1
            if remaining[0] == 0:
                done.set()

    for future in futures:
        future.add_done_callback(one_done)
    return done.wait(timeout)


def _failure(silo: str, error: BaseException) -> FedsiloError:
    if isinstance(error, FedsiloError) and not isinstance(error, RemoteError):
        return error
    if isinstance(error, TimeoutError):
        return SiloFailedError(silo, "no reply in time")
    return failure_of(silo, error)


@dataclass(slots=True)
class SiloCalls:
    """Pinned work at every silo's worker, with failures naming the silo.

    ``submit``/``gather`` run plain tasks (setup: reading, checking, sketching);
    ``open`` makes each silo's resident state and ``call`` reaches it.
    """

    client: Client
    workers: dict[str, str]  # silo -> worker address
    run_key: str
    timeout: float
    transport: Transport = "channel"
    traffic: dict[str, Traffic] = field(default_factory=dict)
    states: dict[str, Future] = field(default_factory=dict)
    actors: dict[str, Any] = field(default_factory=dict)
    channels: dict[str, Channel] = field(default_factory=dict)  # by worker address
    #: Why channels could not be opened (the transport is then ``worker``).
    channel_error: str | None = None
    _counter: Any = field(default_factory=itertools.count)

    def submit(
        self,
        silo: str,
        fn: Callable[..., Any],
        *args: Any,
        name: str,
        actor: bool = False,
    ) -> Future:
        """Run ``fn`` on the silo's own worker, under a unique key."""
        return self.client.submit(
            fn,
            *args,
            key=f"{name}-{silo}-{self.run_key}-{next(self._counter)}",
            workers=[self.workers[silo]],
            allow_other_workers=False,
            pure=False,
            actor=actor,
        )

    def gather(self, futures: dict[str, Future]) -> dict[str, Any]:
        """Wait for one future per silo and fetch the replies from the workers."""
        if not _wait_all(list(futures.values()), self.timeout):
            late = [s for s, f in futures.items() if not f.done()]
            raise SiloFailedError(late[0], f"no reply within {self.timeout:g}s")
        for silo, future in futures.items():
            if future.status != "finished":
                wait_silo(silo, future, self.timeout)  # raises, naming the silo
        values = self.client.gather(list(futures.values()), direct=True)
        return dict(zip(futures, values, strict=True))

    def each(
        self, name: str, fn: Callable[..., Any], per_silo: dict[str, Sequence[Any]]
    ) -> dict[str, Any]:
        """Run ``fn(*per_silo[silo])`` as a task at every silo; count the traffic."""
        futures = {
            silo: self.submit(silo, fn, *args, name=name)
            for silo, args in per_silo.items()
        }
        replies = self.gather(futures)
        self._count(name, per_silo, replies)
        return replies

    def _count(
        self, name: str, per_silo: dict[str, Sequence[Any]], replies: dict[str, Any]
    ) -> None:
        """Add an exchange's bytes to the traffic (arguments sized once if shared)."""
        sizes: dict[int, int] = {}
        memo: dict[int, Any] = {}
        for silo, args in per_silo.items():
            sent = tuple(a for a in args if not isinstance(a, Future))
            if id(args) not in sizes:
                sizes[id(args)] = payload_bytes(sent) if sent else 0
            t = self.traffic.setdefault(silo, Traffic())
            t.down += sizes[id(args)]
            t.up += payload_bytes(replies[silo])
            t.calls += 1
            _observe(silo, name, sent, replies[silo], memo)

    # -- silo-resident state -----------------------------------------------------
    def open(self, fn: Callable[..., Any], per_silo: dict[str, Sequence[Any]]) -> None:
        """Create each silo's resident state with ``fn(*args)`` on its worker."""
        actor = self.transport != "submit"
        self.states = {
            silo: self.submit(silo, fn, *args, name="gbdt-silo", actor=actor)
            for silo, args in per_silo.items()
        }
        if actor:
            self.gather(self.states)  # surfaces a silo's error, naming the silo
            # Actor calls go through the scheduler unless the client talks to
            # workers directly: that would send every histogram twice.
            self.client.direct_to_workers = True
            # Handles bound to this client (deserialized ones take the default).
            with self.client.as_current():
                self.actors = {
                    silo: Actor(gbdt_silo.BoostingSilo, self.workers[silo], f.key)
                    for silo, f in self.states.items()
                }
        if self.transport == "channel":
            self._open_channels()

    def _open_channels(self) -> None:
        """Open a channel to every worker hosting a silo, or fall back to ``worker``."""
        security = getattr(self.client, "security", None)
        tls = (
            security.get_connection_args("client").get("ssl_context")
            if security is not None
            else None
        )
        try:
            for address in sorted({self.workers[s] for s in self.states}):
                token = new_token()
                endpoint = self.client.sync(
                    worker_rpc.request,
                    self.client,
                    address,
                    CHANNEL_HANDLER,
                    token=token,
                )
                self.channels[address] = Channel.connect(
                    address, tuple(endpoint), token, tls, timeout=min(self.timeout, 10)
                )
        except Exception as error:
            self._close_channels()
            self.transport = "worker"
            self.channel_error = str(error) or type(error).__name__

    def call(self, method: str, per_silo: dict[str, Sequence[Any]]) -> dict[str, Any]:
        """Call ``method`` of every listed silo's state; return replies by silo."""
        if method not in gbdt_silo.CALLS:
            raise ValueError(f"not a silo call: {method!r}")
        if self.transport == "submit":
            replies = self.each(
                f"gbdt-{method}",
                gbdt_silo.call,
                {s: (self.states[s], method, *a) for s, a in per_silo.items()},
            )
            return replies
        pending = {
            silo: getattr(self.actors[silo], method)(*args)
            for silo, args in per_silo.items()
        }
        replies = {}
        deadline = time.monotonic() + self.timeout
        for silo, future in pending.items():
            try:
                replies[silo] = future.result(
                    timeout=max(deadline - time.monotonic(), 0.001)
                )
            except Exception as error:
                raise _failure(silo, error) from error
        self._count(f"gbdt-{method}", per_silo, replies)
        return replies

    def call_all(self, method: str, *args: Any) -> dict[str, Any]:
        """Call ``method(*args)`` at every silo."""
        return self.call(method, {silo: args for silo in self.states})

    def exchange(self, method: str, *args: Any) -> list[Any]:
        """Call ``method(*args)`` at every silo; return the replies to combine.

        With the ``channel`` and ``worker`` transports a reply may already be
        the sum of the silos sharing a worker; otherwise there is one reply per
        silo.
        """
        if self.transport not in ("channel", "worker"):
            return list(self.call_all(method, *args).values())
        if method not in EXCHANGE_CALLS:
            raise ValueError(f"not an exchange call: {method!r}")
        groups: dict[str, list[str]] = {}
        for silo in self.states:
            groups.setdefault(self.workers[silo], []).append(silo)
        for address in [a for a, c in self.channels.items() if c.closed]:
            del self.channels[address]  # closed by a sharer (fedsilo compare)
        if self.channels and all(a in self.channels for a in groups):
            answers = self._over_channels(groups, method, args)
        else:
            answers = self.client.sync(self._send_to_workers, groups, method, args)
        sent = payload_bytes(args)
        replies: list[Any] = []
        memo: dict[int, Any] = {}
        for address, silos in groups.items():
            answer = answers[address]
            if isinstance(answer, BaseException):
                raise _failure(silos[0], answer)
            if "failed" in answer:
                failed: SiloCallFailed = answer["failed"]
                raise _failure(failed.silo, failed.error)
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

    def _over_channels(
        self, groups: dict[str, list[str]], method: str, args: tuple[Any, ...]
    ) -> dict[str, Any]:
        """Send one exchange request over every worker's channel; answers by worker.

        Every channel's reply is read (or its failure noted) before returning,
        and a channel that failed is closed: the next exchanges go through Dask.
        """
        deadline = time.monotonic() + self.timeout
        answers: dict[str, Any] = {}
        for address, silos in groups.items():
            try:
                self.channels[address].send(
                    self.timeout,
                    keys=[self.states[s].key for s in silos],
                    silos=silos,
                    method=method,
                    args=args,
                )
            except ChannelError as error:
                answers[address] = error
        waiting = {self.channels[a]: a for a in groups if a not in answers}
        while waiting:  # replies in the order they come
            ready = first_ready(list(waiting), WATCH_SECONDS)
            if not ready:
                for channel, address in list(waiting.items()):
                    try:
                        if time.monotonic() >= deadline:
                            raise TimeoutError(f"no reply within {self.timeout:g}s")
                        self._check_worker(address)
                    except Exception as error:
                        answers[address] = error
                        del waiting[channel]
                continue
            for channel in ready:
                address = waiting.pop(channel)
                try:
                    answers[address] = channel.receive(
                        deadline, functools.partial(self._check_worker, address)
                    )
                except Exception as error:
                    answers[address] = error
        for address, answer in answers.items():
            if isinstance(answer, BaseException):
                self._close_channels([address])
        return answers

    def _check_worker(self, address: str) -> None:
        """Raise WorkerLeftError when the scheduler no longer knows the worker."""
        self.client.sync(worker_rpc.check_worker, self.client, address)

    def _close_channels(self, addresses: Sequence[str] | None = None) -> None:
        """Close the channels to ``addresses`` (all by default)."""
        for address in list(self.channels) if addresses is None else addresses:
            channel = self.channels.pop(address, None)
            if channel is not None:
                channel.close()

    async def _send_to_workers(
        self, groups: dict[str, list[str]], method: str, args: tuple[Any, ...]
    ) -> dict[str, Any]:
        """Send one exchange request to every worker; answers (or errors) by worker.

        A worker that has not answered within the silo timeout gets a
        ``TimeoutError`` as its answer.
        """
        calls = {
            address: asyncio.ensure_future(
                worker_rpc.request(
                    self.client,
                    address,
                    HANDLER,
                    keys=[self.states[s].key for s in silos],
                    silos=silos,
                    method=method,
                    args=args,
                )
            )
            for address, silos in groups.items()
        }
        _, late = await asyncio.wait(calls.values(), timeout=self.timeout)
        for call in late:
            call.cancel()
        answers: dict[str, Any] = {}
        for address, call in calls.items():
            if call in late:
                answers[address] = TimeoutError(f"no reply within {self.timeout:g}s")
            elif call.exception() is not None:
                answers[address] = call.exception()
            else:
                answers[address] = call.result()
        return answers

    def drop(self, silo: str) -> None:
        """Stop calling a silo that dropped out; free its state if it still can."""
        future = self.states.pop(silo, None)
        actor = self.actors.pop(silo, None)
        address = self.workers.get(silo)
        if address is not None and all(self.workers[s] != address for s in self.states):
            self._close_channels([address])
        try:
            if actor is not None:
                actor.free()  # not awaited: the worker may be gone
            elif future is not None:
                self.submit(silo, gbdt_silo.call, future, "free", name="gbdt-free")
        except Exception:
            pass

    def free(self) -> None:
        """Free every silo's resident state and release its future; never raises."""
        self._close_channels()
        if self.states:
            try:
                if self.transport == "actor":
                    pending = [a.free() for a in self.actors.values()]
                    for future in pending:
                        future.result(timeout=10)
                else:
                    futures = {
                        s: self.submit(s, gbdt_silo.call, f, "free", name="gbdt-free")
                        for s, f in self.states.items()
                    }
                    _wait_all(list(futures.values()), 10)
            except Exception:
                pass
        self.actors.clear()
        self.states.clear()


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
