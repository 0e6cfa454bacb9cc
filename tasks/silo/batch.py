"""One Dask task per worker and phase: fit or score every silo it holds, in turn.

Runs inside a silo worker's process (no Prefect here). A worker that hosts many
silos gets one task a round for all of them instead of one per silo, and the
global model crosses the network once per worker. A silo whose work raises is
reported as a :class:`SiloFault` in its place, so it does not sink the silos
that share its worker.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from fedsilo.errors import FedsiloError
from tasks.averaging.compression import SiloCompressor
from tasks.privacy.secagg import KeyPair
from tasks.privacy.silo_protect import PrivacyRequest
from tasks.protocol.messages import Evaluation, LocalUpdate, SiloFault
from tasks.silo.data import FitConfig, PreparedSilo, silo_evaluate, silo_fit

_log = logging.getLogger("fedsilo.silo")


def fault(silo: str, error: Exception) -> SiloFault:
    """Describe ``error`` in one line; a fedsilo error keeps its reason."""
    if isinstance(error, FedsiloError):
        reason = error.reason.removeprefix(f"silo {silo!r}: ")
    else:
        text = str(error).splitlines()[0] if str(error) else ""
        reason = f"{type(error).__name__}: {text}"
    return SiloFault(silo, reason)


def fit_silos(
    silos: Sequence[str],
    prepared: Sequence[PreparedSilo],
    requests: Sequence[PrivacyRequest | None],
    keys: Sequence[KeyPair | None],
    global_params: dict[str, np.ndarray],
    config: FitConfig,
    round_number: int,
    compressors: Sequence[SiloCompressor | None] | None = None,
) -> list[LocalUpdate | SiloFault]:
    """Train the global model at each silo, in turn; one reply (or fault) each.

    ``prepared``, ``requests``, ``keys`` and ``compressors`` hold the silos'
    arrays, privacy requests, key pairs and update compressors, in the order of
    ``silos``.
    """
    out: list[LocalUpdate | SiloFault] = []
    packers = compressors if compressors is not None else [None] * len(silos)
    for silo, data, request, pair, packer in zip(
        silos, prepared, requests, keys, packers, strict=True
    ):
        try:
            out.append(
                silo_fit(
                    data, global_params, config, round_number, request, pair, packer
                )
            )
        except Exception as error:  # one silo's failure is its own
            _log.exception("silo %r: fit of round %d failed", silo, round_number)
            out.append(fault(silo, error))
    return out


def evaluate_silos(
    silos: Sequence[str],
    prepared: Sequence[PreparedSilo],
    params: dict[str, np.ndarray],
    config: FitConfig,
    round_number: int,
) -> list[list[Evaluation] | SiloFault]:
    """Score the global model at each silo; one reply (or fault) per silo."""
    out: list[list[Evaluation] | SiloFault] = []
    for silo, data in zip(silos, prepared, strict=True):
        try:
            out.append(silo_evaluate(data, params, config, round_number))
        except Exception as error:  # one silo's failure is its own
            _log.exception("silo %r: scoring of round %d failed", silo, round_number)
            out.append(fault(silo, error))
    return out
