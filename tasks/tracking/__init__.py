"""Experiment tracking of federated runs (docs/tracking.md).

:func:`track_run` gives the parent flow a :class:`Tracking`: round listeners
and a summary. Tracking is off unless the spec's ``tracking.mlflow`` or
``MLFLOW_TRACKING_URI`` asks for MLflow, which is imported only then.
"""

from __future__ import annotations

from tasks.tracking.mlflow_run import (
    MlflowTarget,
    MlflowTracking,
    Tracking,
    TrackingError,
    mlflow_target,
    track_run,
)

__all__ = [
    "MlflowTarget",
    "MlflowTracking",
    "Tracking",
    "TrackingError",
    "mlflow_target",
    "track_run",
]
