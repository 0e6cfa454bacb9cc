"""Prefect settings fedsilo applies to the API it starts itself.

Prefect's ephemeral API (used when PREFECT_API_URL is unset) runs in a
subprocess that inherits these variables. Its task-run recorder persists each
task-run event in its own SQLite transaction by default; a round's ~30 events
then hold the database for about 2 s, and the next round flow run waits for
them. Persisting them in batches keeps every task run recorded without that
stall. Users' own servers keep their own settings (see docs/prefect.md).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator

EPHEMERAL_DEFAULTS = {
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "500",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL": "5",
    # Events too: by default every 20 events are one SQLite write, i.e. ten a
    # round at 32 silos; a request racing one gets 503 and Prefect's client
    # waits 2 s before trying again. The ephemeral API serves no UI, and both
    # services write what they hold when it stops.
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_BATCH_SIZE": "1000",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL": "5",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # The ephemeral API must answer within this; Prefect's 20 s default fails
    # `fedsilo run` outright on a busy machine (seen at load average 15).
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
}


def apply_defaults(quiet: bool = True) -> None:
    """Set fedsilo's defaults for any Prefect setting the user has not set."""
    for name, value in EPHEMERAL_DEFAULTS.items():
        os.environ.setdefault(name, value)
    if quiet:
        # Only the console is quietened: logs still reach the API (and its UI).
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")


def quiet_dask_logs() -> None:
    """Keep the coordinator's console free of Dask's INFO chatter."""
    logging.getLogger("distributed").setLevel(logging.ERROR)
    for name in ("nanny", "scheduler", "core", "worker", "batched", "http.proxy"):
        logging.getLogger(f"distributed.{name}").setLevel(logging.ERROR)


def warm_up(embedded_cluster: bool) -> Callable[[], None]:
    """Start, in the background, what a run waits for first; return a join function.

    That is the fork server of embedded silo workers (``embedded_cluster``) and,
    when no ``PREFECT_API_URL`` is set, Prefect's ephemeral API subprocess (about
    5 s to answer). Both are separate processes, so they boot while this one
    goes on importing and reading its spec. Call the returned function before
    the first flow: Prefect's own lazy start is not safe to race with. A
    failure here is left for the normal start to raise, with its own message.
    """
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    ephemeral = not PREFECT_API_URL.value() and PREFECT_SERVER_EPHEMERAL_ENABLED.value()
    if not (ephemeral or embedded_cluster):
        return lambda: None

    def start() -> None:
        with contextlib.suppress(Exception):
            if embedded_cluster:
                from fedsilo.cluster import start_forkserver

                start_forkserver()
            if ephemeral:
                from prefect.server.api.server import SubprocessASGIServer

                SubprocessASGIServer().start()

    thread = threading.Thread(target=start, name="fedsilo-warm-up", daemon=True)
    thread.start()
    return thread.join


@contextlib.contextmanager
def unwatched_heartbeats_off() -> Iterator[None]:
    """Run the parent flow without heartbeats when only the ephemeral API sees it.

    Heartbeats let a server mark a crashed flow run; Prefect's ephemeral API
    stops with this process, so nothing could use them. They cost up to a
    second at the end of every run (Prefect's heartbeat thread sleeps in 1 s
    steps and is joined when the flow ends). With ``PREFECT_API_URL`` set
    (a server, a deployment) they stay on.
    """
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        temporary_settings,
    )

    if PREFECT_API_URL.value():
        yield
        return
    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield
