"""The centralized upper bound of a comparison: pooled rows, in simulations only.

A real federation cannot pool its rows; a simulation whose silo files are all
readable from the coordinator can, and the model trained on them bounds what
federation could reach. This module reads the silos' rows here (with the same
train/test split their workers make), writes the pooled rows for one
pseudo-silo, and scores the pooled model's stored checkpoints on each silo's
own test rows so that every variant is compared on the same rows.
No Prefect, no Dask.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedsilo.errors import FedsiloError
from fedsilo.spec import FederationSpec
from tasks.metrics import evaluations
from tasks.protocol.messages import Evaluation
from tasks.silo.data import (
    FitConfig,
    SiloData,
    SiloSource,
    load_silo,
    prepare_silo,
    silo_evaluate,
)

POOLED_NAME = "pooled"


def pooled_silo_name(spec: FederationSpec) -> str:
    """Return a pseudo-silo name that no silo of the spec uses."""
    names = {s.name for s in spec.silos}
    name, n = POOLED_NAME, 1
    while name in names:
        name, n = f"{POOLED_NAME}-{n}", n + 1
    return name


def pooled_refusal(spec: FederationSpec) -> str | None:
    """Return why the silos' rows cannot be pooled here, or None if they can."""
    hidden = [s.name for s in spec.silos if s.train is None]
    if hidden:
        return (
            f"silo {hidden[0]!r} gives no train source in the spec (its worker "
            "reads its own silo config), so its rows cannot be pooled here; the "
            "centralized upper bound needs a simulation whose silo files are all "
            "readable from the coordinator"
        )
    return None


def read_silos(spec: FederationSpec) -> dict[str, SiloData]:
    """Read every silo's rows here, split into train and test as its worker does.

    Raises
    ------
    FedsiloError
        A silo's rows cannot be read from here (the error names the silo).
    """
    reason = pooled_refusal(spec)
    if reason is not None:
        raise FedsiloError(reason)
    return {
        s.name: load_silo(
            SiloSource(
                s.name, s.train, s.test, s.test_fraction, dict(s.storage_options)
            ),
            spec.target,
            spec.seed,
        )
        for s in spec.silos
    }


def write_pooled(silos: dict[str, SiloData], directory: Path) -> tuple[str, str]:
    """Write the pooled train and test rows as Parquet; return their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for split in ("train", "test"):
        frames = [getattr(data, split) for data in silos.values()]
        path = directory / f"{split}.parquet"
        pd.concat(frames, ignore_index=True).to_parquet(path, index=False)
        paths.append(str(path))
    return paths[0], paths[1]


def score_linear(
    silos: dict[str, SiloData],
    config: FitConfig,
    features: Sequence[str],
    target: str,
    scaler: dict[str, Any] | None,
    rounds: dict[int, dict[str, np.ndarray]],
    encoding: dict[str, Any] | None = None,
) -> list[Evaluation]:
    """Score each round's parameters on every silo's own test rows.

    ``encoding`` is the checkpoint's one-hot encoding (``Encoding.to_json``):
    then ``features`` are the model's expanded names and the raw columns are
    its numeric inputs plus the encoded ones.
    """
    mean = scale = None
    if scaler is not None:
        mean = np.asarray(scaler["mean"], dtype=np.float64)
        scale = np.asarray(scaler["scale"], dtype=np.float64)
    inputs, categories = list(features), None
    if encoding is not None:
        inputs = list(encoding["numeric"])
        categories = {k: tuple(v) for k, v in encoding["categorical"].items()}
    out: list[Evaluation] = []
    for data in silos.values():
        prepared = prepare_silo(data, inputs, target, mean, scale, categories)
        for round_number, params in sorted(rounds.items()):
            scored = silo_evaluate(prepared, params, config, round_number)
            out.extend(e for e in scored if e.split == "test")
    return out


def score_trees(
    silos: dict[str, SiloData],
    task: str,
    target: str,
    models: dict[int, Any],
) -> list[Evaluation]:
    """Score each round's tree model (``tasks.gbdt.model.GBDTModel``) per silo."""
    from tasks.gbdt.model import predict

    out = []
    for silo, data in silos.items():
        for round_number, model in sorted(models.items()):
            names = list(model.feature_names)
            X = data.test[names].to_numpy(dtype=np.float32, na_value=np.nan)
            y = data.test[target].to_numpy()
            if task == "classification":
                y = y.astype(np.int64)
            classes = np.arange(max(model.num_class, 2))
            predicted = predict(model, X)
            out += evaluations(
                silo,
                round_number,
                "coordinator",
                task,
                classes,
                [("test", y, predicted)],
            )
    return out
