"""Schema checks across silos: same features, compatible dtypes, target present."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from fedsilo.errors import SiloDataError
from fedsilo.tasks.messages import ColumnInfo, SiloSchema


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
    schemas: Sequence[SiloSchema], *, target: str, task: str
) -> list[str]:
    """Return the shared feature names, or raise naming the silo and column at fault."""
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
    reference = schemas[0]
    ref_columns = {c.name: c for c in reference.columns if c.name != target}
    features = [c.name for c in reference.columns if c.name != target]
    for name, info in ref_columns.items():
        if info.kind not in {"numeric", "bool"}:
            raise SiloDataError(
                reference.silo,
                f"feature has dtype {info.dtype}; features must be numeric",
                column=name,
            )
    for schema in schemas[1:]:
        columns = {c.name: c for c in schema.columns if c.name != target}
        for name in features:
            if name not in columns:
                raise SiloDataError(
                    schema.silo,
                    f"feature is missing (present at silo {reference.silo!r})",
                    column=name,
                )
            if columns[name].kind != ref_columns[name].kind:
                raise SiloDataError(
                    schema.silo,
                    f"dtype {columns[name].dtype} is incompatible with "
                    f"{ref_columns[name].dtype} at silo {reference.silo!r}",
                    column=name,
                )
        extra = [name for name in columns if name not in ref_columns]
        if extra:
            raise SiloDataError(
                schema.silo,
                f"unexpected feature (absent at silo {reference.silo!r})",
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
        kinds = {info.kind for info in targets.values()}
        if len(kinds) > 1:
            silo = next(
                s for s, i in targets.items() if i.kind != targets[reference.silo].kind
            )
            raise SiloDataError(
                silo, "label dtype differs from the other silos", column=target
            )
    return features
