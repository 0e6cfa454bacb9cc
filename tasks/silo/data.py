"""Work done at a silo, on its own Dask worker: read rows, fit, evaluate.

These functions run inside the silo's worker process. Their inputs and outputs
are what crosses the network; the rows stay in the worker, held by
:class:`SiloData` and :class:`PreparedSilo` objects the coordinator only ever
refers to through Dask futures.
"""

from __future__ import annotations

import logging
import time
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from connectors.readers import read_source
from connectors.sql import SqlSource
from fedsilo.errors import SiloDataError
from fedsilo.spec import FederationSpec, SiloSpec
from tasks.averaging import sklearn_models
from tasks.averaging.compression import SiloCompressor, quantization_rng
from tasks.metrics import evaluations
from tasks.privacy.secagg import KeyPair
from tasks.privacy.silo_protect import STATE_TENSORS, PrivacyRequest, protect
from tasks.protocol import codec
from tasks.protocol.messages import (
    Evaluation,
    FeatureMoments,
    FitConfig,
    LocalUpdate,
    SiloSchema,
    nbytes_of,
)
from tasks.silo.schema import describe_columns
from tasks.statistics.categories import one_hot
from tasks.statistics.moments import moments

_log = logging.getLogger("fedsilo.silo")


def worker_name() -> str:
    """Return the name of the Dask worker running this code ("local" outside one)."""
    try:
        from distributed import get_worker

        return str(get_worker().name)
    except (ImportError, ValueError):
        return "local"


@dataclass(frozen=True, slots=True)
class SiloSource:
    """Where one silo's rows are, as the central spec states it.

    ``train`` None means "ask the silo": its worker reads the sources of the
    silo config it was started with (``fedsilo worker --data``).
    """

    silo: str
    train: str | SqlSource | None
    test: str | SqlSource | None
    test_fraction: float
    storage_options: dict[str, Any]


@dataclass(frozen=True, slots=True)
class SiloData:
    """A silo's raw tables, resident on its worker for the whole run."""

    silo: str
    train: pd.DataFrame
    test: pd.DataFrame
    test_source: str


@dataclass(frozen=True, slots=True)
class PreparedSilo:
    """A silo's rows as model-ready arrays (features ordered and scaled)."""

    silo: str
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray


def load_arguments(spec: FederationSpec, silo: SiloSpec) -> tuple[Any, ...]:
    """Return :func:`load_silo`'s arguments for one silo of the spec."""
    source = SiloSource(
        silo.name, silo.train, silo.test, silo.test_fraction, dict(silo.storage_options)
    )
    return source, spec.target, spec.seed


def silo_seed(seed: int, round_number: int, silo: str) -> np.random.Generator:
    """Return the generator of one silo's round: the same on every rerun."""
    return np.random.default_rng([seed, round_number, zlib.crc32(silo.encode())])


def _read(silo: str, location: Any, options: dict[str, Any]) -> pd.DataFrame:
    """Read one source with the connector registered for its kind."""
    return read_source(silo, location, options)


def _configured_source(silo: str) -> tuple[SiloSource, list[str]]:
    """Return the silo worker's own sources, and the locations to keep private."""
    from tasks.silo.runtime import worker_silo_config

    config = worker_silo_config(silo)
    if config is None:
        raise SiloDataError(
            silo,
            "the spec gives no train source and this silo's worker holds no silo "
            "config; start it with `fedsilo worker --silo NAME --data SILO_CONFIG` "
            "or give silos[].train in the spec",
        )
    source = SiloSource(
        silo,
        config.train,
        config.test,
        config.test_fraction,
        dict(config.storage_options),
    )
    return source, config.locations()


def _private(error: SiloDataError, locations: list[str]) -> SiloDataError:
    """Return the error with the silo's own paths and URLs replaced by a label."""
    column = f", column {error.column!r}" if error.column else ""
    prefix = f"silo {error.silo!r}{column}"
    reason = error.reason.removeprefix(prefix + ": ")
    for location in sorted(locations, key=len, reverse=True):
        reason = reason.replace(location, "<its silo config's source>")
    return SiloDataError(error.silo, reason, column=error.column)


def load_silo(source: SiloSource, target: str, seed: int) -> SiloData:
    """Read a silo's train (and test) rows; without a test source hold some out.

    Without a train source in the spec, the rows come from the silo config of
    the worker this runs on; errors then name the silo but not its paths or URLs
    (the worker logs them in full).
    """
    private: list[str] = []
    if source.train is None:
        source, private = _configured_source(source.silo)
    try:
        return _load(source, seed)
    except SiloDataError as error:
        if not private:
            raise
        _log.error("%s", error.reason)
        raise _private(error, private) from None


