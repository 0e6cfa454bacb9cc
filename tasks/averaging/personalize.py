"""Personalization at a silo: fine-tune the federated model on its own rows.

Runs on the silo's own worker (no Prefect import). The fine-tuned model never
leaves the silo; only its scores do.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tasks.protocol.messages import Evaluation
from tasks.silo.data import FitConfig, PreparedSilo, silo_evaluate, silo_fit


def personalize_silo(
    prepared: PreparedSilo,
    params: dict[str, np.ndarray],
    config: FitConfig,
    epochs: int,
    round_number: int,
) -> list[Evaluation]:
    """Train ``params`` for ``epochs`` more local epochs; score them at the silo.

    The evaluations carry ``round_number``: the federated round whose model was
    fine-tuned.
    """
    tuned = dataclasses.replace(config, epochs=epochs)
    update = silo_fit(prepared, params, tuned, round_number + 1)
    return silo_evaluate(prepared, update.params, config, round_number)
