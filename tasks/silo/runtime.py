"""The silo runtime: what one silo worker holds, and the operations it serves.

A silo's worker loads the runtime itself, as a Dask ``WorkerPlugin``
(``dask worker SCHEDULER --name SILO --preload fedsilo.silo``, which is what
``fedsilo worker`` and the embedded cluster do). Everything a run keeps at the
silo lives in it, keyed by run, silo and slot: the rows as read, the prepared
arrays, the secure-aggregation key pair, the update compressor with its
residual, the binned boosting state. None of it is Dask data under a key: a
request names a held value by :class:`~tasks.protocol.messages.Resident`, and
the runtime looks it up.

The runtime serves only the operations of :data:`OPERATIONS`, by name. They
reach it two ways: setup steps as pinned Dask tasks running
:func:`serve_operation`, and a round's requests over the run's channel to the
worker (:mod:`tasks.silo.channel`), which :func:`serve_operation` opens with
the ``channel`` operation. One lock runs one operation at a time, as the
single-threaded worker did. A run's holdings are freed when the coordinator
says so, when the run's channel closes, or when the worker stops.
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
logger = logging.getLogger("fedsilo.silo")

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
    """

    name = PLUGIN_NAME

    def __init__(self, silo: str | None = None, config: SiloConfig | None = None):
        self.silo = silo
        self.config = config
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
        """Learn the worker's name, host and TLS context."""
        self.worker_name = str(worker.name)
        self.host = get_address_host(worker.address)
        security = getattr(worker, "security", None)
        if security is not None:
            self.tls = security.get_listen_args("worker").get("ssl_context")

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
            result = fn(*self._resolve(tuple(args)))
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

        def handle(op: str = "", args: Sequence[Any] = ()) -> Any:
            return self.call(op, args)

        return channel.listen(
            self.host, token, handle, self.tls, on_close=lambda: self.free(run)
        )


def current() -> SiloRuntime:
    """Return the runtime of the Dask worker running this code."""
    worker = get_worker()
    runtime = worker.plugins.get(PLUGIN_NAME)
    if not isinstance(runtime, SiloRuntime):
        raise RuntimeMissingError(
            f"worker {worker.name!r} runs no fedsilo silo runtime: start it with "
            "`fedsilo worker` or `dask worker ... --preload fedsilo.silo`"
        )
    return runtime


def serve_operation(op: str, args: Sequence[Any], keep: Resident | None = None) -> Any:
    """Run a silo operation as a Dask task on the silo's worker (setup steps).

    ``op="channel"`` opens the run's channel: ``args`` are (run, token).
    """
    runtime = current()
    if op == "channel":
        run, token = args
        return runtime.open_channel(str(run), bytes(token))
    if op == "free":
        (run,) = args
        runtime.free(str(run))
        return True
    return runtime.call(op, args, keep)


def worker_silo_config(silo: str) -> SiloConfig | None:
    """Return the config the current worker's runtime holds for ``silo``, if any."""
    try:
        return current().config_for(silo)
    except (ValueError, RuntimeMissingError):
        return None
