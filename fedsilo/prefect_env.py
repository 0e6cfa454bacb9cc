"""Prefect settings fedsilo applies to the API it starts itself.

Prefect's ephemeral API (used when PREFECT_API_URL is unset) runs in a
subprocess that inherits these variables. Its task-run recorder persists each
task-run event in its own SQLite transaction by default; a round's ~30 events
then hold the database for about 2 s, and the next round flow run waits for
them. Persisting them in batches keeps every task run recorded without that
stall. Users' own servers keep their own settings (see docs/prefect.md).
"""

from __future__ import annotations

import logging
import os

EPHEMERAL_DEFAULTS = {
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "500",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL": "2",
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
