"""A slow silo for tests: its runtime held busy for a while, as real work would."""

from __future__ import annotations

from typing import Any

from tests._probe import probe


def stall_silo(client: Any, address: str, seconds: float) -> None:
    """Keep the runtime of the worker at ``address`` busy; return once it is."""
    assert probe(address, "stall", seconds, security=client.security) is True
