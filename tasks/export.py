"""A checkpointed global model as a file that stock tools load (docs/export.md).

Three formats: ``skops`` (any model kind; ``skops.io.load`` gives the
scikit-learn pipeline, or xgboost's estimator, that ``load_estimator``
returns), ``onnx`` (averaged kinds; onnxruntime scores it in float64) and
``xgboost-json`` (boosted runs; xgboost's own model file). The model comes
from :func:`named_estimator`, whose first step knows the raw input columns
(``feature_names_in_``), so a DataFrame of those columns scores directly.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
from fsspec.implementations.local import LocalFileSystem
from sklearn.compose import ColumnTransformer
from sklearn.pipeline import Pipeline

from fedsilo.errors import CheckpointError, FedsiloError
from tasks.store.checkpoints import CheckpointStore
from tasks.store.model_io import load_estimator

#: The formats and the file suffix of each.
FORMATS: dict[str, str] = {"skops": ".skops", "onnx": ".onnx", "xgboost-json": ".json"}


class ExportError(FedsiloError):
    """A model cannot be exported in the asked format."""


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What a checkpoint's metadata says of its model."""

    kind: str
    task: str
    features: list[str]  # the raw input columns, in order
    classes: list[Any]
    encoding: dict[str, Any] | None  # one-hot encoding: inputs, numeric, categorical


@dataclass(frozen=True, slots=True)
class Exported:
    """Where an export went and what it holds."""

    path: str
    format: str
    round: int
    kind: str
    features: list[str]


def model_info(store: CheckpointStore, round_number: int) -> ModelInfo:
    """Return the model kind, task, input columns and classes of a round."""
    meta = store.read_metadata(round_number)
    try:
        model = json.loads(meta["fedsilo.model"])
        spec = json.loads(meta["fedsilo.spec"])
    except KeyError as missing:
        raise CheckpointError(
            f"{store.round_path(round_number)}: metadata lacks {missing}"
        ) from None
    encoding = model.get("encoding") or None
    features = list(encoding["inputs"] if encoding else model.get("features", []))
    classes = [
        int(c) if isinstance(c, float) and c.is_integer() else c
        for c in model.get("classes", [])
    ]
    return ModelInfo(model["kind"], spec["task"], features, classes, encoding)


def round_to_export(store: CheckpointStore, round_number: int | None) -> int:
    """Return ``round_number``, or the latest complete round; refuse a missing one."""
    complete = store.complete_rounds()
    if round_number is None:
        if not complete:
            raise CheckpointError(f"{store.run_path}: no complete round to export")
        return complete[-1]
    if round_number not in complete:
        have = f"{complete[0]}..{complete[-1]}" if complete else "none"
        raise CheckpointError(
            f"{store.run_path}: round {round_number} is not a complete round "
            f"(complete rounds: {have})"
        )
    return round_number


def named_estimator(store: CheckpointStore, round_number: int | None = None) -> Any:
    """Return :func:`load_estimator`'s model with ``feature_names_in_`` set.

    The step that takes the raw columns (the scaler, the column transform or
    the estimator itself) learns their names, and so does each transformer a
    column transform holds, so a DataFrame of those columns scores without a
    warning and a frame with other columns is refused by scikit-learn.
    """
    round_number = round_to_export(store, round_number)
    estimator = load_estimator(store, round_number)
    if isinstance(estimator, Pipeline):
        _name_inputs(estimator.steps[0][1], list(estimator.feature_names_))
    return estimator


def _name_inputs(step: Any, names: list[str]) -> None:
    """Give a fitted step the names of the columns it takes (and its inner steps)."""
    step.feature_names_in_ = np.asarray(names, dtype=object)
    if isinstance(step, ColumnTransformer):
        for _, inner, columns in step.transformers_:
            if hasattr(inner, "transform"):
                inner.feature_names_in_ = np.asarray(
                    [names[i] for i in columns], dtype=object
                )


def input_types(info: ModelInfo) -> dict[str, str | None]:
    """Return each raw input column's type: double, string or long (None: mixed).

    Numeric features are doubles; a one-hot encoded column takes the type its
    categories share.
    """
    categories: dict[str, list[Any]] = dict(
        (info.encoding or {}).get("categorical", {})
    )
    types: dict[str, str | None] = {}
    for name in info.features:
        values = categories.get(name)
        if values is None:
            types[name] = "double"
        elif all(isinstance(v, str) for v in values):
            types[name] = "string"
        elif all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            types[name] = "long"
        else:
            types[name] = None
    return types


