"""The coordinator's way to a run's silo runtimes (tasks/silo/runtime.py).

Every request, setup steps (read, check, prepare, make keys) and a round's
work alike, goes over one channel per worker, opened for the run
(:mod:`tasks.silo.channel`): msgpack and numpy buffers, never a pickle. The
coordinator asks a worker for the channel through the runtime's one Dask
handler, on a connection whose replies it refuses to unpickle. What a setup
step makes stays held in the silo's runtime under a
:class:`~tasks.protocol.messages.Resident` name, and only small replies come
back. Closing the link closes the channels, and each silo then frees what it
held for the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fedsilo.certs import SILO, Role
from fedsilo.cluster import SiloCluster
from fedsilo.errors import FedsiloError, SiloFailedError
from fedsilo.peers import PEER, refuse_pickles
from tasks.protocol.codec import RemoteError
from tasks.protocol.messages import Resident
from tasks.silo.channel import WATCH_SECONDS, Channel, first_ready, new_token
from tasks.silo.failures import silo_failure
from tasks.silo.runtime import CHANNEL_HANDLER

#: What the coordinator refuses to unpickle: anything a silo sends.
refuse_pickles(lambda role: role is not None and role.kind == SILO)


class WorkerLeftError(RuntimeError):
    """The worker a request was sent to left the cluster before answering."""


async def check_worker(client: Any, address: str) -> None:
    """Raise WorkerLeftError when the scheduler no longer knows the worker."""
    if address not in await client.scheduler.ncores(workers=[address]):
        raise WorkerLeftError("its worker left the cluster")


async def request_channel(
    address: str,
    silo: str,
    run: str,
    token: bytes,
    families: Sequence[str],
    connection_args: dict[str, Any],
) -> tuple[str, int]:
    """Ask the worker at ``address`` to listen for ``run``'s channel.

    The connection is marked as a silo's (``fedsilo.peers.PEER``), so a pickle
    in its reply is refused rather than run.
    """
    from distributed.comm import connect

    PEER.set(Role(SILO, silo))
    comm = await connect(address, **connection_args)
    try:
        await comm.write(
            {
                "op": CHANNEL_HANDLER,
                "run": run,
                "token": token,
                "families": list(families),
                "reply": True,
            }
        )
        reply = await comm.read()
    finally:
        comm.abort()
    if isinstance(reply, dict) and reply.get("status") == "uncaught-error":
        # Dask pickles the exception; its text is enough, and not unpickled.
        raise ConnectionError(str(reply.get("exception_text", "refused")))
    if not (
        isinstance(reply, dict)
        and isinstance(reply.get("host"), str)
        and isinstance(reply.get("port"), int)
    ):
        raise ConnectionError(f"{address} answered no channel endpoint")
    return reply["host"], reply["port"]


@dataclass(slots=True)
class SiloLink:
    """One run's setup tasks and channels to the workers holding its silos."""

    cluster: SiloCluster
    run: str
    timeout: float
    families: tuple[str, ...] = ()  # message families beyond the core (MESSAGE_MODULES)
    channels: dict[str, Channel] = field(default_factory=dict)  # worker address
    _locks: dict[str, threading.Lock] = field(default_factory=dict)
    _counter: Any = field(default_factory=itertools.count)

    def ref(self, silo: str, slot: str) -> Resident:
        """Name what ``silo`` holds in ``slot`` for this run."""
        return Resident(self.run, silo, slot)

    def address(self, silo: str) -> str:
        """Return the address of the worker holding ``silo``."""
        return self.cluster.workers[silo]

    def each(
        self,
        op: str,
        per_silo: Mapping[str, Sequence[Any]],
        *,
        name: str = "",
        keep: str | None = None,
    ) -> dict[str, Any]:
        """Run ``op(*per_silo[silo])`` at every silo; the first failure names it.

        Silos of different workers run at once; silos sharing a worker, one
        after the other. With ``keep`` each result stays held at its silo under
        that slot and the reply is ``True``.
        """
        self.connect(list(per_silo))
        pending = dict(per_silo)
        replies: dict[str, Any] = {}
        while pending:
            batch: dict[str, str] = {}  # worker address -> silo
            for silo in pending:
                batch.setdefault(self.address(silo), silo)
            requests: dict[str, dict[str, Any]] = {}
            for address, silo in batch.items():
                request: dict[str, Any] = {"op": op, "args": list(pending.pop(silo))}
                if keep is not None:
                    request["keep"] = self.ref(silo, keep)
                requests[address] = request
            answers = self.ask_all(requests)
            for address, silo in batch.items():
                answer = answers[address]
                if isinstance(answer, BaseException):
                    raise self._failure(silo, answer) from answer
                replies[silo] = answer
        return replies

    def _failure(self, silo: str, error: BaseException) -> FedsiloError:
        if isinstance(error, FedsiloError) and not isinstance(error, RemoteError):
            return error  # the user's mistake, named at the silo (a SiloDataError)
        if not isinstance(error, Exception):
            return SiloFailedError(silo, type(error).__name__)
        return silo_failure(silo, error, self.timeout)

    def release(self, refs: Sequence[Resident]) -> None:
        """Tell each silo to drop the held values ``refs`` name (no longer needed)."""
        by_silo: dict[str, list[Resident]] = {}
        for ref in refs:
            by_silo.setdefault(ref.silo, []).append(ref)
        self.each("release", by_silo)

    # -- channels -------------------------------------------------------------------
    def connect(self, silos: Sequence[str]) -> None:
        """Open a channel to every worker holding one of ``silos`` (if none yet)."""
        security = getattr(self.cluster.client, "security", None)
        connection_args = (
            security.get_connection_args("client") if security is not None else {}
        )
        tls = connection_args.get("ssl_context")
        firsts: dict[str, str] = {}
        for silo in silos:
            address = self.address(silo)
            channel = self.channels.get(address)
            if channel is None or channel.closed:
                firsts.setdefault(address, silo)
        for address, silo in firsts.items():
            token = new_token()
            try:
                endpoint = self.cluster.client.sync(
                    asyncio.wait_for,
                    request_channel(
                        address, silo, self.run, token, self.families, connection_args
                    ),
                    min(self.timeout, 30),
                )
                self.channels[address] = Channel.connect(
                    address, endpoint, token, tls, timeout=min(self.timeout, 10)
                )
            except Exception as error:
                raise SiloFailedError(silo, _first_line(error)) from error
            self._locks[address] = threading.Lock()

    def ask(self, silo: str, op: str, args: Sequence[Any], wait: float) -> Any:
        """Send ``op(*args)`` to the worker holding ``silo``; wait for its reply.

        Raises TimeoutError after ``wait`` seconds (the reply is then skipped
        when it comes), WorkerLeftError when the worker left, ChannelError
        when the channel broke (it is then dropped), or the silo's own error.
        """
        address = self.address(silo)
        channel = self.channels.get(address)
        if channel is None or channel.closed:
            raise SiloFailedError(silo, "its worker has no channel for this run")
        with self._locks[address]:
            channel.send(wait, op=op, args=list(args))
            try:
                return channel.receive(
                    time.monotonic() + wait,
                    functools.partial(self.check_worker, address),
                )
            except (ConnectionError, WorkerLeftError):
                self.drop(address)
                raise

    def ask_all(self, requests: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """Send one request to each worker (by address) at once; answers by worker.

        A request is ``{"op": ..., "args": [...]}`` (and ``keep``, a
        :class:`Resident` to hold the result under).

        An answer is the reply or the exception it raised; every channel's
        reply is read (or its failure noted) before returning, and a broken
        channel is dropped.
        """
        with contextlib.ExitStack() as held:  # one request at a time per channel
            for address in sorted(requests):
                if address in self._locks:
                    held.enter_context(self._locks[address])
            return self._ask_all(requests)

    def _ask_all(self, requests: dict[str, dict[str, Any]]) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        answers: dict[str, Any] = {}
        for address, request in requests.items():
            channel = self.channels.get(address)
            try:
                if channel is None or channel.closed:
                    raise ConnectionError("no channel for this run")
                channel.send(self.timeout, **request)
            except ConnectionError as error:
                answers[address] = error
        waiting = {self.channels[a]: a for a in requests if a not in answers}
        while waiting:  # replies in the order they come
            ready = first_ready(list(waiting), WATCH_SECONDS)
            if not ready:
                for channel, address in list(waiting.items()):
                    try:
                        if time.monotonic() >= deadline:
                            raise TimeoutError(f"no reply within {self.timeout:g}s")
                        self.check_worker(address)
                    except Exception as error:
                        answers[address] = error
                        del waiting[channel]
                continue
            for channel in ready:
                address = waiting.pop(channel)
                try:
                    answers[address] = channel.receive(
                        deadline, functools.partial(self.check_worker, address)
                    )
                except Exception as error:
                    answers[address] = error
        for address, answer in answers.items():
            if isinstance(answer, ConnectionError | WorkerLeftError | TimeoutError):
                self.drop(address)
        return answers

    def check_worker(self, address: str) -> None:
        """Raise WorkerLeftError when the scheduler no longer knows the worker."""
        client = self.cluster.client
        client.sync(asyncio.wait_for, check_worker(client, address), self.timeout)

    def drop(self, address: str) -> None:
        """Close the channel to ``address`` (the worker frees the run's holdings)."""
        channel = self.channels.pop(address, None)
        if channel is not None:
            channel.close()

    def close(self) -> None:
        """Close every channel; each silo then frees what it held for the run."""
        for address in list(self.channels):
            self.drop(address)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
