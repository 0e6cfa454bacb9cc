"""Federated statistics: exact against pandas on pooled rows; small cells stay home."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from datasets.bundled import load_dataset
from datasets.partition import partition
from tasks.gbdt.sketch import summarize_column
from tasks.statistics.federated import (
    POOLED,
    FederatedStats,
    build_tables,
    profile_frame,
    profile_histograms,
    quantile,
    shared_edges,
    suppress,
)


def federate(
    frames: list[pd.DataFrame],
    *,
    numeric: list[str],
    categorical: list[str],
    min_count: int,
    bins: int = 10,
    target: str = "label",
    sketch_size: int = 256,
) -> tuple[FederatedStats, list[Any], list[Any]]:
    """Both passes as the flow runs them, on plain frames."""
    profiles = [
        profile_frame(
            f"s{i}",
            frame,
            numeric=numeric,
            categorical=categorical,
            target=target,
            task="classification",
            min_count=min_count,
            sketch_size=sketch_size,
        )
        for i, frame in enumerate(frames)
    ]
    edges = {}
    for column in numeric:
        sent = [
            s
            for p in profiles
            if column in p.numeric and (s := p.numeric[column].sketch) is not None
        ]
        cuts = shared_edges(sent, bins)
        if cuts.size:
            edges[column] = cuts
    histograms = [
        profile_histograms(f"s{i}", frame, edges, min_count)
        for i, frame in enumerate(frames)
    ]
    stats = build_tables(
        profiles,
        histograms,
        edges,
        target=target,
        task="classification",
        min_count=min_count,
        bins=bins,
    )
    return stats, profiles, histograms


def mixed_silos(seed: int = 0) -> list[pd.DataFrame]:
    """Three silos of different sizes and means, with missing values and strings."""
    rng = np.random.default_rng(seed)
    frames = []
    for i, n in enumerate((150, 260, 410)):
        frame = pd.DataFrame(
            {
                "a": rng.normal(2.0 * i, 1.0 + i, n),
                "b": rng.exponential(3.0, n) * 1e3,
                "colour": rng.choice(["red", "green", "blue"], n, p=[0.5, 0.3, 0.2]),
                "label": rng.choice([0, 1, 2], n, p=[0.5, 0.3, 0.2]),
            }
        )
        frame.loc[rng.choice(n, 12 + 5 * i, replace=False), "b"] = np.nan
        frame.loc[rng.choice(n, 7, replace=False), "colour"] = None
        frames.append(frame)
    return frames


def test_pooled_moments_histograms_and_counts_equal_pandas() -> None:
    frames = mixed_silos()
    pooled = pd.concat(frames, ignore_index=True)

    stats, _, _ = federate(
        frames, numeric=["a", "b"], categorical=["colour"], min_count=1, bins=7
    )

    columns = stats.columns.set_index("column")
    for name in ("a", "b"):
        row = columns.loc[name]
        assert row["count"] == pooled[name].count()
        assert row["missing"] == pooled[name].isna().sum()
        assert row["mean"] == pytest.approx(pooled[name].mean(), rel=1e-12)
        assert row["std"] == pytest.approx(pooled[name].std(ddof=1), rel=1e-12)
        assert bool(row["exact"])
        hist = stats.histograms.query("column == @name and silo == @POOLED")
        edges = [-np.inf, *hist["upper"].iloc[:-1], np.inf]
        assert hist["lower"].iloc[0] == -np.inf and len(hist) == 7
        expected = pd.cut(pooled[name], bins=edges, right=False).value_counts(
            sort=False
        )
        assert hist["count"].tolist() == expected.tolist()
        # With no threshold the span is the pooled range: pandas' equal-width bins.
        width = (pooled[name].max() - pooled[name].min()) / 7
        assert np.diff(hist["upper"].iloc[:-1]) == pytest.approx([width] * 5, rel=1e-6)
        for i, frame in enumerate(frames):
            table = stats.silo_columns
            silo = table[(table["column"] == name) & (table["silo"] == f"s{i}")]
            assert silo["mean"].item() == pytest.approx(frame[name].mean(), rel=1e-12)
            assert silo["std"].item() == pytest.approx(frame[name].std(), rel=1e-12)
    for column in ("colour", "label"):
        values = stats.values.query("column == @column and silo == @POOLED")
        got = dict(zip(values["value"], values["count"], strict=True))
        expected_counts = pooled[column].value_counts()
        assert {k: got[str(k)] for k in expected_counts.index} == dict(expected_counts)
        assert got["<rare>"] == 0
    assert columns.loc["colour", "missing"] == pooled["colour"].isna().sum()


def test_quantiles_fall_within_the_stated_rank_error() -> None:
    rng = np.random.default_rng(3)
    silos = [rng.lognormal(i / 2, 1.0, 4000 + 1500 * i) for i in range(4)]
    pooled = np.concatenate(silos).astype(np.float32)
    parts = [(summarize_column(x, 64), len(x)) for x in silos]

    for q in (0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99):
        value, error = quantile(parts, q)
        below = np.mean(pooled < np.float32(value))
        at_or_below = np.mean(pooled <= np.float32(value))
        distance = max(0.0, below - q, q - at_or_below)
        assert distance <= error + 1e-12
        # 64 entries per silo: the stated error is small, not vacuous.
        assert error < 0.03


@pytest.mark.parametrize("seed", range(20))
def test_suppression_leaves_no_small_cell_and_no_recoverable_one(seed: int) -> None:
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 40, size=int(rng.integers(2, 12))).tolist()
    min_count = int(rng.integers(2, 15))

    cells = suppress(counts, min_count)

    shown = [c for c in cells if c is not None]
    assert all(c == 0 or c >= min_count for c in shown)
    withheld = [c for c, s in zip(counts, cells, strict=True) if s is None]
    assert sum(withheld) == 0 or sum(withheld) >= min_count
    assert len(withheld) != 1 or sum(counts) < min_count
    assert all(s == c for c, s in zip(counts, cells, strict=True) if s is not None)


def test_the_silo_never_sends_small_cells() -> None:
    rng = np.random.default_rng(1)
    n = 300
    frame = pd.DataFrame(
        {
            "x": np.r_[rng.normal(0, 1, n - 3), [50.0, 60.0, 70.0]],
            "city": ["Arles"] * 200 + ["Lyon"] * 96 + ["Zanzibar-3"] * 4,
            "label": [0] * 294 + [1] * 6,
        }
    )
    min_count = 10

    stats, (profile,), (histograms,) = federate(
        [frame], numeric=["x"], categorical=["city"], min_count=min_count
    )

    sent = pickle.dumps((profile, histograms))
    # The rare city is not even named; the 3 extreme values never leave.
    assert b"Zanzibar-3" not in sent
    assert "Zanzibar-3" not in set(stats.values["value"])
    values = profile.numeric["x"].sketch.values.astype(np.float64)
    assert values.max() < 50.0
    for v in values:
        x32 = frame["x"].to_numpy(np.float32)
        assert (x32 <= v).sum() >= min_count and (x32 >= v).sum() >= min_count
    city = profile.categorical["city"]
    assert set(city.values) == {"Arles", "Lyon"}
    # 4 rare rows are withheld, and so is Lyon, else 300 - 200 - 96 gives them.
    assert city.rare is None and city.values["Lyon"] is None
    assert city.values["Arles"] == 200
    assert profile.labels is not None and profile.labels.values == {0: None}
    bins = histograms.counts["x"]
    true_bins = np.bincount(
        np.searchsorted(
            stats.histograms.query("silo == 's0'")["upper"].iloc[:-1], frame["x"]
        ),
        minlength=len(bins),
    )
    for sent_cell, true_cell in zip(bins, true_bins, strict=True):
        if 0 < true_cell < min_count:
            assert sent_cell is None
        if sent_cell is not None:
            assert sent_cell == true_cell and (true_cell == 0 or true_cell >= 10)
    table = stats.values.query("silo == 's0' and column == 'city'")
    assert table["count"].isna().sum() == 2  # shown as withheld, not as zero


def test_small_silo_and_columns_with_few_missing_send_nothing() -> None:
    rng = np.random.default_rng(2)
    small = pd.DataFrame({"x": rng.normal(size=6), "label": [0, 1] * 3})
    big = pd.DataFrame({"x": rng.normal(size=100), "label": [0, 1] * 50})
    big.loc[[3, 7], "x"] = np.nan  # 2 missing: the count would give them away

    stats, profiles, _ = federate(
        [small, big], numeric=["x"], categorical=[], min_count=8
    )

    assert profiles[0].n_rows is None and profiles[0].numeric == {}
    assert profiles[1].numeric["x"].count is None
    assert profiles[1].numeric["x"].mean is None
    heterogeneity = stats.heterogeneity.set_index("silo")
    assert pd.isna(heterogeneity.loc["s0", "rows"])
    assert heterogeneity.loc["s1", "rows"] == 100
    silo_columns = stats.silo_columns.set_index("silo")
    assert silo_columns.loc["s1", "suppressed"]
    assert pd.isna(silo_columns.loc["s1", "count"])


def test_dirichlet_split_is_more_heterogeneous_than_iid() -> None:
    data = load_dataset("breast_cancer")
    frame = data.frame
    features = data.features
    labels = frame["label"].to_numpy()

    def mean_js(kind: str) -> float:
        parts = partition(kind, 4, seed=0, labels=labels, alpha=0.1, min_rows=20)
        frames = [frame.iloc[rows] for rows in parts]
        stats, _, _ = federate(frames, numeric=features, categorical=[], min_count=1)
        return float(stats.heterogeneity["label_js"].mean())

    iid, skewed = mean_js("iid"), mean_js("dirichlet")

    assert skewed > 3 * iid
    assert skewed > 0.2


# --- on a real cluster ------------------------------------------------------------


def write_spec(data_dir: Path, tmp_path: Path, **changes: Any) -> Path:
    spec = yaml.safe_load((data_dir / "federation.yaml").read_text())
    for silo in spec["silos"]:
        for side in ("train", "test"):
            silo[side] = str((data_dir / silo[side]).resolve())
    spec.update(changes)
    path = tmp_path / "federation.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def pooled_train(data_dir: Path) -> list[pd.DataFrame]:
    return [pd.read_parquet(data_dir / f"silo-{i}" / "train.parquet") for i in range(4)]


@pytest.mark.integration
@pytest.mark.usefixtures("prefect_api")
def test_cli_stats_on_a_cluster_matches_pandas(
    breast_cancer_dir: Path,
    tmp_path: Path,
    shared_cluster: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from fedsilo.cli import main
    from tasks.statistics.storage import read_stats

    spec_path = write_spec(
        breast_cancer_dir, tmp_path, cluster={"address": shared_cluster}
    )
    out = tmp_path / "store"

    code = main(
        ["stats", str(spec_path), "--min-count", "1", "--bins", "8", "--out", str(out)]
    )

    assert code == 0
    printed = capsys.readouterr().out
    assert "Label distribution per silo" in printed and "Heterogeneity" in printed
    name = yaml.safe_load(spec_path.read_text())["name"]
    (stats_dir,) = (out / f"federation={name}").glob("stats=*")
    tables = read_stats(str(out), name, stats_dir.name.split("=", 1)[1])
    frames = pooled_train(breast_cancer_dir)
    pooled = pd.concat(frames, ignore_index=True)
    columns = tables["columns"].set_index("column")
    for name in ("mean_radius", "worst_area", "mean_fractal_dimension"):
        assert columns.loc[name, "count"] == len(pooled)
        assert columns.loc[name, "mean"] == pytest.approx(
            pooled[name].mean(), rel=1e-12
        )
        assert columns.loc[name, "std"] == pytest.approx(pooled[name].std(), rel=1e-12)
        hist = tables["histograms"].query("column == @name and silo == @POOLED")
        edges = [-np.inf, *hist["upper"].iloc[:-1], np.inf]
        expected = pd.cut(pooled[name], edges, right=False).value_counts(sort=False)
        assert hist["count"].tolist() == expected.tolist()
    labels = tables["values"].query("column == 'label' and value != '<rare>'")
    for i, frame in enumerate(frames):
        silo = labels[labels["silo"] == f"silo-{i}"]
        got = dict(zip(silo["value"], silo["count"], strict=True))
        assert got == {str(k): v for k, v in frame["label"].value_counts().items()}
    assert set(tables["heterogeneity"]["silo"]) == {f"silo-{i}" for i in range(4)}


@pytest.mark.integration
@pytest.mark.usefixtures("prefect_api")
def test_flow_threshold_withholds_small_bins_at_every_silo(
    breast_cancer_dir: Path, tmp_path: Path, shared_cluster: str
) -> None:
    from fedsilo.spec import load_spec
    from flows.stats import federated_stats

    spec = load_spec(
        write_spec(
            breast_cancer_dir,
            tmp_path,
            cluster={"address": shared_cluster},
            checkpoints=str(tmp_path / "store"),
            statistics={"min_count": 15, "bins": 10},
        )
    )

    result = federated_stats(spec)

    assert Path(result.path, "histograms.parquet").exists()
    hist = pd.read_parquet(Path(result.path, "histograms.parquet"))
    frames = pooled_train(breast_cancer_dir)
    name = "mean_area"
    rows = hist[hist["column"] == name]
    edges = [-np.inf, *rows[rows["silo"] == POOLED]["upper"].iloc[:-1], np.inf]
    withheld = 0
    for i, frame in enumerate(frames):
        silo = rows[rows["silo"] == f"silo-{i}"]["count"]
        true = pd.cut(frame[name], edges, right=False).value_counts(sort=False)
        for sent, real in zip(silo, true, strict=True):
            if 0 < real < 15:
                assert pd.isna(sent)
            if not pd.isna(sent):
                assert sent == real
            withheld += int(pd.isna(sent))
    assert withheld > 0
    pooled = rows[rows["silo"] == POOLED]
    assert not pooled["exact"].all()


def test_silo_side_code_imports_neither_prefect_nor_dask_maths() -> None:
    code = (
        "import sys\n"
        "import tasks.statistics.federated\n"
        "import tasks.statistics.categories\n"
        "assert not {'prefect', 'dask', 'distributed'} & set(sys.modules)\n"
        "import tasks.statistics.silo_side\n"
        "assert 'prefect' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
