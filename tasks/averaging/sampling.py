"""Which silos train in a round: a seeded sample, the same on every rerun."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def sample_silos(
    silos: Sequence[str], fraction: float, min_silos: int, seed: int, round_number: int
) -> list[str]:
    """Return ``max(min_silos, ceil(fraction * n))`` silos, in their listed order."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    count = min(len(silos), max(min_silos, math.ceil(fraction * len(silos))))
    if count >= len(silos):
        return list(silos)
    rng = np.random.default_rng([seed, round_number, 0x5A4D])
    chosen = set(rng.choice(len(silos), size=count, replace=False).tolist())
    return [silo for i, silo in enumerate(silos) if i in chosen]
