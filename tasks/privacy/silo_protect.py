"""What a silo does to its update before it leaves: clip, add a noise share, mask.

Runs on the silo's worker, in this order, in :func:`protect` (a secure
aggregation protocol keeps the order: its masking is the last step):

1. DP clip: the change from the global model, clipped to ``request.clip``.
2. Distributed DP: the silo's share of the Gaussian noise, N(0, (z * clip)**2 /
   m) for a roster of ``m`` silos, drawn from the OS's CSPRNG
   (``tasks.privacy.secure_random``); the clip vote of adaptive clipping gets
   its share N(0, count_stddev**2 / m) too. Nothing of the draw is kept.
3. Secure aggregation: the vector is masked; nothing goes in the clear.

The silo's X25519 private key is created here and stays in the worker process
(held by its silo runtime, never resolved by the coordinator); only its public
half is sent.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from fedsilo.spec import DPSpec
from tasks.privacy.dp import (
    add_gaussian_noise,
    clip_by_l2,
    clip_vote,
    params_delta,
    update_noise_multiplier,
)
from tasks.privacy.encoding import flatten, layout_of
from tasks.privacy.secagg import (
    KeyPair,
    MaskedUpdate,
    generate_keypair,
    mask_update,
    mask_weighted_update,
)
from tasks.privacy.secure_random import NoiseSource, SecureRandom
from tasks.protocol.messages import PrivacyRequest

#: Counters that are state, not parameters: never clipped, noised or averaged
#: under DP (the global value is kept).
STATE_TENSORS = frozenset({"t_"})


def make_keypair() -> KeyPair:
    """Create the silo's key pair for this run (kept on the worker)."""
    return generate_keypair()


def public_key(pair: KeyPair) -> bytes:
    """Return the public half of a silo's key pair."""
    return pair.public


def dp_tensors(params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Return the tensors DP covers (all but state counters)."""
    return {k: v for k, v in params.items() if k not in STATE_TENSORS}


def with_noise_share(
    request: PrivacyRequest, dp: DPSpec | None, roster_size: int
) -> PrivacyRequest:
    """Return the request asking for the silo's noise share under distributed DP.

    The roster is the silos masking together in this attempt: a retry without a
    silo that dropped asks the rest for larger shares, so their sum keeps the
    full variance. Central noise (or no DP) leaves the request as it is.
    """
    if dp is None or dp.noise != "distributed":
        return request
    if roster_size < 1:
        raise ValueError(f"a roster has at least one silo, got {roster_size}")
    adaptive = dp.adaptive
    z = dp.noise_multiplier
    vote_stddev = 0.0
    if adaptive is not None:
        z = update_noise_multiplier(z, adaptive.count_stddev)
        vote_stddev = adaptive.count_stddev / float(np.sqrt(roster_size))
    return replace(
        request,
        noise_multiplier=z,
        noise_shares=roster_size,
        vote_stddev=vote_stddev,
    )


def protect(
    params: dict[str, np.ndarray],
    global_params: dict[str, np.ndarray],
    n_samples: int,
    request: PrivacyRequest,
    keys: KeyPair | None,
    rng: NoiseSource | None = None,
) -> tuple[dict[str, np.ndarray], MaskedUpdate | None, dict[str, float]]:
    """Return (clear tensors to send, masked update, metrics) for one update.

    With DP the update becomes its change from the global model, clipped to
    ``request.clip`` and unweighted (each silo counts once). A noise share
    (distributed DP) is added next, from ``rng`` (default: a fresh
    :class:`SecureRandom`). With secure aggregation nothing is sent in the
    clear: the (weighted) vector is masked.
    """
    metrics: dict[str, float] = {}
    payload = params
    weighted = True
    if request.clip is not None:
        delta = params_delta(dp_tensors(params), dp_tensors(global_params))
        payload, norm = clip_by_l2(delta, request.clip)
        metrics["update_norm"] = norm
        weighted = False
    sharing = request.noise_multiplier is not None
    if sharing and (request.clip is None or not request.secure):
        raise ValueError(
            "a noise share needs a DP clip and secure aggregation: unmasked, the "
            "update would leave with 1/m of the noise"
        )
    if not request.secure:
        if request.vote and request.clip is not None:
            metrics["clip_vote"] = clip_vote(metrics["update_norm"], request.clip)
        return payload, None, metrics
    if keys is None or request.peers_public is None or request.context is None:
        raise ValueError("secure aggregation needs keys, peers and a context")
    assert request.silo_index is not None
    vote = None
    if request.vote and request.clip is not None:
        vote = clip_vote(metrics["update_norm"], request.clip)
    if sharing:
        assert request.clip is not None and request.noise_multiplier is not None
        draw = rng if rng is not None else SecureRandom()
        payload = add_gaussian_noise(
            payload,
            request.clip,
            request.noise_multiplier,
            draw,
            n_shares=request.noise_shares,
        )
        if vote is not None and request.vote_stddev > 0:
            vote += float(draw.normal(0.0, request.vote_stddev))
    vector, _ = flatten(payload, layout_of(payload))
    if vote is not None:
        vector = np.append(vector, vote)
    if weighted:
        masked = mask_weighted_update(
            request.silo_index,
            keys.private,
            request.peers_public,
            vector,
            float(n_samples),
            context=request.context,
        )
    else:
        masked = mask_update(
            request.silo_index,
            keys.private,
            request.peers_public,
            vector,
            context=request.context,
        )
    metrics.pop("update_norm", None)  # a norm in the clear would defeat the mask
    return {}, masked, metrics
