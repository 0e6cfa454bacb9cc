"""A silo worker's guard: the little of Dask a silo leaves open to the federation.

The silo runtime installs it in its own worker (``SiloRuntime.setup``), so it
holds whatever the coordinator or the scheduler sends:

- **Who may connect.** Over TLS the worker's listener admits only peers whose
  certificate has the scheduler's or the coordinator's role
  (``fedsilo.peers.gate_listeners``): another silo's certificate, though
  signed by the same CA, is closed before a byte is read. Over plain TCP the
  worker must listen on loopback, unless its owner passed
  ``--insecure-plain-tcp``.
- **What it answers.** Of Dask's worker handlers only :data:`KEPT_HANDLERS`
  remain (``identity``, ``ping``, ``echo``, and the runtime's channel handler);
  ``run``, ``run_coroutine``, ``get_data``, ``gather``, ``update_data``,
  ``plugin-add``, ``upload_file``, ``actor_execute`` and the rest are removed
  and blocked. Of the scheduler's stream operations the ones that place work
  or data on the worker (``compute-task``, ``acquire-replicas``) are refused.
- **No pickle.** Nothing arriving in this process through Dask is unpickled
  (``fedsilo.peers.refuse_pickles``): a task, a ``Client.run`` function, a
  worker plugin or any payload a peer pickled fails to decode, before any of
  its code runs. The worker plugins a scheduler hands every joining worker
  (Dask's own shuffle plugin among them) are declined, not run.

What the silo serves is its runtime's operations over a run's channel
(``tasks/silo/channel.py``, ``tasks/silo/runtime.py``).
"""

from __future__ import annotations

import logging
from typing import Any

from fedsilo.certs import COORDINATOR, SCHEDULER, Role
from fedsilo.peers import check_plain_tcp, gate_listeners, refuse_pickles

logger = logging.getLogger("fedsilo.silo")

#: The Dask worker handlers a silo keeps, besides its runtime's channel handler.
KEPT_HANDLERS = frozenset({"identity", "ping", "echo"})
#: The scheduler's stream operations a silo refuses: they place work or data here.
REFUSED_STREAM_OPS = frozenset({"compute-task", "acquire-replicas"})


def admit_peer(role: Role | None, tls: bool) -> bool:
    """Return whether a silo worker serves a peer: the scheduler or coordinator."""
    if not tls:
        return True  # plain TCP: loopback only, or its owner said insecure
    return role is not None and role.kind in (SCHEDULER, COORDINATOR)


def guard_worker(worker: Any, insecure_plain_tcp: bool = False) -> None:
    """Guard ``worker``'s Dask surface (see the module's docstring)."""
    from tasks.silo.runtime import CHANNEL_HANDLER

    check_plain_tcp(str(worker.address), insecure_plain_tcp, f"silo {worker.name!r}")
    refuse_pickles(lambda role: True)
    gate_listeners(worker, admit_peer, f"silo {worker.name!r}")
    kept = KEPT_HANDLERS | {CHANNEL_HANDLER}
    removed = sorted(set(worker.handlers) - kept)
    for name in removed:
        del worker.handlers[name]
    worker.blocked_handlers = sorted({*worker.blocked_handlers, *removed})
    for op in REFUSED_STREAM_OPS:
        worker.stream_handlers[op] = _refuse(str(worker.name), op)
    worker.plugin_add = _local_plugins_only(worker)


def _local_plugins_only(worker: Any) -> Any:
    """Wrap ``worker.plugin_add``: plugins made here run, pickled ones are declined."""
    add = worker.plugin_add

    async def plugin_add(
        plugin: Any, name: str | None = None, catch_errors: bool = True
    ) -> Any:
        if isinstance(plugin, bytes | bytearray | memoryview):
            logger.info("silo %r declined the worker plugin %s", worker.name, name)
            return {"status": "error", "exception": None, "text": "declined"}
        return await add(plugin=plugin, name=name, catch_errors=catch_errors)

    return plugin_add


def _refuse(silo: str, op: str) -> Any:
    def refuse(**message: Any) -> None:
        logger.warning(
            "silo %r refused %s %s: it serves only fedsilo's silo operations",
            silo,
            op,
            message.get("key", ""),
        )

    return refuse
