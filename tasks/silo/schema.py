"""Schema checks across silos: same features, compatible dtypes, target present."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import pandas as pd

from fedsilo.errors import SiloDataError
from tasks.protocol.messages import ColumnInfo, SiloSchema


def column_kind(series: pd.Series) -> str:
    """Return the dtype family of a column: numeric, bool, string or other."""
    if pd.api.types.is_bool_dtype(series):
        return "bool"
    if pd.api.types.is_numeric_dtype(series):
        return "numeric"
    if pd.api.types.is_string_dtype(series) or pd.api.types.is_object_dtype(series):
        return "string"
    return "other"


def describe_columns(frame: pd.DataFrame) -> tuple[ColumnInfo, ...]:
    """Return names and dtypes of a frame's columns (never its values)."""
    return tuple(
        ColumnInfo(
            name=str(name), dtype=str(frame[name].dtype), kind=column_kind(frame[name])
        )
        for name in frame.columns
    )


def check_schemas(
    schemas: Sequence[SiloSchema],
    *,
    target: str,
    task: str,
    categorical: Sequence[str] | Literal["auto"] = (),
) -> list[str]:
    """Return the shared feature names, or raise naming the silo and column at fault.

    Features must be numeric (or bool) unless ``categorical`` declares them
    (``"auto"``: every string feature); a declared column must be a feature at
    every silo, with the same dtype kind everywhere.
    """
    if not schemas:
        raise ValueError("no silo schemas to check")
    for schema in schemas:
        if schema.n_train == 0:
            raise SiloDataError(schema.silo, "has no training rows")
        if schema.n_test == 0:
            raise SiloDataError(schema.silo, "has no test rows")
        names = [c.name for c in schema.columns]
        if target not in names:
            raise SiloDataError(schema.silo, "target column is missing", column=target)
    features, kinds = _expected_features(schemas, target)
    for name in [] if categorical == "auto" else categorical:
        if name not in kinds:
            lacking = next(
                (s for s in schemas if name not in {c.name for c in s.columns}),
                schemas[0],
            )
            raise SiloDataError(
                lacking.silo,
                "column listed in preprocessing.categorical is missing",
                column=name,
            )
    for schema in schemas:
        columns = {c.name: c for c in schema.columns if c.name != target}
        for name in features:
            if name not in columns:
                others = sum(any(c.name == name for c in s.columns) for s in schemas)
                raise SiloDataError(
                    schema.silo,
                    f"feature is missing (present at {others} other silo(s))",
                    column=name,
                )
            if columns[name].kind != kinds[name]:
                raise SiloDataError(
                    schema.silo,
                    f"dtype {columns[name].dtype} is incompatible with the "
                    f"{kinds[name]} dtype the other silos have",
                    column=name,
                )
            allowed = {"numeric", "bool"}
            if categorical == "auto" or name in categorical:
                allowed.add("string")
            if kinds[name] not in allowed:
                raise SiloDataError(
                    schema.silo,
                    f"feature has dtype {columns[name].dtype}; features must be "
                    "numeric, or listed in preprocessing.categorical",
                    column=name,
                )
        extra = [name for name in columns if name not in kinds]
        if extra:
            raise SiloDataError(
                schema.silo,
                "unexpected feature (absent at the other silos)",
                column=extra[0],
            )
    targets = {s.silo: next(c for c in s.columns if c.name == target) for s in schemas}
    if task == "regression":
        for silo, info in targets.items():
            if info.kind != "numeric":
                raise SiloDataError(
                    silo, f"regression target has dtype {info.dtype}", column=target
                )
    else:
        label_kinds = [info.kind for info in targets.values()]
        if len(set(label_kinds)) > 1:
            common = max(label_kinds, key=label_kinds.count)
            silo = next(s for s, i in targets.items() if i.kind != common)
            holders = [s for s, i in targets.items() if i.kind == common]
            raise SiloDataError(
                silo,
                f"labels are {_KIND_WORDS.get(targets[silo].kind, targets[silo].kind)}"
                f" (dtype {targets[silo].dtype}) here but "
                f"{_KIND_WORDS.get(common, common)} at {', '.join(holders)}; give "
                "every silo labels of one type",
                column=target,
            )
    return features


_KIND_WORDS = {"numeric": "numbers", "string": "strings", "bool": "booleans"}


def federation_classes(
    schemas: Sequence[SiloSchema],
    target: str,
    declared: Sequence[Any] | None = None,
    known: Sequence[Any] = (),
) -> tuple[Any, ...]:
    """Return the classes of a classification federation, sorted.

    With ``declared`` (the spec's ``classes``) they are the classes, and a
    silo holding any other label is refused. Without, the classes are the
    labels the silos hold (and ``known``), and a label only one silo holds
    is refused, naming that silo: one silo alone must not add a class to
    every silo's model. A federation whose silos are meant to hold a class
    alone declares its classes. Call after :func:`check_schemas`, which has
    made the label types agree.
    """
    if declared is not None:
        allowed = set(declared)
        for schema in schemas:
            stray = [label for label in schema.labels if label not in allowed]
            if stray:
                raise SiloDataError(
                    schema.silo,
                    f"label {stray[0]!r} is not among the spec's classes "
                    f"{sorted(allowed)}",
                    column=target,
                )
        return tuple(sorted(allowed))
    holders: dict[Any, list[str]] = {}
    for schema in schemas:
        for label in schema.labels:
            holders.setdefault(label, []).append(schema.silo)
    if len(schemas) > 1:
        for label, silos in holders.items():
            if len(silos) == 1 and label not in set(known):
                raise SiloDataError(
                    silos[0],
                    f"label {label!r} is held by this silo alone; a class no "
                    "other silo has is refused unless the spec declares the "
                    "classes (classes: [...])",
                    column=target,
                )
    return tuple(sorted(set(holders) | set(known)))


def _expected_features(
    schemas: Sequence[SiloSchema], target: str
) -> tuple[list[str], dict[str, str]]:
    """Return the features most silos share, in first-seen order, and their kinds.

    A column is expected when more than half the silos have it (at a tie, when
    the first silo has it), so the odd one out is the silo that gets blamed.
    """
    order: list[str] = []
    holders: dict[str, list[str]] = {}
    for schema in schemas:
        for column in schema.columns:
            if column.name == target:
                continue
            if column.name not in holders:
                order.append(column.name)
                holders[column.name] = []
            holders[column.name].append(column.kind)
    first = {c.name for c in schemas[0].columns}
    n = len(schemas)
    expected = [
        name
        for name in order
        if 2 * len(holders[name]) > n or (2 * len(holders[name]) == n and name in first)
    ]
    kinds = {}
    for name in expected:
        found = holders[name]
        # The majority kind wins; at a tie, the first silo's.
        kinds[name] = max(found, key=lambda kind: (found.count(kind), kind == found[0]))
    first_order = [c.name for c in schemas[0].columns if c.name in kinds]
    rest = [name for name in expected if name not in first_order]
    return first_order + rest, kinds


def categorical_features(
    schemas: Sequence[SiloSchema],
    features: Sequence[str],
    declared: Sequence[str] | Literal["auto"],
) -> list[str]:
    """Return the features to one-hot encode, in feature order.

    ``"auto"`` picks the string features; call after :func:`check_schemas`,
    which has made the kinds agree across silos.
    """
    if declared != "auto":
        return [name for name in features if name in declared]
    kinds = {c.name: c.kind for c in schemas[0].columns}
    return [name for name in features if kinds.get(name) == "string"]
