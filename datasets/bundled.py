"""Data sets that need no download: scikit-learn's bundled ones and synthetic ones.

Every data set is one pandas frame of float feature columns with simple
identifier names plus a target column: ``label`` (int64) for classification,
``target`` (float64) for regression.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from sklearn import datasets as skd

Task = Literal["classification", "regression"]

#: Rows made by the synthetic generators when ``n_samples`` is not given.
SYNTHETIC_DEFAULT_ROWS = 1000

_BUNDLED: dict[str, tuple[Task, Callable[[], Any]]] = {
    "breast_cancer": ("classification", skd.load_breast_cancer),
    "wine": ("classification", skd.load_wine),
    "digits": ("classification", skd.load_digits),
    "diabetes": ("regression", skd.load_diabetes),
}
_SYNTHETIC: dict[str, Task] = {
    "synthetic-classification": "classification",
    "synthetic-regression": "regression",
}
#: Every name ``load_dataset`` accepts.
DATASET_NAMES: tuple[str, ...] = (*_BUNDLED, *_SYNTHETIC)


@dataclass(frozen=True, slots=True, eq=False)
class Dataset:
    """A named table: feature columns plus one target column.

    Equality and hashing are by identity (a frame has no boolean equality).

    Attributes
    ----------
    name : str
        The name ``load_dataset`` was called with.
    task : {"classification", "regression"}
        What the target is.
    frame : pandas.DataFrame
        Feature columns (float64) and the target column.
    target : str
        Name of the target column: ``label`` or ``target``.
    """

    name: str
    task: Task
    frame: pd.DataFrame
    target: str

    @property
    def features(self) -> list[str]:
        """Return the feature column names, in frame order."""
        return [str(c) for c in self.frame.columns if c != self.target]


def column_name(raw: str) -> str:
    """Return ``raw`` as a lowercase identifier ("mean radius" -> "mean_radius")."""
    name = re.sub(r"[^0-9a-z]+", "_", str(raw).strip().lower()).strip("_")
    if not name:
        raise ValueError(f"column name {raw!r} has no letters or digits")
    return f"f_{name}" if name[0].isdigit() else name


def load_dataset(name: str, *, n_samples: int | None = None, seed: int = 0) -> Dataset:
    """Load a bundled or synthetic data set as one frame; never downloads.

    Parameters
    ----------
    name : str
        One of ``DATASET_NAMES``.
    n_samples : int, optional
        Rows wanted. Bundled sets: a seeded random subset (all rows if None;
        more than the set holds is an error). Synthetic sets: rows generated
        (``SYNTHETIC_DEFAULT_ROWS`` if None).
    seed : int
        Seed of the subset or of the generator.

    Returns
    -------
    Dataset

    Raises
    ------
    ValueError
        If ``name`` is unknown or ``n_samples`` is impossible.
    """
    if n_samples is not None and n_samples < 1:
        raise ValueError(f"n_samples must be at least 1, got {n_samples}")
    if name in _SYNTHETIC:
        return _synthetic(
            name, _SYNTHETIC[name], n_samples or SYNTHETIC_DEFAULT_ROWS, seed
        )
    if name not in _BUNDLED:
        raise ValueError(
            f"unknown data set {name!r}; valid names: {', '.join(DATASET_NAMES)}"
        )
    task, loader = _BUNDLED[name]
    bunch = loader()
    data = np.asarray(bunch.data, dtype=np.float64)
    y = np.asarray(bunch.target)
    if n_samples is not None:
        if n_samples > len(data):
            raise ValueError(
                f"data set {name!r} has {len(data)} rows, n_samples={n_samples} asked"
            )
        rows = np.sort(np.random.default_rng(seed).choice(len(data), n_samples, False))
        data, y = data[rows], y[rows]
    columns = [column_name(c) for c in bunch.feature_names]
    return _make(name, task, data, y, columns)


def _synthetic(name: str, task: Task, n_samples: int, seed: int) -> Dataset:
    if task == "classification":
        data, y = skd.make_classification(
            n_samples=n_samples,
            n_features=20,
            n_informative=8,
            n_redundant=4,
            n_classes=3,
            random_state=seed,
        )
    else:
        data, y = skd.make_regression(
            n_samples=n_samples,
            n_features=20,
            n_informative=10,
            noise=10.0,
            random_state=seed,
        )
    columns = [f"x{i}" for i in range(data.shape[1])]
    return _make(name, task, data, y, columns)


def _make(
    name: str, task: Task, data: np.ndarray, y: np.ndarray, columns: list[str]
) -> Dataset:
    target = "label" if task == "classification" else "target"
    if len(set(columns)) != len(columns) or target in columns:
        raise ValueError(f"data set {name!r}: column names clash after cleaning")
    frame = pd.DataFrame(np.asarray(data, dtype=np.float64), columns=columns)
    dtype = np.int64 if task == "classification" else np.float64
    frame[target] = np.asarray(y, dtype=dtype)
    return Dataset(name=name, task=task, frame=frame, target=target)
