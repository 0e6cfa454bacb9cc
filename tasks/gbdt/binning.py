"""Map feature values to histogram bins with float32 cut points, as XGBoost hist.

A value ``x`` of feature ``j`` falls in bin ``searchsorted(cuts[j], float32(x),
side="right")``: bins ``0..k`` are exactly the values with ``float32(x) <
cuts[j][k]``, so a split after bin ``k`` exports threshold ``cuts[j][k]`` and
stock XGBoost routes every row as the binned learner did.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from fedsilo.gbdt_params import MAX_BINS
from tasks.gbdt.jit import kernels

#: Equal-width buckets per feature that start the numba kernel's search.
BUCKETS = 1024


@dataclass(frozen=True, slots=True)
class BinnedMatrix:
    """Bin indices of a silo's rows; missing cells hold bin 0 and are masked."""

    bins: np.ndarray  # (n_rows, n_features) uint8 or uint16, C order
    missing: np.ndarray | None  # (n_rows, n_features) bool, None without NaN
    n_bins: np.ndarray  # (n_features,) int64, bins per feature
    _columns: list[tuple[np.ndarray, np.ndarray | None]] = field(
        default_factory=list, init=False, repr=False, compare=False
    )

    @property
    def n_rows(self) -> int:
        """Return the number of rows."""
        return int(self.bins.shape[0])

    @property
    def n_features(self) -> int:
        """Return the number of features."""
        return int(self.bins.shape[1])

    @property
    def stride(self) -> int:
        """Return the largest bin count; bin ``stride`` is the missing slot."""
        return int(self.n_bins.max())

    def columns(self) -> tuple[np.ndarray, np.ndarray | None]:
        """Return column-major copies of ``bins`` and ``missing`` (n_features, n_rows).

        Made on the first call and kept with the matrix: as much memory again as
        ``bins`` and ``missing``. Reading one feature of a node's rows (ascending
        row ids) then touches mostly adjacent bytes, where the row-major matrix
        costs a cache line per row.
        """
        if not self._columns:
            missing = self.missing
            self._columns.append(
                (
                    np.ascontiguousarray(self.bins.T),
                    None if missing is None else np.ascontiguousarray(missing.T),
                )
            )
        return self._columns[0]


def kernel_missing(missing: np.ndarray | None) -> tuple[np.ndarray, bool]:
    """Return (missing flags, whether any) as the numba kernels take them."""
    if missing is None:
        return np.zeros((1, 1), bool), False
    return missing, True


def bin_dtype(max_bins: int) -> type[np.unsignedinteger]:
    """Return uint8 for at most 256 bins, else uint16."""
    if max_bins > MAX_BINS:
        raise ValueError(f"at most {MAX_BINS} bins per feature are supported")
    return np.uint8 if max_bins <= 256 else np.uint16


def check_cuts(cuts: Sequence[np.ndarray]) -> None:
    """Raise ValueError unless every cut array is float32, non-empty and increasing."""
    for j, c in enumerate(cuts):
        if c.dtype != np.float32 or c.ndim != 1 or c.size == 0:
            raise ValueError(f"cuts of feature {j} must be a non-empty float32 vector")
        if not np.all(np.isfinite(c)) or np.any(np.diff(c) <= 0):
            raise ValueError(f"cuts of feature {j} must be finite, strictly increasing")


def bin_column(x: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    """Return int64 bins of one column; NaN maps to bin 0 (mask it separately)."""
    x32 = np.asarray(x, dtype=np.float32)
    b = np.searchsorted(cuts, x32, side="right")
    np.minimum(b, cuts.size - 1, out=b)
    b[np.isnan(x32)] = 0
    return b


def bin_matrix(X: np.ndarray, cuts: Sequence[np.ndarray]) -> BinnedMatrix:
    """Bin a feature matrix column by column with shared float32 cut points."""
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[1] != len(cuts):
        raise ValueError(f"X has shape {X.shape}, expected (n, {len(cuts)})")
    check_cuts(cuts)
    n_bins = np.array([c.size for c in cuts], dtype=np.int64)
    dtype = bin_dtype(int(n_bins.max(initial=1)))
    jit = kernels()
    if jit is not None and len(cuts):
        X32 = np.ascontiguousarray(X, dtype=np.float32)
        offsets = np.r_[0, np.cumsum(n_bins)].astype(np.int64)
        flat = np.concatenate(cuts).astype(np.float32)
        bins = np.empty(X.shape, dtype=dtype)
        missing = np.zeros(X.shape, dtype=bool)
        tables = jit.bin_tables(flat, offsets, BUCKETS)
        any_missing = jit.bin_rows(X32, flat, offsets, *tables, bins, missing)
        return BinnedMatrix(
            bins=bins, missing=missing if any_missing else None, n_bins=n_bins
        )
    bins = np.empty(X.shape, dtype=dtype)
    for j, c in enumerate(cuts):
        bins[:, j] = bin_column(X[:, j], c)
    missing = np.isnan(X.astype(np.float32, copy=False))
    return BinnedMatrix(
        bins=bins, missing=missing if missing.any() else None, n_bins=n_bins
    )
