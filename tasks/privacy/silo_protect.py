"""What a silo does to its update before it leaves: clip (DP) and mask (SecAgg).

Runs on the silo's worker. The silo's X25519 private key is created here and
stays in the worker process (held by a Dask future the coordinator never
resolves); only its public half is sent.
"""

from __future__ import annotations

import numpy as np

from tasks.privacy.dp import clip_by_l2, clip_vote, params_delta
from tasks.privacy.encoding import flatten, layout_of
from tasks.privacy.secagg import (
    KeyPair,
    MaskedUpdate,
    generate_keypair,
    mask_update,
    mask_weighted_update,
)
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


def protect(
    params: dict[str, np.ndarray],
    global_params: dict[str, np.ndarray],
    n_samples: int,
    request: PrivacyRequest,
    keys: KeyPair | None,
) -> tuple[dict[str, np.ndarray], MaskedUpdate | None, dict[str, float]]:
    """Return (clear tensors to send, masked update, metrics) for one update.

    With DP the update becomes its change from the global model, clipped to
    ``request.clip`` and unweighted (each silo counts once). With secure
    aggregation nothing is sent in the clear: the (weighted) vector is masked.
    """
    metrics: dict[str, float] = {}
    payload = params
    weighted = True
    if request.clip is not None:
        delta = params_delta(dp_tensors(params), dp_tensors(global_params))
        payload, norm = clip_by_l2(delta, request.clip)
        metrics["update_norm"] = norm
        weighted = False
    if not request.secure:
        if request.vote and request.clip is not None:
            metrics["clip_vote"] = clip_vote(metrics["update_norm"], request.clip)
        return payload, None, metrics
    if keys is None or request.peers_public is None or request.context is None:
        raise ValueError("secure aggregation needs keys, peers and a context")
    assert request.silo_index is not None
    vector, _ = flatten(payload, layout_of(payload))
    if request.vote and request.clip is not None:
        vector = np.append(vector, clip_vote(metrics["update_norm"], request.clip))
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
