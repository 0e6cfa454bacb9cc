"""Load a checkpointed global model back into a scikit-learn estimator."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from sklearn.compose import ColumnTransformer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from fedsilo.errors import CheckpointError
from tasks.averaging import sklearn_models
from tasks.store.checkpoints import CheckpointStore


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

    A boosted run's model comes back as xgboost's ``XGBClassifier`` or
    ``XGBRegressor``, loaded from the round's ``model.json`` (it bins raw
    features itself: no scaler).

    The pipeline takes the raw input columns in the order of its
    ``feature_names_``: the checkpoint's ``features``, or with one-hot encoding
    its ``encoding.inputs`` (strings and numbers together, e.g. a DataFrame's
    ``to_numpy()``), which a column transform encodes as the federation did.
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
    if model["kind"] == "xgboost":
        return _xgboost_estimator(store, round_number, spec["task"])
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
    inputs = list(model["features"])
    if model.get("encoding"):
        inputs = list(model["encoding"]["inputs"])
        steps.append(("encode", _encoder(model["encoding"], model.get("scaler"))))
    elif model.get("scaler"):
        scaler = model["scaler"]
        steps.append(("scale", _scaler(scaler["mean"], scaler["scale"])))
    steps.append(("model", estimator))
    pipeline = Pipeline(steps)
    pipeline.feature_names_ = inputs
    return pipeline


def _xgboost_estimator(store: CheckpointStore, round_number: int, task: str) -> Any:
    """Return the round's trees as xgboost's own scikit-learn estimator."""
    import xgboost

    text = store.read_model_json(round_number)
    if text is None:
        raise CheckpointError(f"{store.round_path(round_number)}: no model.json")
    cls = xgboost.XGBClassifier if task == "classification" else xgboost.XGBRegressor
    estimator = cls()
    estimator.load_model(bytearray(text.encode()))
    return estimator


def _encoder(
    encoding: dict[str, Any], scaler: dict[str, list[float]] | None
) -> ColumnTransformer:
    """Return the federation's column transform: scaled numbers, then one-hot codes.

    Categories are fixed (``tasks/statistics/categories.py``); a value outside
    them encodes as zeros. Fitting on one placeholder row per category only sets
    the encoder up;
    the scaler's statistics are the federation's, set afterwards.
    """
    inputs: list[str] = list(encoding["inputs"])
    numeric = [inputs.index(name) for name in encoding["numeric"]]
    categories = dict(encoding["categorical"])
    codes = [inputs.index(name) for name in categories]
    number_step: Any = "drop"
    if numeric:
        number_step = StandardScaler() if scaler else "passthrough"
    onehot = OneHotEncoder(
        categories=[list(values) for values in categories.values()],
        handle_unknown="ignore",
        sparse_output=False,
        dtype=np.float64,
    )
    transform = ColumnTransformer(
        [("numeric", number_step, numeric), ("onehot", onehot, codes)],
        sparse_threshold=0.0,
    )
    n_rows = max([1, *(len(values) for values in categories.values())])
    placeholder = np.zeros((n_rows, len(inputs)), dtype=object)
    for index, values in zip(codes, categories.values(), strict=True):
        placeholder[:, index] = [values[i % len(values)] for i in range(n_rows)]
    transform.fit(placeholder)
    if numeric and scaler:
        fitted = _scaler(scaler["mean"], scaler["scale"])
        transform.named_transformers_["numeric"].__dict__.update(fitted.__dict__)
    return transform
