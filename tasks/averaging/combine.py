"""Turn one round's silo replies into the next global model (no I/O).

The strategy decides how: the one registered under the spec's kind
(tasks/averaging/strategies.py: FedAvg, robust aggregators) over validated
updates, secure aggregation (only the sum is ever decoded) and client-level DP
(clipped changes, Gaussian noise on their sum, or the silos' noise shares
under distributed noise); a server optimiser may then step
on the result. Compressed updates (tasks/averaging/compression.py) are decoded
first: global model plus the decoded change. Everything here is plain arrays in,
arrays out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from fedsilo.errors import InconsistentUpdatesError
from fedsilo.spec import DPSpec, StrategySpec
from tasks.averaging.compression import EncodedUpdate, apply_change, decode
from tasks.averaging.strategies import Update, strategy_for
from tasks.privacy.dp import (
    AdaptiveClip,
    add_gaussian_noise,
    dp_mean,
    update_clip,
    update_noise_multiplier,
)
from tasks.privacy.encoding import layout_of, unflatten
from tasks.privacy.secagg import unmask_sum, unmask_weighted_average
from tasks.privacy.secure_random import NoiseSource, SecureRandom
from tasks.privacy.silo_protect import STATE_TENSORS, dp_tensors
from tasks.protocol.messages import LocalUpdate
from tasks.robust.validation import Rejection, shapes_of, validate_updates

Params = dict[str, np.ndarray]


@dataclass(slots=True)
class Combined:
    """The aggregate of a round and what happened on the way."""

    params: Params
    rejected: list[Rejection] = field(default_factory=list)
    clip: float | None = None  # DP clip for the next round (adaptive clipping)


def decompress(
    updates: Sequence[LocalUpdate], global_params: Params
) -> tuple[list[LocalUpdate], list[Rejection]]:
    """Give compressed updates their full parameters (global plus decoded change).

    An update whose payload cannot be decoded against the global model (names,
    shapes, sizes) is rejected with the reason, like any unfit update.
    """
    out: list[LocalUpdate] = []
    rejected: list[Rejection] = []
    for update in updates:
        payload = update.compressed
        if payload is None:
            out.append(update)
            continue
        try:
            if not isinstance(payload, EncodedUpdate):
                raise ValueError(f"a {type(payload).__name__}, not an EncodedUpdate")
            params = apply_change(global_params, decode(payload))
        except (ValueError, TypeError, AttributeError) as error:
            reason = f"compressed update cannot be decoded: {error}"
            rejected.append(Rejection(update.silo, reason))
            continue
        out.append(replace(update, params=params, compressed=None))
    return out, rejected


def _unmasked_mean_params(updates: Sequence[LocalUpdate], template: Params) -> Params:
    mean, _ = unmask_weighted_average([u.masked for u in updates])
    return unflatten(mean, layout_of(template))


def _dp_step(
    updates: Sequence[LocalUpdate],
    global_params: Params,
    dp: DPSpec,
    clip: float,
    expected_silos: int,
    rng: NoiseSource,
) -> tuple[Params, float]:
    """Return (new params, next clip) from clipped changes plus noise.

    Central noise is drawn here from ``rng``. Under distributed noise the silos
    added theirs before masking: the decoded sum is already noisy (the clip
    votes too) and nothing is added.
    """
    template = dp_tensors(global_params)
    adaptive = dp.adaptive
    distributed = dp.noise == "distributed"
    if distributed and not (updates and updates[0].masked is not None):
        raise ValueError("distributed DP noise needs masked updates")
    if updates and updates[0].masked is not None:
        total = unmask_sum([u.masked for u in updates])
        vote_sum = float(total[-1]) if adaptive else 0.0
        vector = total[:-1] if adaptive else total
        summed = unflatten(vector, layout_of(template))
    else:
        summed = {
            name: np.sum([u.params[name] for u in updates], axis=0) for name in template
        }
        vote_sum = float(sum(u.metrics.get("clip_vote", 0.0) for u in updates))
    z = dp.noise_multiplier
    if adaptive:
        z = update_noise_multiplier(z, adaptive.count_stddev)
    noisy = summed if distributed else add_gaussian_noise(summed, clip, z, rng)
    mean_change = dp_mean(noisy, expected_silos)
    new = {
        name: (
            np.asarray(value)
            if name in STATE_TENSORS
            else np.asarray(value, dtype=np.float64) + mean_change[name]
        ).astype(np.asarray(value).dtype, copy=False)
        for name, value in global_params.items()
    }
    next_clip = clip
    if adaptive:
        state = AdaptiveClip(
            clip=clip,
            target_quantile=adaptive.target_quantile,
            learning_rate=adaptive.learning_rate,
            count_stddev=0.0 if distributed else adaptive.count_stddev,
        )
        next_clip = update_clip(state, vote_sum, expected_silos, rng).clip
    return new, next_clip


def combine(
    updates: Sequence[LocalUpdate],
    global_params: Params,
    strategy: StrategySpec,
    *,
    dp: DPSpec | None = None,
    clip: float | None = None,
    expected_silos: int = 1,
    rng: NoiseSource | None = None,
) -> Combined:
    """Return the next global model (before any server optimiser).

    DP noise is drawn from ``rng``: leave it None in a run (the OS's CSPRNG,
    ``SecureRandom``); a seeded generator is for tests that replay draws.
    """
    if dp is not None:
        if clip is None:
            raise ValueError("DP needs the current clip")
        draw = SecureRandom() if rng is None else rng
        new, next_clip = _dp_step(
            updates, global_params, dp, clip, expected_silos, draw
        )
        return Combined(new, clip=next_clip)
    if updates and updates[0].masked is not None:
        return Combined(_unmasked_mean_params(updates, global_params))
    updates, undecodable = decompress(updates, global_params)
    valid, rejected = validate_updates(
        [(u.silo, u.params) for u in updates],
        shapes_of(global_params),
        norm_bound=strategy.norm_bound,
        center=global_params if strategy.norm_bound is not None else None,
    )
    rejected = undecodable + rejected
    kept = [u for u in updates if u.silo in valid]
    if not kept:
        reasons = "; ".join(f"{r.silo}: {r.reason}" for r in rejected)
        raise InconsistentUpdatesError(f"every update was rejected ({reasons})")
    chosen = strategy_for(strategy, rejected=len(rejected))
    weighted = [Update(u.silo, valid[u.silo], float(u.n_samples)) for u in kept]
    return Combined(chosen.aggregate(weighted, global_params), rejected)
