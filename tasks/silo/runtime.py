"""The silo runtime: what one silo worker holds, and the operations it serves.

A silo's worker loads the runtime itself, as a Dask ``WorkerPlugin``
(``dask worker SCHEDULER --name SILO --preload fedsilo.silo``, which is what
``fedsilo worker`` and the embedded cluster do). Everything a run keeps at the
silo lives in it, keyed by run, silo and slot: the rows as read, the prepared
arrays, the secure-aggregation key pair, the update compressor with its
residual, the binned boosting state. None of it is Dask data under a key: a
request names a held value by :class:`~tasks.protocol.messages.Resident`, and
the runtime looks it up.

The runtime serves only the operations of :data:`OPERATIONS`, by name, and
only over a run's channel to the worker (:mod:`tasks.silo.channel`): msgpack
and numpy buffers, never a pickle. The coordinator asks for the channel
through the worker's one fedsilo handler (:data:`CHANNEL_HANDLER`). The
runtime also guards the worker it runs in (``tasks/silo/guard.py``): no Dask
task, no ``Client.run``, no pickle is accepted there. One lock runs one
operation at a time. A run's holdings are freed when the coordinator says so,
when the run's channel closes, or when the worker stops.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from distributed import WorkerPlugin, get_worker
from distributed.comm.addressing import get_address_host

from tasks.protocol.messages import Resident
from tasks.silo import channel

if TYPE_CHECKING:
    from connectors.silo_config import SiloConfig

PLUGIN_NAME = "fedsilo-silo"
#: The Dask handler through which the coordinator asks for a run's channel.
CHANNEL_HANDLER = "fedsilo-channel"
logger = logging.getLogger("fedsilo.silo")
_active = threading.local()  # the runtime serving the operation on this thread

#: The operations a silo serves: name -> "module:callable", the module named
#: inside this package's ``tasks`` (so an installed wheel finds it too).
#: Nothing else runs.
OPERATIONS: dict[str, str] = {
    "load": "silo.data:load_silo",
    "schema": "silo.data:silo_schema",
    "moments": "silo.data:silo_moments",
    "prepare": "silo.data:prepare_silo",
    "row-count": "silo.data:row_count",
    "categories": "statistics.silo_side:silo_categories",
    "profile": "statistics.silo_side:silo_profile",
    "histograms": "statistics.silo_side:silo_histograms",
    "keypair": "privacy.silo_protect:make_keypair",
    "public-key": "privacy.silo_protect:public_key",
    "compressor": "averaging.compression:SiloCompressor",
    "fit": "silo.batch:fit_silos",
    "evaluate": "silo.batch:evaluate_silos",
    "personalize": "averaging.personalize:personalize_silo",
    "gbdt-rows": "boosting.silo_side:prepare_rows",
    "gbdt-row-count": "boosting.silo_side:n_rows",
    "gbdt-sketch": "boosting.silo_side:sketch_rows",
    "gbdt-open": "boosting.silo_side:open_silo",
    "gbdt-calls": "boosting.exchange:call_each",
    "gbdt-exchange": "boosting.exchange:exchange",
}


#: The modules declaring the message types a run's requests carry, by model
#: family: a channel imports those its run names before it reads a request
#: (``tasks.protocol.codec`` decodes only registered types). The core's are
#: imported with the runtime.
MESSAGE_MODULES: dict[str, str] = {
    "core": "silo.data",
    "boosting": "boosting.messages",
}


def import_messages(families: Sequence[str]) -> None:
    """Import the message modules of ``families`` (names of MESSAGE_MODULES)."""
    package = __name__.removesuffix(".silo.runtime")
    for family in ("core", *families):
        module = MESSAGE_MODULES.get(family)
        if module is None:
            raise ValueError(f"not a message family: {family!r}")
        importlib.import_module(f".{module}", package)


class RuntimeMissingError(RuntimeError):
    """The worker runs no fedsilo silo runtime."""


def operation(name: str) -> Callable[..., Any]:
    """Return the callable serving operation ``name``; refuse any other name."""
    target = OPERATIONS.get(name)
    if target is None:
        raise ValueError(f"not a silo operation: {name!r}")
    module, attr = target.split(":")
    package = __name__.removesuffix(".silo.runtime")  # "tasks" or "fedsilo.tasks"
    fn: Callable[..., Any] = getattr(
        importlib.import_module(f".{module}", package), attr
    )
    return fn


class SiloRuntime(WorkerPlugin):
    """Everything a silo worker holds for its runs, and the one way to use it.

    ``silo`` and ``config`` are the silo's own data config when the worker was
    started with one (``fedsilo worker --data``); it never leaves the worker.
    With ``guard`` (the default) the runtime guards its worker process
    (``tasks/silo/guard.py``); only a pseudo-silo inside the coordinator's own
    process (the compare flow's pooled rows) runs unguarded.
    """

    name = PLUGIN_NAME

    def __init__(
        self,
        silo: str | None = None,
        config: SiloConfig | None = None,
        *,
        guard: bool = True,
        insecure_plain_tcp: bool = False,
    ):
        self.silo = silo
        self.config = config
        self.guard = guard
        self.insecure_plain_tcp = insecure_plain_tcp
        self.worker_name = "local"
        self.host = "127.0.0.1"
        self.tls: Any = None
        self._held: dict[str, dict[tuple[str, str], Any]] = {}
        self._lock = threading.RLock()

    def __reduce__(self) -> Any:
        if self.config is not None:  # a silo's config is never pickled
            raise TypeError("a silo's config stays in its worker and is not pickled")
        return (SiloRuntime, ())

    # -- lifetime (WorkerPlugin) -------------------------------------------------
    def setup(self, worker: Any) -> None:
        """Learn the worker's name, host and TLS context; guard the worker."""
        self.worker_name = str(worker.name)
        self.host = get_address_host(worker.address)
        security = getattr(worker, "security", None)
        if security is not None:
            self.tls = security.get_listen_args("worker").get("ssl_context")
        if self.guard:
            from tasks.silo.guard import guard_worker

            guard_worker(worker, self.insecure_plain_tcp)
        worker.handlers[CHANNEL_HANDLER] = self.channel_handler

    def teardown(self, worker: Any) -> None:
        """Drop everything every run holds."""
        with self._lock:
            self._held.clear()

    # -- holdings ----------------------------------------------------------------
    def config_for(self, silo: str) -> SiloConfig | None:
        """Return the silo's own data config, if this worker holds ``silo``'s."""
        return self.config if self.silo == silo else None

    def put(self, ref: Resident, value: Any) -> None:
        """Hold ``value`` for ``ref``'s run (replacing what the slot held)."""
        with self._lock:
            self._held.setdefault(ref.run, {})[(ref.silo, ref.slot)] = value

    def get(self, ref: Resident) -> Any:
        """Return the held value ``ref`` names, or say that the silo lost it."""
        try:
            return self._held[ref.run][(ref.silo, ref.slot)]
        except KeyError:
            raise RuntimeError(
                f"silo {ref.silo!r} holds no {ref.slot} for run {ref.run} (never "
                "opened, freed, or the worker restarted)"
            ) from None

    def release(self, refs: Sequence[Resident]) -> None:
        """Drop the held values ``refs`` name (those not held are ignored)."""
        with self._lock:
            for ref in refs:
                held = self._held.get(ref.run, {})
                value = held.pop((ref.silo, ref.slot), None)
                free = getattr(value, "free", None)
                if callable(free):
                    free()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the runtime: no operation runs until the block ends."""
        with self._lock:
            yield

    def holdings(self, run: str) -> list[tuple[str, str]]:
        """Return the (silo, slot) pairs held for ``run``."""
        with self._lock:
            return sorted(self._held.get(run, {}))

    def runs(self) -> list[str]:
        """Return the runs holding something here."""
        with self._lock:
            return sorted(self._held)

    def free(self, run: str) -> None:
        """Drop everything ``run`` holds here (freeing each state that can be)."""
        with self._lock:
            held = self._held.pop(run, {})
        for value in held.values():
            free = getattr(value, "free", None)
            if callable(free):
                with contextlib.suppress(Exception):  # freed or broken: dropped
                    free()

    # -- operations -----------------------------------------------------------------
    def call(self, op: str, args: Sequence[Any], keep: Resident | None = None) -> Any:
        """Run operation ``op`` on ``args`` (held values looked up); hold or return.

        With ``keep`` the result is held under it and ``True`` returned.
        """
        if op == "release":
            self.release(args)
            return True
        fn = operation(op)
        with self._lock:
            _active.runtime = self
            try:
                result = fn(*self._resolve(tuple(args)))
            finally:
                _active.runtime = None
            if keep is not None:
                self.put(keep, result)
                return True
        return self._stamped(result)

    def _resolve(self, value: Any) -> Any:
        if isinstance(value, Resident):
            return self.get(value)
        if isinstance(value, list | tuple):
            return type(value)(self._resolve(v) for v in value)
        return value

    def _stamped(self, reply: Any) -> Any:
        """Stamp the worker's name on updates and evaluations."""
        if isinstance(reply, list):
            return [self._stamped(r) for r in reply]
        if dataclasses.is_dataclass(reply) and hasattr(reply, "worker"):
            return dataclasses.replace(reply, worker=self.worker_name)  # type: ignore[type-var]
        return reply

    def open_channel(self, run: str, token: bytes) -> tuple[str, int]:
        """Listen for the run's channel; when it closes, the run's holdings go."""

        def handle(
            op: str = "", args: Sequence[Any] = (), keep: Resident | None = None
        ) -> Any:
            if keep is not None and (
                not isinstance(keep, Resident) or keep.run != run
            ):
                raise ValueError("a channel holds values for its own run only")
            return self.call(op, args, keep)

        return channel.listen(
            self.host, token, handle, self.tls, on_close=lambda: self.free(run)
        )

    def channel_handler(
        self,
        comm: Any = None,
        run: Any = None,
        token: Any = None,
        families: Any = (),
    ) -> dict[str, Any]:
        """Serve the Dask handler that opens a run's channel: its host and port.

        Over TLS only the coordinator's certificate may ask
        (``fedsilo.certs``), whatever else the listener admits.
        """
        from fedsilo.certs import COORDINATOR
        from fedsilo.peers import PEER, PeerRefusedError

        if self.tls is not None and (
            (role := PEER.get()) is None or role.kind != COORDINATOR
        ):
            raise PeerRefusedError("only the coordinator opens a silo's channels")
        if not isinstance(run, str) or not run or len(run) > 256:
            raise ValueError("a channel needs its run's id")
        if not isinstance(token, bytes) or len(token) != channel.TOKEN_BYTES:
            raise ValueError(f"a channel needs a {channel.TOKEN_BYTES}-byte token")
        if not isinstance(families, list | tuple) or len(families) > 8:
            raise ValueError("a channel's message families are a short list")
        import_messages([str(f) for f in families])
        host, port = self.open_channel(run, token)
        return {"host": host, "port": port}


def current() -> SiloRuntime:
    """Return the runtime serving this operation (or of this Dask worker)."""
    runtime = getattr(_active, "runtime", None)
    if isinstance(runtime, SiloRuntime):
        return runtime
    worker = get_worker()
    runtime = worker.plugins.get(PLUGIN_NAME)
    if not isinstance(runtime, SiloRuntime):
        raise RuntimeMissingError(
            f"worker {worker.name!r} runs no fedsilo silo runtime: start it with "
            "`fedsilo worker` or `dask worker ... --preload fedsilo.silo`"
        )
    return runtime


def worker_silo_config(silo: str) -> SiloConfig | None:
    """Return the config the current worker's runtime holds for ``silo``, if any."""
    try:
        return current().config_for(silo)
    except (ValueError, RuntimeMissingError):
        return None
