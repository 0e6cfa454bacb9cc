"""Federated one-hot encoding: categories agreed from the silos' own lists.

Each silo names the values of a categorical column that at least ``min_count``
of its training rows hold (:func:`frequent_values`); the coordinator takes the
sorted union (:func:`global_categories`), and every silo encodes with that same
list (:func:`one_hot`). A value outside the list - rare everywhere, or unseen
in training - encodes as all zeros, as scikit-learn's
``OneHotEncoder(handle_unknown="ignore")`` does. Encoded columns follow the
numeric ones, column by column, category by category.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from fedsilo.errors import SiloDataError
from tasks.protocol import codec


@dataclass(frozen=True, slots=True)
class Encoding:
    """How raw input columns become the model's features."""

    inputs: tuple[str, ...]
    categories: tuple[tuple[str, tuple[Any, ...]], ...]

    @property
    def categorical(self) -> list[str]:
        """Return the one-hot encoded input columns."""
        return [name for name, _ in self.categories]

    @property
    def numeric(self) -> list[str]:
        """Return the input columns passed through (and scaled)."""
        encoded = set(self.categorical)
        return [name for name in self.inputs if name not in encoded]

    def feature_names(self) -> list[str]:
        """Return the model's feature names: numeric ones, then ``column=value``."""
        names = self.numeric
        for column, values in self.categories:
            names += [f"{column}={value}" for value in values]
        return names

    def to_json(self) -> dict[str, Any]:
        """Return what a checkpoint records to rebuild the encoder."""
        return {
            "inputs": list(self.inputs),
            "numeric": self.numeric,
            "categorical": {name: list(values) for name, values in self.categories},
        }


def value_order(value: Any) -> tuple[int, Any]:
    """Sort numbers before strings, each in natural order."""
    if isinstance(value, bool | int | float):
        return (0, float(value))
    return (1, str(value))


def frequent_values(series: pd.Series, min_count: int) -> tuple[Any, ...]:
    """Return the values held by at least ``min_count`` rows, sorted."""
    counts = series.dropna().value_counts(sort=False)
    found = [plain(v) for v, n in counts.items() if int(n) >= min_count]
    return tuple(sorted(found, key=value_order))


def global_categories(
    per_silo: Sequence[Mapping[str, Sequence[Any]]], columns: Sequence[str]
) -> dict[str, tuple[Any, ...]]:
    """Return each column's categories: the sorted union of the silos' lists."""
    return {
        column: tuple(
            sorted({v for silo in per_silo for v in silo[column]}, key=value_order)
        )
        for column in columns
    }


def one_hot(
    silo: str,
    frame: pd.DataFrame,
    categories: Mapping[str, Sequence[Any]],
    split: str,
) -> np.ndarray:
    """Encode the categorical columns; unknown values give all-zero columns."""
    blocks = []
    for column, values in categories.items():
        series = frame[column]
        if series.isna().any():
            raise SiloDataError(
                silo,
                f"{split} rows have missing values in a categorical column; "
                "impute them first",
                column=column,
            )
        position = {value: i for i, value in enumerate(values)}
        codes = series.map(position).fillna(-1).to_numpy(dtype=np.int64)
        block = np.zeros((len(series), len(values)), dtype=np.float64)
        known = codes >= 0
        block[np.flatnonzero(known), codes[known]] = 1.0
        blocks.append(block)
    if not blocks:
        return np.empty((len(frame), 0))
    return np.hstack(blocks)


def plain(value: Any) -> Any:
    """Return numpy scalars as Python ones (they sort, pickle small, JSON-encode)."""
    item = getattr(value, "item", None)
    return item() if callable(item) else value


# A categorical column's encoding crosses to the silos with their prepare request.
codec.register(Encoding)
