"""Load a checkpointed global model back into a scikit-learn estimator."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from fedsilo.errors import CheckpointError
from fedsilo.tasks import sklearn_models
from fedsilo.tasks.checkpoint_store import CheckpointStore


def _scaler(mean: list[float], scale: list[float]) -> StandardScaler:
    scaler = StandardScaler()
    scaler.mean_ = np.asarray(mean, dtype=np.float64)
    scaler.scale_ = np.asarray(scale, dtype=np.float64)
    scaler.var_ = scaler.scale_**2
    scaler.n_features_in_ = len(scaler.mean_)
    scaler.n_samples_seen_ = 0
    return scaler


def load_estimator(store: CheckpointStore, round_number: int | None = None) -> Any:
    """Return the round's model as a fitted Pipeline (global scaler, estimator).

    The pipeline takes the raw feature columns in the order stored in the
    checkpoint's metadata (``fedsilo.model`` -> ``features``).
    """
    if round_number is None:
        round_number = store.latest_complete_round()
        if round_number is None:
            raise CheckpointError(f"{store.run_path}: no complete round to load")
    meta = store.read_metadata(round_number)
    try:
        model = json.loads(meta["fedsilo.model"])
        spec = json.loads(meta["fedsilo.spec"])
    except KeyError as missing:
        raise CheckpointError(
            f"{store.round_path(round_number)}: metadata lacks {missing}"
        ) from None
    classes = model["classes"]
    if classes and all(isinstance(c, float) and c.is_integer() for c in classes):
        classes = [int(c) for c in classes]
    estimator = sklearn_models.materialise(
        model["kind"],
        model["params"],
        n_features=len(model["features"]),
        classes=classes,
        seed=int(spec.get("seed", 0)),
        params=store.read_params(round_number),
    )
    steps: list[tuple[str, Any]] = []
    if model.get("scaler"):
        scaler = model["scaler"]
        steps.append(("scale", _scaler(scaler["mean"], scaler["scale"])))
    steps.append(("model", estimator))
    pipeline = Pipeline(steps)
    pipeline.feature_names_ = list(model["features"])
    return pipeline