def export_bytes(estimator: Any, fmt: str, info: ModelInfo) -> bytes:
    """Return ``estimator`` serialised as ``fmt``; refuse a format its kind lacks."""
    if fmt not in FORMATS:
        raise ExportError(f"format {fmt!r}: unknown; known: {', '.join(FORMATS)}")
    boosted = info.kind == "xgboost"
    if fmt == "xgboost-json" and not boosted:
        raise ExportError(
            f"format 'xgboost-json' is for model kind 'xgboost', this run's is "
            f"{info.kind!r}; use skops or onnx"
        )
    if fmt == "onnx" and boosted:
        raise ExportError(
            "format 'onnx' is for averaged model kinds; export kind 'xgboost' as "
            "xgboost-json (xgboost's own file) or skops"
        )
    if fmt == "skops":
        return _skops_bytes(estimator)
    if fmt == "onnx":
        return _onnx_bytes(estimator, info)
    return _xgboost_json(estimator)


def _missing_extra(package: str) -> ExportError:
    return ExportError(f"exporting needs {package}: pip install 'fedsilo[export]'")


def _skops_bytes(estimator: Any) -> bytes:
    try:
        import skops.io
    except ImportError:
        raise _missing_extra("skops") from None
    data: bytes = skops.io.dumps(estimator)
    return data


def _xgboost_json(estimator: Any) -> bytes:
    """Return xgboost's JSON model file, with its scikit-learn attributes."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.json"
        estimator.save_model(str(path))
        return path.read_bytes()


def _onnx_bytes(estimator: Any, info: ModelInfo) -> bytes:
    """Return the pipeline as ONNX in float64: one matrix input, or one per column.

    Without one-hot encoding the graph takes ``input``, a float64 matrix of the
    features in order; with it, one ``[N, 1]`` input named after each raw
    column (float64 numbers, and strings or int64 codes for categories).
    Classifiers give ``label`` and ``probabilities``, regressors ``variable``.
    """
    try:
        from skl2onnx import convert_sklearn
        from skl2onnx.common.data_types import (
            DoubleTensorType,
            Int64TensorType,
            StringTensorType,
        )
    except ImportError:
        raise _missing_extra("skl2onnx") from None
    inputs: list[tuple[str, Any]]
    if info.encoding is None:
        inputs = [("input", DoubleTensorType([None, len(info.features)]))]
    else:
        tensor = {
            "double": DoubleTensorType,
            "string": StringTensorType,
            "long": Int64TensorType,
        }
        inputs = []
        for name, kind in input_types(info).items():
            if kind is None:
                raise ExportError(
                    f"format 'onnx': categorical column {name!r} mixes value "
                    "types; ONNX takes strings or integers; use skops"
                )
            inputs.append((name, tensor[kind]([None, 1])))
    options = {"zipmap": False} if info.task == "classification" else None
    onx = convert_sklearn(estimator, initial_types=inputs, options=options)
    for key, value in (
        ("fedsilo.kind", info.kind),
        ("fedsilo.features", json.dumps(info.features)),
        ("fedsilo.classes", json.dumps(info.classes)),
    ):
        entry = onx.metadata_props.add()
        entry.key, entry.value = key, value
    data: bytes = onx.SerializeToString()
    return data


def default_path(store: CheckpointStore, round_number: int, fmt: str) -> str:
    """Return ``<federation>-<run>-r<NNNNN><suffix>``, the CLI's default file name."""
    return f"{store.federation}-{store.run_id}-r{round_number:05d}{FORMATS[fmt]}"


def write_bytes(
    path: str, data: bytes, storage_options: Mapping[str, Any] | None = None
) -> None:
    """Write ``data`` to a local path (atomically, by rename) or an fsspec URL."""
    fs, target = fsspec.core.url_to_fs(path, **dict(storage_options or {}))
    if not isinstance(fs, LocalFileSystem):
        fs.pipe_file(target, data)
        return
    folder = Path(target).parent
    folder.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".export-")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def export_model(
    store: CheckpointStore,
    fmt: str,
    path: str | None = None,
    round_number: int | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> Exported:
    """Write a round's model (default: the latest complete one) as ``fmt``.

    ``path`` defaults to :func:`default_path` in the working directory;
    ``storage_options`` are for an fsspec URL ``path``.
    """
    if fmt not in FORMATS:
        raise ExportError(f"format {fmt!r}: unknown; known: {', '.join(FORMATS)}")
    round_number = round_to_export(store, round_number)
    info = model_info(store, round_number)
    data = export_bytes(named_estimator(store, round_number), fmt, info)
    target = path or default_path(store, round_number, fmt)
    write_bytes(target, data, storage_options)
    return Exported(target, fmt, round_number, info.kind, info.features)
