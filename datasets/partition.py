"""Partitioners: split row indices into silos (iid, label, quantity, feature skew).

Every partitioner is a pure function of its arrays and a seed
(``np.random.default_rng(seed)``). It returns one array of row indices per silo;
the arrays are disjoint, cover ``range(n_rows)``, are sorted ascending and hold
at least ``min_rows`` rows each, or a ``ValueError`` says why that is impossible.
"""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np
from sklearn.feature_selection import f_classif

PARTITION_KINDS: tuple[str, ...] = ("iid", "dirichlet", "quantity", "feature")
#: Fresh Dirichlet draws tried before the label-skew partition is repaired.
DIRICHLET_ATTEMPTS = 100


def iid(n_rows: int, n_silos: int, seed: int, *, min_rows: int = 1) -> list[np.ndarray]:
    """Shuffle the rows and deal them into silos of near-equal size."""
    _check_sizes(n_rows, n_silos, min_rows)
    order = np.random.default_rng(seed).permutation(n_rows)
    return [np.sort(part) for part in np.array_split(order, n_silos)]


def dirichlet_label_skew(
    labels: np.ndarray,
    n_silos: int,
    alpha: float,
    seed: int,
    *,
    min_rows: int = 1,
) -> list[np.ndarray]:
    """Give each silo a share of every class drawn from Dir(alpha): label skew.

    The standard partitioner of Hsu et al. (2019) as implemented in NIID-Bench
    (Li et al., 2021): for each class its rows are shuffled and cut by
    proportions drawn from Dir(alpha * 1); a silo already holding its fair share
    (``n_rows / n_silos``) gets no more rows, which keeps the skew in labels
    rather than in sizes. Small alpha: few classes per silo; large alpha: iid.
    Draws are retried up to ``DIRICHLET_ATTEMPTS`` times until every silo has
    ``min_rows`` rows; then the best draw is repaired by moving random rows from
    the largest silos to the short ones.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {labels.shape}")
    _check_alpha(alpha)
    n_rows = len(labels)
    _check_sizes(n_rows, n_silos, min_rows)
    rng = np.random.default_rng(seed)
    classes = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    best: list[list[int]] | None = None
    for _ in range(DIRICHLET_ATTEMPTS):
        silos: list[list[int]] = [[] for _ in range(n_silos)]
        for class_rows in classes:
            rows = rng.permutation(class_rows)
            shares = rng.dirichlet(np.full(n_silos, alpha))
            open_ = np.array([len(s) < n_rows / n_silos for s in silos])
            if (shares * open_).sum() > 0:
                shares = shares * open_
            shares = shares / shares.sum()
            cuts = (np.cumsum(shares) * len(rows)).astype(int)[:-1]
            for silo, part in zip(silos, np.split(rows, cuts), strict=True):
                silo.extend(part.tolist())
        if best is None or min(map(len, silos)) > min(map(len, best)):
            best = silos
        if min(map(len, best)) >= min_rows:
            break
    assert best is not None
    parts = [np.array(s, dtype=np.int64) for s in best]
    return [np.sort(p) for p in _repair(parts, min_rows, rng)]


def quantity_skew(
    n_rows: int, n_silos: int, alpha: float, seed: int, *, min_rows: int = 1
) -> list[np.ndarray]:
    """Shuffle the rows and give silos sizes in proportions drawn from Dir(alpha).

    Each silo first gets ``min_rows`` rows; the rest are dealt by a multinomial
    draw with the Dirichlet proportions. Small alpha: very unequal sizes.
    """
    _check_alpha(alpha)
    _check_sizes(n_rows, n_silos, min_rows)
    rng = np.random.default_rng(seed)
    shares = rng.dirichlet(np.full(n_silos, alpha))
    sizes = min_rows + rng.multinomial(n_rows - n_silos * min_rows, shares)
    order = rng.permutation(n_rows)
    return [np.sort(p) for p in np.split(order, np.cumsum(sizes)[:-1])]


def feature_skew(
    X: np.ndarray,
    n_silos: int,
    seed: int,
    column: int | None = None,
    *,
    labels: np.ndarray | None = None,
    task: Literal["classification", "regression"] | None = None,
    min_rows: int = 1,
) -> list[np.ndarray]:
    """Sort rows by one feature and give each silo a contiguous range of it.

    Silo ``k`` holds the ``k``-th block of near-equal size in ascending order of
    ``X[:, column]`` (NaN last); ties are broken at random with ``seed``.

    Parameters
    ----------
    X : numpy.ndarray
        Features, shape (n_rows, n_features).
    n_silos, seed : int
        Number of silos; seed of the tie-break.
    column : int, optional
        Column to sort by. Default: the column most related to ``labels``, the
        highest ANOVA F score for classification or the highest absolute
        Pearson correlation for regression.
    labels : numpy.ndarray, optional
        Targets; required when ``column`` is None.
    task : {"classification", "regression"}, optional
        What ``labels`` are; default: regression iff they are floats.
    min_rows : int
        Fewest rows a silo may hold.
    """
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"X must be two-dimensional, got shape {X.shape}")
    n_rows = X.shape[0]
    _check_sizes(n_rows, n_silos, min_rows)
    if column is None:
        if labels is None:
            raise ValueError(
                "feature_skew needs `column` or `labels` to choose a column"
            )
        column = most_informative_column(X, labels, task=task)
    if not -X.shape[1] <= column < X.shape[1]:
        raise ValueError(f"column {column} out of range for {X.shape[1]} features")
    shuffled = np.random.default_rng(seed).permutation(n_rows)
    order = shuffled[np.argsort(X[shuffled, column], kind="stable")]
    return [np.sort(part) for part in np.array_split(order, n_silos)]


def most_informative_column(
    X: np.ndarray,
    labels: np.ndarray,
    *,
    task: Literal["classification", "regression"] | None = None,
) -> int:
    """Return the column with the highest ANOVA F (classes) or |Pearson r| (values).

    Constant columns score lowest; ``task`` None means regression iff ``labels``
    are floats.
    """
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(labels)
    if X.ndim != 2 or y.shape != (X.shape[0],):
        raise ValueError(f"X {X.shape} and labels {y.shape} do not match")
    if task is None:
        task = "regression" if np.issubdtype(y.dtype, np.floating) else "classification"
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # constant columns, scored below
        if task == "classification":
            scores = f_classif(X, y)[0]
        else:
            xc = X - X.mean(axis=0)
            yc = y.astype(np.float64) - y.mean()
            scores = np.abs(xc.T @ yc) / (
                np.linalg.norm(xc, axis=0) * np.linalg.norm(yc)
            )
    scores = np.where(np.isfinite(scores), scores, -np.inf)
    return int(np.argmax(scores))


def partition(
    kind: str,
    n_silos: int,
    *,
    seed: int = 0,
    n_rows: int | None = None,
    labels: np.ndarray | None = None,
    X: np.ndarray | None = None,
    alpha: float = 0.5,
    column: int | None = None,
    task: Literal["classification", "regression"] | None = None,
    min_rows: int = 1,
) -> list[np.ndarray]:
    """Dispatch to a partitioner by name: "iid", "dirichlet", "quantity", "feature".

    ``n_rows`` defaults to the length of ``labels`` or ``X``. "dirichlet" needs
    ``labels``; "feature" needs ``X`` (and ``labels`` unless ``column`` is given).
    ``alpha`` is used by "dirichlet" and "quantity" only; "dirichlet" refuses
    ``task="regression"``.
    """
    if kind not in PARTITION_KINDS:
        raise ValueError(
            f"unknown partition {kind!r}; valid kinds: {', '.join(PARTITION_KINDS)}"
        )
    if n_rows is None:
        if labels is not None:
            n_rows = len(labels)
        elif X is not None:
            n_rows = len(X)
        else:
            raise ValueError(f"partition {kind!r} needs n_rows, labels or X")
    for given in (labels, X):
        if given is not None and len(given) != n_rows:
            raise ValueError(f"inputs disagree on the number of rows ({n_rows})")
    if kind == "iid":
        return iid(n_rows, n_silos, seed, min_rows=min_rows)
    if kind == "quantity":
        return quantity_skew(n_rows, n_silos, alpha, seed, min_rows=min_rows)
    if kind == "dirichlet":
        if labels is None:
            raise ValueError("partition 'dirichlet' needs labels")
        if task == "regression":
            raise ValueError("partition 'dirichlet' needs class labels, not regression")
        return dirichlet_label_skew(labels, n_silos, alpha, seed, min_rows=min_rows)
    if X is None:
        raise ValueError("partition 'feature' needs X")
    return feature_skew(
        X, n_silos, seed, column, labels=labels, task=task, min_rows=min_rows
    )


def _check_sizes(n_rows: int, n_silos: int, min_rows: int) -> None:
    if n_silos < 1:
        raise ValueError(f"n_silos must be at least 1, got {n_silos}")
    if min_rows < 1:
        raise ValueError(f"min_rows must be at least 1, got {min_rows}")
    if n_rows < n_silos * min_rows:
        raise ValueError(
            f"cannot split {n_rows} rows into {n_silos} silos of at least "
            f"{min_rows} row(s) each"
        )


def _check_alpha(alpha: float) -> None:
    if not (np.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be a positive number, got {alpha}")


def _repair(
    parts: list[np.ndarray], min_rows: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Move random rows from the largest silos into those below ``min_rows``."""
    parts = list(parts)
    for short in range(len(parts)):
        while len(parts[short]) < min_rows:
            donor = int(np.argmax([len(p) for p in parts]))
            take = min(min_rows - len(parts[short]), len(parts[donor]) - min_rows)
            moved = rng.permutation(len(parts[donor]))[:take]
            parts[short] = np.concatenate([parts[short], parts[donor][moved]])
            parts[donor] = np.delete(parts[donor], moved)
    return parts