def _load(source: SiloSource, seed: int) -> SiloData:
    if source.train is None:
        raise SiloDataError(source.silo, "no train source is configured")
    options = source.storage_options
    train = _read(source.silo, source.train, options)
    if source.test is not None:
        test = _read(source.silo, source.test, options)
        return SiloData(source.silo, train, test, "file")
    rng = np.random.default_rng([seed, zlib.crc32(source.silo.encode())])
    order = rng.permutation(len(train))
    n_test = round(len(train) * source.test_fraction) if len(train) > 1 else 0
    test_rows, train_rows = order[:n_test], order[n_test:]
    return SiloData(
        source.silo,
        train.iloc[np.sort(train_rows)].reset_index(drop=True),
        train.iloc[np.sort(test_rows)].reset_index(drop=True),
        "holdout",
    )


def _infinite(series: pd.Series) -> bool:
    """Return whether a numeric column holds +inf or -inf (missing values do not)."""
    if pd.api.types.is_bool_dtype(series) or not pd.api.types.is_numeric_dtype(series):
        return False
    values = series.to_numpy(dtype=np.float64, na_value=np.nan)
    return bool(np.isinf(values).any())


def _label_types(silo: str, values: pd.Series, target: str) -> None:
    """Refuse labels that mix strings with numbers (no order, no one type)."""
    present = values.dropna()
    strings = present.map(lambda v: isinstance(v, str)).to_numpy(dtype=bool)
    if strings.any() and not strings.all():
        raise SiloDataError(
            silo,
            "labels mix strings and numbers; give every label the same type",
            column=target,
        )


def check_values(data: SiloData, target: str, task: str) -> None:
    """Refuse values no model can learn from, as the silo's rows arrive.

    Infinite values in a numeric column, infinite labels, and classification
    labels mixing strings and numbers are refused, naming the silo, the column
    and the split (never a value). Missing feature values stay legal here:
    ``xgboost`` routes them, the averaged models refuse them when the rows are
    prepared; missing labels are refused when the rows are prepared.
    """
    for split, frame in (("train", data.train), ("test", data.test)):
        for name in frame.columns:
            if _infinite(frame[name]):
                what = "labels" if name == target else "rows"
                raise SiloDataError(
                    data.silo,
                    f"{split} {what} hold infinite values (+inf or -inf); a value "
                    "must be finite (or, for a feature, missing)",
                    column=str(name),
                )
    if task == "classification" and target in data.train.columns:
        labels = pd.concat([data.train[target], data.test.get(target)])
        _label_types(data.silo, labels, target)


def silo_schema(data: SiloData, target: str, task: str) -> SiloSchema:
    """Describe the silo's table: column names and dtypes, counts, label values.

    The rows are checked first (:func:`check_values`); only the names and
    dtypes, the counts and the set of labels leave the silo.
    """
    check_values(data, target, task)
    columns = describe_columns(data.train)
    for split, frame in (("train", data.train), ("test", data.test)):
        if target not in frame.columns:
            raise SiloDataError(
                data.silo,
                f"target column is missing from the {split} rows",
                column=target,
            )
    test_names = [c.name for c in describe_columns(data.test)]
    train_names = [c.name for c in columns]
    if data.test_source == "file" and sorted(test_names) != sorted(train_names):
        missing = sorted(set(train_names) ^ set(test_names))
        raise SiloDataError(
            data.silo, "test file columns differ from the train file", column=missing[0]
        )
    labels: tuple[Any, ...] = ()
    if task == "classification" and target in data.train.columns:
        values = pd.concat([data.train[target], data.test[target]]).dropna().unique()
        labels = tuple(sorted(v.item() if hasattr(v, "item") else v for v in values))
    return SiloSchema(
        silo=data.silo,
        worker=worker_name(),
        columns=columns,
        n_train=len(data.train),
        n_test=len(data.test),
        labels=labels,
        test_source=data.test_source,
    )


def _matrix(
    silo: str, frame: pd.DataFrame, features: list[str], split: str
) -> np.ndarray:
    X = frame[features].to_numpy(dtype=np.float64)
    bad = np.isnan(X).any(axis=0)
    if bad.any():
        column = features[int(np.argmax(bad))]
        raise SiloDataError(
            silo, f"{split} rows have missing values; impute them first", column=column
        )
    return X


def silo_moments(data: SiloData, features: list[str]) -> FeatureMoments:
    """Per-feature count, mean and squared deviations of the silo's train rows.

    A column whose values are finite but too large for float64 sums (their
    squares overflow) is refused by name: it would make the global scaler
    infinite at every silo.
    """
    X = _matrix(data.silo, data.train, features, "train")
    with np.errstate(over="ignore", invalid="ignore"):
        found = moments(data.silo, X)
    finite = np.isfinite(found.mean) & np.isfinite(found.m2)
    if not finite.all():
        raise SiloDataError(
            data.silo,
            "train values are too large to standardise (their squares overflow "
            "float64); rescale the column",
            column=features[int(np.argmin(finite))],
        )
    return found


