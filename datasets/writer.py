"""Write a data set as silo Parquet files plus a ready ``federation.yaml``.

Layout made by ``write_federation``::

    <out>/federation.yaml          spec; silo paths relative to this file
    <out>/silo-<i>/train.parquet
    <out>/silo-<i>/test.parquet
"""

from __future__ import annotations

import inspect
import json
import re
import shlex
import shutil
from pathlib import Path
from typing import Any, TypedDict, Unpack

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from datasets.bundled import Dataset, load_dataset
from datasets.partition import partition as make_partition
from fedsilo.spec import parse_spec

SPEC_FILE = "federation.yaml"
#: Fewest rows a silo gets, so that its train and test files both hold a row.
MIN_SILO_ROWS = 2
DEFAULT_MODELS = {"classification": "sgd-logistic", "regression": "sgd-regressor"}
_SILO_DIR = re.compile(r"^silo-\d+$")


#: Starting parameters written into a new spec. SGD's default alpha (1e-4)
#: leaves FedAvg oscillating on small silos; 1e-2 reached the pooled model's
#: accuracy on breast cancer (benchmarks/breast_cancer_gap.py).
DEFAULT_PARAMS: dict[str, dict[str, float]] = {"sgd-logistic": {"alpha": 0.01}}


def _model_params(model_kind: str, data: Dataset) -> dict[str, Any]:
    """Return a new spec's model parameters; XGBoost's objective follows the data."""
    params: dict[str, Any] = dict(DEFAULT_PARAMS.get(model_kind, {}))
    if model_kind != "xgboost":
        return params
    if data.task == "regression":
        return {**params, "objective": "reg:squarederror"}
    n_classes = int(data.frame[data.target].nunique())
    if n_classes <= 2:
        return {**params, "objective": "binary:logistic"}
    return {**params, "objective": "multi:softprob", "num_class": n_classes}


def write_slices(
    train: pd.DataFrame, test: pd.DataFrame, n_silos: int, out: Path
) -> list[dict[str, str]]:
    """Write contiguous train and test slices, one pair of Parquet files per silo.

    Silo ``i`` is ``silo-<i>`` under ``out``; returns the spec's silo entries.
    """
    silos = []
    for i, (a, b) in enumerate(
        zip(
            np.array_split(np.arange(len(train)), n_silos),
            np.array_split(np.arange(len(test)), n_silos),
            strict=True,
        )
    ):
        folder = out / f"silo-{i}"
        folder.mkdir(parents=True, exist_ok=True)
        train.iloc[a].to_parquet(folder / "train.parquet", index=False)
        test.iloc[b].to_parquet(folder / "test.parquet", index=False)
        silos.append(
            {
                "name": f"silo-{i}",
                "train": str(folder / "train.parquet"),
                "test": str(folder / "test.parquet"),
            }
        )
    return silos


