"""Which silos train in a round: seeded without DP, secret with it.

Without DP the sample is a function of the spec's seed and the round, the same
on every rerun (a run is reproducible from its spec). Under DP the accountant's
amplification by sampling holds only against whoever cannot predict the
sample, and the seed is in the spec (a Prefect flow parameter, every
checkpoint's metadata): the sample is then drawn from the OS's CSPRNG
(``tasks.privacy.secure_random``) and differs on every run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from tasks.privacy.secure_random import SecureRandom


def sample_size(population: int, fraction: float, min_silos: int) -> int:
    """Return how many silos a round samples: ``max(min_silos, ceil(fraction n))``."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    return min(population, max(min_silos, math.ceil(fraction * population)))


def sample_silos(
    silos: Sequence[str],
    fraction: float,
    min_silos: int,
    seed: int,
    round_number: int,
    *,
    secret: bool = False,
) -> list[str]:
    """Return ``sample_size`` silos, in their listed order.

    ``secret`` (DP runs): drawn from the OS's CSPRNG, ignoring the seed.
    """
    count = sample_size(len(silos), fraction, min_silos)
    if count >= len(silos):
        return list(silos)
    if secret:
        chosen = set(SecureRandom().sample(len(silos), count))
    else:
        rng = np.random.default_rng([seed, round_number, 0x5A4D])
        chosen = set(rng.choice(len(silos), size=count, replace=False).tolist())
    return [silo for i, silo in enumerate(silos) if i in chosen]