def prepare_silo(
    data: SiloData,
    features: list[str],
    target: str,
    mean: np.ndarray | None,
    scale: np.ndarray | None,
    categories: dict[str, tuple[Any, ...]] | None = None,
) -> PreparedSilo:
    """Order the features as the federation does and apply the global scaler.

    ``features`` are the numeric ones; with ``categories`` their one-hot columns
    follow (``tasks/statistics/categories.py``), the same at every silo.
    """
    X_train = _matrix(data.silo, data.train, features, "train")
    X_test = _matrix(data.silo, data.test, features, "test")
    if mean is not None and scale is not None:
        X_train = (X_train - mean) / scale
        X_test = (X_test - mean) / scale
    if categories:
        codes = one_hot(data.silo, data.train, categories, "train")
        X_train = np.hstack([X_train, codes])
        X_test = np.hstack([X_test, one_hot(data.silo, data.test, categories, "test")])
    y_train = data.train[target].to_numpy()
    y_test = data.test[target].to_numpy()
    for split, y in (("train", y_train), ("test", y_test)):
        if pd.isna(y).any():
            raise SiloDataError(
                data.silo, f"{split} rows have missing labels", column=target
            )
    return PreparedSilo(data.silo, X_train, y_train, X_test, y_test)


def _estimator(config: FitConfig, params: dict[str, np.ndarray]) -> Any:
    """Return the configured estimator holding the model's arrays ``params``."""
    return sklearn_models.materialise(
        config.kind,
        config.model_params,
        n_features=config.n_features,
        classes=config.classes,
        seed=config.seed,
        params=params,
    )


def silo_fit(
    prepared: PreparedSilo,
    global_params: dict[str, np.ndarray],
    config: FitConfig,
    round_number: int,
    privacy: PrivacyRequest | None = None,
    keys: KeyPair | None = None,
    compressor: SiloCompressor | None = None,
) -> LocalUpdate:
    """Train the global model on the silo's rows; return only its new arrays.

    With a privacy request the arrays are clipped and/or masked before they
    leave (tasks/privacy/silo_protect.py). With a compressor (this silo's, resident on
    its worker) only the encoded change from the global model leaves; the
    error-feedback residual stays in the compressor (tasks/averaging/compression.py).
    """
    started = time.perf_counter()
    estimator = _estimator(config, global_params)
    sklearn_models.train_local(
        config.kind,
        estimator,
        prepared.X_train,
        prepared.y_train,
        classes=config.classes,
        epochs=config.epochs,
        batch_size=config.batch_size,
        rng=silo_seed(config.seed, round_number, prepared.silo),
        proximal_mu=config.proximal_mu,
    )
    params = sklearn_models.extract_params(config.kind, estimator)
    masked = None
    compressed = None
    metrics: dict[str, float] = {}
    if privacy is not None:
        params, masked, metrics = protect(
            params, global_params, len(prepared.X_train), privacy, keys
        )
    elif compressor is not None and compressor.kind != "none":
        rng = quantization_rng(config.seed, round_number, prepared.silo)
        compressed = compressor.compress(
            params, global_params, rng, raw=STATE_TENSORS & set(params)
        )
        params = {}
    sent = nbytes_of(params) + (0 if masked is None else int(masked.values.nbytes))
    sent += 0 if compressed is None else compressed.nbytes
    return LocalUpdate(
        silo=prepared.silo,
        round=round_number,
        worker=worker_name(),
        params=params,
        n_samples=len(prepared.X_train),
        seconds=time.perf_counter() - started,
        bytes_down=nbytes_of(global_params),
        bytes_up=sent,
        metrics=metrics,
        masked=masked,
        compressed=compressed,
    )


def silo_evaluate(
    prepared: PreparedSilo,
    params: dict[str, np.ndarray],
    config: FitConfig,
    round_number: int,
) -> list[Evaluation]:
    """Score the global model on the silo's train and test rows."""
    estimator = _estimator(config, params)
    classification = config.task == "classification"
    predict = estimator.predict_proba if classification else estimator.predict
    splits = (
        ("train", prepared.X_train, prepared.y_train),
        ("test", prepared.X_test, prepared.y_test),
    )
    return evaluations(
        prepared.silo,
        round_number,
        worker_name(),
        config.task,
        np.asarray(config.classes),
        [(split, y, predict(X)) for split, X, y in splits],
    )


def row_count(prepared: PreparedSilo) -> int:
    """Return the silo's training rows (a cheap check that preparation worked).

    It lives here, not in flows/, so that running it never makes a silo worker
    import Prefect.
    """
    return len(prepared.X_train)


# The central spec's sources cross to the silo in a channel's setup request.
codec.register(SiloSource, SqlSource)
