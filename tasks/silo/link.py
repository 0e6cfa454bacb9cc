"""The coordinator's way to a run's silo runtimes (tasks/silo/runtime.py).

Setup steps (read, check, prepare, make keys) go as pinned Dask tasks running
one silo operation each; what they make stays held in the silo's runtime under
a :class:`~tasks.protocol.messages.Resident` name, and only small replies come
back. A round's requests go over one channel per worker, opened for the run
(:mod:`tasks.silo.channel`): msgpack and numpy buffers, never a pickle.
Closing the link closes the channels, and each silo then frees what it held
for the run.
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

from distributed import Future

from fedsilo.cluster import SiloCluster
from fedsilo.errors import SiloFailedError
from tasks.protocol.messages import Resident
from tasks.silo.channel import WATCH_SECONDS, Channel, first_ready, new_token
from tasks.silo.failures import wait_silo
from tasks.silo.runtime import serve_operation


class WorkerLeftError(RuntimeError):
    """The worker a request was sent to left the cluster before answering."""


async def check_worker(client: Any, address: str) -> None:
    """Raise WorkerLeftError when the scheduler no longer knows the worker."""
    if address not in await client.scheduler.ncores(workers=[address]):
        raise WorkerLeftError("its worker left the cluster")


def at_silo(
    cluster: SiloCluster,
    silo: str,
    op: str,
    *args: Any,
    key: str,
    keep: Resident | None = None,
) -> Future:
    """Run silo operation ``op`` as a Dask task on the silo's own worker.

    With ``keep`` the result stays held in the silo's runtime under that name
    and the task's value is only ``True``.
    """
    return cluster.submit(silo, serve_operation, op, args, keep, key=key)


@dataclass(slots=True)
class SiloLink:
    """One run's setup tasks and channels to the workers holding its silos."""

    cluster: SiloCluster
    run: str
    timeout: float
    channels: dict[str, Channel] = field(default_factory=dict)  # worker address
    _locks: dict[str, threading.Lock] = field(default_factory=dict)
    _counter: Any = field(default_factory=itertools.count)

    def ref(self, silo: str, slot: str) -> Resident:
        """Name what ``silo`` holds in ``slot`` for this run."""
        return Resident(self.run, silo, slot)

    def address(self, silo: str) -> str:
        """Return the address of the worker holding ``silo``."""
        return self.cluster.workers[silo]

    def submit(
        self, silo: str, op: str, *args: Any, name: str, keep: str | None = None
    ) -> Future:
        """Run ``op`` at ``silo`` as a Dask task; with ``keep``, hold its result."""
        held = None if keep is None else self.ref(silo, keep)
        key = f"{name}-{silo}-{self.run}-{next(self._counter)}"
        return at_silo(self.cluster, silo, op, *args, key=key, keep=held)

    def each(
        self,
        op: str,
        per_silo: Mapping[str, Sequence[Any]],
        *,
        name: str,
        keep: str | None = None,
    ) -> dict[str, Any]:
        """Run ``op(*per_silo[silo])`` at every silo; the first failure names it."""
        futures = {
            silo: self.submit(silo, op, *args, name=name, keep=keep)
            for silo, args in per_silo.items()
        }
        return {
            silo: wait_silo(silo, future, self.timeout)
            for silo, future in futures.items()
        }

    def release(self, refs: Sequence[Resident]) -> None:
        """Tell each silo to drop the held values ``refs`` name (no longer needed)."""
        by_silo: dict[str, list[Resident]] = {}
        for ref in refs:
            by_silo.setdefault(ref.silo, []).append(ref)
        self.each("release", by_silo, name="release")

    # -- channels -------------------------------------------------------------------
    def connect(self, silos: Sequence[str]) -> None:
        """Open a channel to every worker holding one of ``silos`` (if none yet)."""
        security = getattr(self.cluster.client, "security", None)
        tls = (
            security.get_connection_args("client").get("ssl_context")
            if security is not None
            else None
        )
        firsts: dict[str, str] = {}
        for silo in silos:
            firsts.setdefault(self.address(silo), silo)
        tokens = {address: new_token() for address in firsts}
        endpoints = self.each(
            "channel",
            {
                s: (self.run, tokens[a])
                for a, s in firsts.items()
                if a not in self.channels
            },
            name="channel",
        )
        for silo, endpoint in endpoints.items():
            address = self.address(silo)
            try:
                self.channels[address] = Channel.connect(
                    address,
                    tuple(endpoint),
                    tokens[address],
                    tls,
                    timeout=min(self.timeout, 10),
                )
            except Exception as error:
                raise SiloFailedError(silo, str(error)) from error
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

    def ask_all(self, requests: dict[str, tuple[str, Sequence[Any]]]) -> dict[str, Any]:
        """Send one request to each worker (by address) at once; answers by worker.

        An answer is the reply or the exception it raised; every channel's
        reply is read (or its failure noted) before returning, and a broken
        channel is dropped.
        """
        with contextlib.ExitStack() as held:  # one request at a time per channel
            for address in sorted(requests):
                if address in self._locks:
                    held.enter_context(self._locks[address])
            return self._ask_all(requests)

    def _ask_all(
        self, requests: dict[str, tuple[str, Sequence[Any]]]
    ) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        answers: dict[str, Any] = {}
        for address, (op, args) in requests.items():
            channel = self.channels.get(address)
            try:
                if channel is None or channel.closed:
                    raise ConnectionError("no channel for this run")
                channel.send(self.timeout, op=op, args=list(args))
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