def write_federation(
    dataset: str,
    *,
    n_silos: int,
    partition: str,
    out: Path,
    seed: int = 0,
    alpha: float = 0.5,
    test_fraction: float = 0.2,
    rounds: int = 20,
    model_kind: str | None = None,
    n_samples: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Split a data set into silos, write their files and a spec; return its path.

    Rows are partitioned into ``n_silos`` silos (see
    ``datasets.partition.partition``), then each silo's rows are split
    into train and test, stratified by class for classification (a class with a
    single row in a silo stays in train). Everything is seeded by ``seed``.
    Nothing is written until the arguments, data and spec have been checked.

    Parameters
    ----------
    dataset : str
        A name from ``datasets.bundled.DATASET_NAMES``.
    n_silos : int
        Number of silos, named ``silo-0`` .. ``silo-{n_silos - 1}``.
    partition : str
        "iid", "dirichlet" (label skew), "quantity" or "feature" (feature skew).
    out : pathlib.Path
        Directory to write; must be missing or empty unless ``overwrite``.
    seed : int
        Seed of the data (subset or generator), the partition and the splits;
        also the spec's seed.
    alpha : float
        Dirichlet concentration for "dirichlet" and "quantity".
    test_fraction : float
        Share of each silo's rows written to ``test.parquet``, in (0, 1).
    rounds : int
        The spec's number of federated rounds.
    model_kind : str, optional
        The spec's model kind; default "sgd-logistic" or "sgd-regressor".
    n_samples : int, optional
        Rows to use (see ``load_dataset``).
    overwrite : bool
        Replace an earlier output in a non-empty ``out``: its ``federation.yaml``
        and ``silo-<i>`` directories are removed first; other files are kept.

    Returns
    -------
    pathlib.Path
        Path of the written ``federation.yaml``.

    Raises
    ------
    ValueError
        If a name, size or fraction is invalid or the split is impossible.
    FileExistsError
        If ``out`` is a file, or a non-empty directory and not ``overwrite``.
    fedsilo.errors.SpecError
        If the resulting spec is invalid (say a regressor for classification).
    """
    out = Path(out)
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    _check_out(out, overwrite)
    data = load_dataset(dataset, n_samples=n_samples, seed=seed)
    frame = data.frame
    labels = frame[data.target].to_numpy()
    parts = make_partition(
        partition,
        n_silos,
        seed=seed,
        labels=labels,
        X=frame[data.features].to_numpy(),
        alpha=alpha,
        task=data.task,
        min_rows=MIN_SILO_ROWS,
    )
    splits = []
    for i, rows in enumerate(parts):
        rng = np.random.default_rng([seed, i])
        strata = labels[rows] if data.task == "classification" else None
        train, test = train_test_rows(len(rows), test_fraction, rng, strata)
        splits.append((rows[train], rows[test]))
    kind = model_kind or DEFAULT_MODELS[data.task]
    spec = federation_spec(
        data,
        n_silos=n_silos,
        partition=partition,
        seed=seed,
        rounds=rounds,
        model_kind=kind,
    )
    parse_spec(spec, source=f"spec for {out / SPEC_FILE}")

    if overwrite and out.is_dir():
        _remove_previous(out)
    meta = {"dataset": dataset, "partition": partition, "seed": seed, "alpha": alpha}
    for i, (train_rows, test_rows) in enumerate(splits):
        silo = f"silo-{i}"
        (out / silo).mkdir(parents=True, exist_ok=True)
        for split, rows in (("train", train_rows), ("test", test_rows)):
            _write_parquet(
                frame.iloc[rows],
                out / silo / f"{split}.parquet",
                {**meta, "silo": silo, "split": split},
            )
    command = split_command(
        dataset,
        n_silos=n_silos,
        partition=partition,
        out=out,
        seed=seed,
        alpha=alpha,
        test_fraction=test_fraction,
        rounds=rounds,
        model_kind=model_kind,
        n_samples=n_samples,
    )
    sizes = ", ".join(
        f"silo-{i} {len(tr)}/{len(te)}" for i, (tr, te) in enumerate(splits)
    )
    header = (
        f"# Made by: {command}\n"
        f"# Data set {dataset!r}: {len(frame)} rows, {len(data.features)} features; "
        f"{partition} partition, seed {seed}.\n"
        f"# Train/test rows: {sizes}\n"
    )
    path = out / SPEC_FILE
    path.write_text(header + yaml.safe_dump(spec, sort_keys=False))
    return path


def federation_spec(
    data: Dataset,
    *,
    n_silos: int,
    partition: str,
    seed: int,
    rounds: int,
    model_kind: str,
) -> dict[str, Any]:
    """Return the spec mapping for silos written by ``write_federation``."""
    return {
        "name": f"{data.name.replace('_', '-')}-{partition}-{n_silos}",
        "task": data.task,
        "target": data.target,
        "rounds": rounds,
        "seed": seed,
        "model": {"kind": model_kind, "params": _model_params(model_kind, data)},
        "strategy": {"kind": "fedavg", "fraction": 1.0, "min_silos": n_silos},
        "local": {"epochs": 1},
        "silos": [
            {
                "name": f"silo-{i}",
                "train": f"silo-{i}/train.parquet",
                "test": f"silo-{i}/test.parquet",
            }
            for i in range(n_silos)
        ],
        "checkpoints": "./checkpoints",
    }


class SplitOptions(TypedDict, total=False):
    """``write_federation``'s options that ``fedsilo datasets split`` has flags for."""

    seed: int
    alpha: float
    test_fraction: float
    rounds: int
    model_kind: str | None
    n_samples: int | None


#: The flag of each option, written when it differs from ``write_federation``'s
#: default; ``--alpha`` is written for the partitions that use it.
_FLAGS = {
    "seed": "--seed",
    "test_fraction": "--test-fraction",
    "rounds": "--rounds",
    "model_kind": "--model",
    "n_samples": "--n-samples",
}


def split_command(
    dataset: str,
    *,
    n_silos: int,
    partition: str,
    out: Path,
    **options: Unpack[SplitOptions],
) -> str:
    """Return the ``fedsilo datasets split`` command line for these arguments.

    An option at ``write_federation``'s default has no flag (``--alpha`` aside).
    """
    defaults = inspect.signature(write_federation).parameters
    words = [
        "fedsilo",
        "datasets",
        "split",
        dataset,
        "--silos",
        str(n_silos),
        "--partition",
        partition,
        "--out",
        str(out),
    ]
    if partition in ("dirichlet", "quantity"):
        words += ["--alpha", str(options.get("alpha", defaults["alpha"].default))]
    for name, flag in _FLAGS.items():
        value = options.get(name, defaults[name].default)
        if value != defaults[name].default:
            words += [flag, str(value)]
    return shlex.join(words)


def train_test_rows(
    n_rows: int,
    test_fraction: float,
    rng: np.random.Generator,
    strata: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Return shuffled (train, test) positions in ``range(n_rows)``, both non-empty.

    With ``strata`` each class gives ``round(test_fraction * n_class)`` rows to
    test but keeps at least one in train; if that leaves test empty, one row of
    the largest class moves to test.
    """
    if n_rows < 2:
        raise ValueError(f"cannot split {n_rows} row(s) into non-empty train and test")
    if strata is None:
        strata = np.zeros(n_rows, dtype=np.int64)
    strata = np.asarray(strata)
    if strata.shape != (n_rows,):
        raise ValueError(f"strata has shape {strata.shape}, expected ({n_rows},)")
    train: list[np.ndarray] = []
    test: list[np.ndarray] = []
    for cls in np.unique(strata):
        rows = rng.permutation(np.flatnonzero(strata == cls))
        n_test = min(int(np.floor(test_fraction * len(rows) + 0.5)), len(rows) - 1)
        test.append(rows[:n_test])
        train.append(rows[n_test:])
    if sum(len(t) for t in test) == 0:
        largest = int(np.argmax([len(t) for t in train]))
        test[largest], train[largest] = train[largest][:1], train[largest][1:]
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(
            f"{out} exists and is not empty; choose another directory or overwrite"
        )


def _remove_previous(out: Path) -> None:
    (out / SPEC_FILE).unlink(missing_ok=True)
    for child in out.iterdir():
        if child.is_dir() and not child.is_symlink() and _SILO_DIR.match(child.name):
            shutil.rmtree(child)


def _write_parquet(frame: pd.DataFrame, path: Path, meta: dict[str, Any]) -> None:
    table = pa.Table.from_pandas(frame.reset_index(drop=True), preserve_index=False)
    metadata = {**(table.schema.metadata or {}), b"fedsilo": json.dumps(meta).encode()}
    pq.write_table(table.replace_schema_metadata(metadata), path)
