"""One run per federation at a time on this machine: safe to start from cron."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fedsilo.errors import FedsiloError


class FederationBusyError(FedsiloError):
    """Another process holds the federation's lock."""


def state_dir() -> Path:
    """Return where fedsilo keeps machine-local state (locks)."""
    explicit = os.environ.get("FEDSILO_STATE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "fedsilo"


def lock_path(federation: str, store: str) -> Path:
    """Return the lock file of one federation writing to one store."""
    digest = hashlib.sha256(store.encode()).hexdigest()[:10]
    return state_dir() / "locks" / f"{federation}-{digest}.lock"


@contextmanager
def federation_lock(federation: str, store: str, run_id: str) -> Iterator[Path]:
    """Hold the federation's lock for the block, or raise naming the holder.

    The lock is an ``flock`` on a file, so the kernel releases it when the
    holding process ends, however it ends: a killed run never leaves a stale
    lock behind.
    """
    path = lock_path(federation, store)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")  # noqa: SIM115 - held open for the block's lifetime
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            handle.seek(0)
            holder = handle.read().strip() or "{}"
            try:
                info = json.loads(holder)
            except json.JSONDecodeError:
                info = {}
            raise FederationBusyError(
                f"federation {federation!r} is already running into {store} "
                f"(pid {info.get('pid', '?')} on {info.get('host', '?')}, "
                f"run {info.get('run_id', '?')}, since {info.get('started', '?')}); "
                f"lock {path}"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "run_id": run_id,
                    "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                }
            )
        )
        handle.flush()
        yield path
    finally:
        handle.close()
