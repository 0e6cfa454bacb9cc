"""fedsilo's Python API: the names a notebook or a script imports.

The same import works in a checkout (where ``flows`` and ``tasks`` are
top-level packages) and in an installed wheel (where they live under
``fedsilo``): ``from fedsilo.api import federated_training, load_estimator``.
"""

from __future__ import annotations

from flows.compare import federated_comparison
from flows.stats import federated_stats
from flows.training import federated_training
from tasks.run_state import RoundResult, Run, listening
from tasks.store.checkpoints import CheckpointStore, list_runs
from tasks.store.model_io import load_estimator

__all__ = [
    "CheckpointStore",
    "RoundResult",
    "Run",
    "federated_comparison",
    "federated_stats",
    "federated_training",
    "list_runs",
    "listening",
    "load_estimator",
]
