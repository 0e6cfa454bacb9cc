"""Bundled data sets and partitioners: pure functions over arrays."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest

from datasets import partition as P
from datasets.bundled import DATASET_NAMES, column_name, load_dataset

KINDS = ["iid", "dirichlet", "quantity", "feature"]


def _inputs(n_rows: int = 600, n_classes: int = 5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(123)
    labels = rng.integers(0, n_classes, n_rows)
    X = rng.normal(size=(n_rows, 4))
    X[:, 2] += 3.0 * labels  # column 2 carries the label
    return X, labels


def _split(kind: str, seed: int, n_silos: int = 5, **kw: object) -> list[np.ndarray]:
    X, labels = _inputs()
    return P.partition(kind, n_silos, seed=seed, labels=labels, X=X, **kw)  # type: ignore[arg-type]


def _mean_tv(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    """Mean total-variation distance of silo label distributions from the global one."""
    k = int(labels.max()) + 1
    glob = np.bincount(labels, minlength=k) / len(labels)
    tvs = [
        0.5 * np.abs(np.bincount(labels[p], minlength=k) / len(p) - glob).sum()
        for p in parts
    ]
    return float(np.mean(tvs))


# --- partitions: invariants ---------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", [0, 1, 7])
@pytest.mark.parametrize("n_silos", [1, 3, 10])
def test_partition_disjoint_covering_non_empty(
    kind: str, seed: int, n_silos: int
) -> None:
    parts = _split(kind, seed, n_silos, alpha=0.2)

    assert len(parts) == n_silos
    assert all(len(p) >= 1 for p in parts)
    joined = np.concatenate(parts)
    assert len(joined) == 600  # disjoint: no row counted twice ...
    assert np.array_equal(np.sort(joined), np.arange(600))  # ... and all covered
    assert all(np.array_equal(p, np.sort(p)) for p in parts)
    assert all(p.dtype.kind == "i" for p in parts)


@pytest.mark.parametrize("kind", KINDS)
def test_partition_reproducible_by_seed(kind: str) -> None:
    first = _split(kind, seed=42)
    second = _split(kind, seed=42)

    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))


# Feature skew with distinct values is deterministic: its seed only breaks ties
# (test_feature_skew_ties_broken_by_seed).
@pytest.mark.parametrize("kind", ["iid", "dirichlet", "quantity"])
def test_partition_differs_across_seeds(kind: str) -> None:
    first = _split(kind, seed=1)
    second = _split(kind, seed=2)

    assert not all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))


@pytest.mark.parametrize("kind", KINDS)
def test_partition_respects_min_rows(kind: str) -> None:
    parts = _split(kind, seed=3, n_silos=20, alpha=0.05, min_rows=25)

    assert min(len(p) for p in parts) >= 25


# --- partitions: the skew each one promises -----------------------------------


def test_dirichlet_small_alpha_more_skewed_than_iid() -> None:
    labels = load_dataset("digits").frame["label"].to_numpy()
    seeds = range(5)

    skewed = np.mean(
        [_mean_tv(labels, P.dirichlet_label_skew(labels, 8, 0.1, s)) for s in seeds]
    )
    mild = np.mean(
        [_mean_tv(labels, P.dirichlet_label_skew(labels, 8, 100.0, s)) for s in seeds]
    )
    even = np.mean([_mean_tv(labels, P.iid(len(labels), 8, s)) for s in seeds])

    assert even < 0.1
    assert skewed > 0.5
    assert skewed > 4 * even
    assert mild < skewed / 3  # large alpha approaches iid


def test_dirichlet_repairs_impossible_draws() -> None:
    # Two classes, tiny alpha, many silos: raw draws leave silos empty.
    labels = np.repeat([0, 1], [300, 30])

    parts = P.dirichlet_label_skew(labels, 12, 0.01, seed=0, min_rows=10)

    assert sorted(np.concatenate(parts).tolist()) == list(range(330))
    assert min(len(p) for p in parts) >= 10


def test_dirichlet_redraws_before_repairing(monkeypatch: pytest.MonkeyPatch) -> None:
    # With seed 0 the first draw leaves a silo with 23 rows; a later draw
    # reaches 30 everywhere, so the rows handed to the repair need no moving.
    labels = np.repeat(np.arange(5), 100)
    smallest: list[int] = []
    repair = P._repair

    def spy(
        parts: list[np.ndarray], min_rows: int, rng: np.random.Generator
    ) -> list[np.ndarray]:
        smallest.append(min(len(p) for p in parts))
        return repair(parts, min_rows, rng)

    monkeypatch.setattr(P, "_repair", spy)

    P.dirichlet_label_skew(labels, 10, 0.5, seed=0, min_rows=30)

    assert smallest and smallest[0] >= 30


def test_quantity_skew_sizes_vary() -> None:
    sizes = [len(p) for p in P.quantity_skew(1000, 6, 0.3, seed=0)]
    even = [len(p) for p in P.iid(1000, 6, seed=0)]

    assert max(even) - min(even) <= 1
    assert max(sizes) > 3 * min(sizes)
    assert np.std(sizes) > 50


def test_quantity_skew_gives_every_silo_a_row() -> None:
    parts = P.quantity_skew(7, 7, 0.01, seed=5)

    assert [len(p) for p in parts] == [1] * 7


def test_feature_skew_ranges_are_ordered() -> None:
    X, _ = _inputs()

    parts = P.feature_skew(X, 4, seed=0, column=1)

    values = [X[p, 1] for p in parts]
    for low, high in itertools.pairwise(values):
        assert low.max() <= high.min()
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_feature_skew_default_column_is_most_informative() -> None:
    X, labels = _inputs()
    y = 5.0 * X[:, 0] + np.random.default_rng(0).normal(size=len(X))

    assert P.most_informative_column(X, labels) == 2
    assert P.most_informative_column(X, y) == 0
    parts = P.feature_skew(X, 3, seed=0, labels=labels)
    assert X[parts[0], 2].max() <= X[parts[1], 2].min()


def test_most_informative_column_skips_constant_columns() -> None:
    X, labels = _inputs()
    X[:, 2] = 1.0

    assert P.most_informative_column(X, labels) != 2


def test_feature_skew_ties_broken_by_seed() -> None:
    X = np.zeros((40, 1))

    first = P.feature_skew(X, 2, seed=0, column=0)
    second = P.feature_skew(X, 2, seed=1, column=0)

    assert not np.array_equal(first[0], second[0])


# --- partitions: errors -------------------------------------------------------


def test_unknown_partition_kind_lists_valid_kinds() -> None:
    with pytest.raises(ValueError, match=r"unknown partition 'pathological'.*iid"):
        P.partition("pathological", 3, n_rows=10)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: P.iid(3, 4, 0), "cannot split 3 rows into 4 silos"),
        (lambda: P.iid(10, 0, 0), "n_silos must be at least 1"),
        (lambda: P.quantity_skew(10, 3, 0.5, 0, min_rows=4), "at least 4 row"),
        (lambda: P.quantity_skew(10, 3, 0.0, 0), "alpha must be a positive"),
        (lambda: P.dirichlet_label_skew(np.zeros(9), 2, -1.0, 0), "alpha must be"),
        (lambda: P.dirichlet_label_skew(np.zeros((3, 3)), 2, 1, 0), "one-dimensional"),
        (lambda: P.feature_skew(np.zeros((9, 2)), 3, 0), "`column` or `labels`"),
        (lambda: P.feature_skew(np.zeros((9, 2)), 3, 0, column=5), "out of range"),
        (lambda: P.partition("dirichlet", 2, n_rows=10), "needs labels"),
        (lambda: P.partition("feature", 2, n_rows=10), "needs X"),
        (
            lambda: P.partition("dirichlet", 2, labels=np.ones(6), task="regression"),
            "needs class labels",
        ),
        (lambda: P.partition("iid", 2), "needs n_rows, labels or X"),
        (
            lambda: P.partition("iid", 2, n_rows=5, labels=np.zeros(6)),
            "disagree on the number of rows",
        ),
    ],
)
def test_impossible_partitions_raise_clear_errors(call: object, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        call()  # type: ignore[operator]


# --- bundled data sets --------------------------------------------------------

EXPECTED = {
    "breast_cancer": (569, 30, "classification"),
    "wine": (178, 13, "classification"),
    "digits": (1797, 64, "classification"),
    "diabetes": (442, 10, "regression"),
    "synthetic-classification": (1000, 20, "classification"),
    "synthetic-regression": (1000, 20, "regression"),
}


def test_every_name_is_expected() -> None:
    assert set(DATASET_NAMES) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_load_dataset_shape_names_and_target(name: str) -> None:
    n_rows, n_features, task = EXPECTED[name]

    data = load_dataset(name)

    target = "label" if task == "classification" else "target"
    assert (data.name, data.task, data.target) == (name, task, target)
    assert data.frame.shape == (n_rows, n_features + 1)
    assert data.frame.columns[-1] == target
    assert len(data.features) == n_features
    assert all(re.fullmatch(r"[a-z_][a-z0-9_]*", c) for c in data.features)
    assert not data.frame.isna().any().any()
    assert all(data.frame[c].dtype == np.float64 for c in data.features)
    expected_dtype = np.int64 if task == "classification" else np.float64
    assert data.frame[target].dtype == expected_dtype


def test_feature_names_are_cleaned() -> None:
    cancer = load_dataset("breast_cancer").features
    wine = load_dataset("wine").features
    digits = load_dataset("digits").features

    assert cancer[0] == "mean_radius"
    assert "worst_concave_points" in cancer
    assert "od280_od315_of_diluted_wines" in wine
    assert digits[:2] == ["pixel_0_0", "pixel_0_1"]
    assert column_name(" 2nd  Value (cm) ") == "f_2nd_value_cm"


def test_load_dataset_subset_is_seeded() -> None:
    a = load_dataset("wine", n_samples=50, seed=1).frame
    b = load_dataset("wine", n_samples=50, seed=1).frame
    c = load_dataset("wine", n_samples=50, seed=2).frame

    assert len(a) == 50
    assert list(a.index) == list(range(50))
    assert a.equals(b)
    assert not a.equals(c)


@pytest.mark.parametrize("name", ["synthetic-classification", "synthetic-regression"])
def test_synthetic_any_size_and_seeded(name: str) -> None:
    a = load_dataset(name, n_samples=123, seed=4).frame
    b = load_dataset(name, n_samples=123, seed=4).frame
    c = load_dataset(name, n_samples=123, seed=5).frame

    assert len(a) == 123
    assert a.equals(b)
    assert not a.equals(c)


def test_unknown_dataset_lists_valid_names() -> None:
    with pytest.raises(
        ValueError, match=r"unknown data set 'iris'.*breast_cancer.*wine"
    ):
        load_dataset("iris")


@pytest.mark.parametrize("n_samples", [0, 10_000])
def test_impossible_n_samples_raise(n_samples: int) -> None:
    with pytest.raises(ValueError, match="n_samples"):
        load_dataset("diabetes", n_samples=n_samples)
