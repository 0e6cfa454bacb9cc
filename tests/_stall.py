"""A slow silo for tests: its runtime held busy for a while, as real work would."""

from __future__ import annotations

import time
from typing import Any

from distributed import fire_and_forget


def _busy(seconds: float) -> None:
    """Hold this worker's silo runtime: no operation runs for ``seconds``."""
    from tasks.silo.runtime import current

    with current().exclusive():
        time.sleep(seconds)


def stall_silo(client: Any, address: str, seconds: float) -> None:
    """Keep the runtime of the worker at ``address`` busy; return once it is."""
    busy = client.submit(_busy, seconds, workers=[address], pure=False)
    fire_and_forget(busy)
    deadline = time.monotonic() + 10
    while not client.processing(workers=[address]).get(address):
        assert time.monotonic() < deadline, "the stall did not start"
        time.sleep(0.01)
