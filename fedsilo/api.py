"""fedsilo's Python API: the names a notebook or a script imports.

The same import works in a checkout (where ``flows`` and ``tasks`` are
top-level packages) and in an installed wheel (where they live under
``fedsilo``): ``from fedsilo.api import federated_training, load_estimator``.
The ``register_*`` functions add a strategy, a model kind or a connector
(docs/architecture.md, "Adding things").
"""

from __future__ import annotations

from connectors.readers import read_source, register_reader
from fedsilo.model_kinds import ModelKind, register_model_kind
from fedsilo.source_kinds import SourceKind, register_source_kind
from fedsilo.strategy_spec import StrategySpec, register_strategy_spec
from flows.compare import federated_comparison
from flows.stats import federated_stats
from flows.training import federated_training
from tasks.averaging.model_adapters import (
    LocalTraining,
    ModelAdapter,
    StartingPoint,
    register_model,
)
from tasks.averaging.strategies import Strategy, Update, register_strategy
from tasks.run_state import RoundResult, Run, listening
from tasks.store.checkpoints import CheckpointStore, list_runs
from tasks.store.model_io import load_estimator

__all__ = [
    "CheckpointStore",
    "LocalTraining",
    "ModelAdapter",
    "ModelKind",
    "RoundResult",
    "Run",
    "SourceKind",
    "StartingPoint",
    "Strategy",
    "StrategySpec",
    "Update",
    "federated_comparison",
    "federated_stats",
    "federated_training",
    "list_runs",
    "listening",
    "load_estimator",
    "read_source",
    "register_model",
    "register_model_kind",
    "register_reader",
    "register_source_kind",
    "register_strategy",
    "register_strategy_spec",
]
