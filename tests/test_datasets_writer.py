"""The silo-file writer and the demo specs under federations/."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from datasets.bundled import load_dataset
from datasets.writer import split_command, train_test_rows, write_federation
from fedsilo.errors import SpecError
from fedsilo.spec import NAME_PATTERN, load_spec

ROOT = Path(__file__).resolve().parents[1]
FEDERATIONS = ROOT / "federations"


def _read_silos(out: Path, n_silos: int) -> dict[str, dict[str, pd.DataFrame]]:
    return {
        f"silo-{i}": {
            split: pd.read_parquet(out / f"silo-{i}" / f"{split}.parquet")
            for split in ("train", "test")
        }
        for i in range(n_silos)
    }


def _sorted_rows(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(list(frame.columns)).reset_index(drop=True)


@pytest.mark.parametrize(
    ("dataset", "kind", "n_silos"),
    [
        ("breast_cancer", "iid", 4),
        ("wine", "dirichlet", 3),
        ("diabetes", "quantity", 5),
        ("synthetic-classification", "feature", 6),
    ],
)
def test_writer_round_trip(
    tmp_path: Path, dataset: str, kind: str, n_silos: int
) -> None:
    out = tmp_path / "fed"
    data = load_dataset(dataset)

    spec_path = write_federation(dataset, n_silos=n_silos, partition=kind, out=out)

    assert spec_path == out / "federation.yaml"
    silos = _read_silos(out, n_silos)
    assert all(len(s["train"]) > 0 and len(s["test"]) > 0 for s in silos.values())
    everything = pd.concat([f for s in silos.values() for f in s.values()])
    assert len(everything) == len(data.frame)
    # Same rows, each exactly once, same columns and dtypes as the data set.
    pd.testing.assert_frame_equal(_sorted_rows(everything), _sorted_rows(data.frame))
    spec = load_spec(spec_path)
    assert [s.name for s in spec.silos] == list(silos)
    for silo in spec.silos:
        assert silo.train == str((out / silo.name / "train.parquet").resolve())
        assert silo.test == str((out / silo.name / "test.parquet").resolve())
        assert Path(silo.train).is_file() and Path(silo.test).is_file()
    raw = yaml.safe_load(spec_path.read_text())
    assert raw["silos"][0] == {
        "name": "silo-0",
        "train": "silo-0/train.parquet",
        "test": "silo-0/test.parquet",
    }
    assert spec.name == f"{dataset.replace('_', '-')}-{kind}-{n_silos}"
    assert re.fullmatch(NAME_PATTERN, spec.name)
    assert (spec.task, spec.target) == (data.task, data.target)
    expected_model = (
        "sgd-logistic" if data.task == "classification" else "sgd-regressor"
    )
    assert spec.model.kind == expected_model
    assert spec.checkpoints == "./checkpoints"


def test_writer_spec_works_after_moving_the_directory(tmp_path: Path) -> None:
    write_federation("wine", n_silos=2, partition="iid", out=tmp_path / "a")
    shutil.move(tmp_path / "a", tmp_path / "b")

    spec = load_spec(tmp_path / "b" / "federation.yaml")

    assert all(Path(s.train or "").is_file() for s in spec.silos)
    assert all(str(tmp_path / "b") in (s.train or "") for s in spec.silos)


def test_writer_header_records_the_command(tmp_path: Path) -> None:
    out = tmp_path / "fed"

    path = write_federation(
        "breast_cancer", n_silos=3, partition="dirichlet", out=out, alpha=0.3, seed=2
    )

    first = path.read_text().splitlines()[0]
    assert first.startswith("# Made by: fedsilo datasets split breast_cancer ")
    words = shlex.split(first.removeprefix("# Made by: "))
    assert words[words.index("--silos") + 1] == "3"
    assert words[words.index("--partition") + 1] == "dirichlet"
    assert words[words.index("--alpha") + 1] == "0.3"
    assert words[words.index("--seed") + 1] == "2"
    assert words[words.index("--out") + 1] == str(out)


def test_split_command_omits_defaults() -> None:
    command = split_command(
        "wine", n_silos=3, partition="iid", out=Path("data/wine iid"), rounds=5
    )

    assert command == (
        "fedsilo datasets split wine --silos 3 --partition iid "
        "--out 'data/wine iid' --rounds 5"
    )


def test_writer_is_reproducible_and_seeded(tmp_path: Path) -> None:
    kw = {"n_silos": 3, "partition": "dirichlet", "alpha": 0.5}
    write_federation("wine", out=tmp_path / "a", seed=1, **kw)  # type: ignore[arg-type]
    write_federation("wine", out=tmp_path / "b", seed=1, **kw)  # type: ignore[arg-type]
    write_federation("wine", out=tmp_path / "c", seed=2, **kw)  # type: ignore[arg-type]

    a, b, c = (_read_silos(tmp_path / d, 3) for d in "abc")

    for silo in a:
        for split in ("train", "test"):
            pd.testing.assert_frame_equal(a[silo][split], b[silo][split])
    assert not a["silo-0"]["train"].equals(c["silo-0"]["train"])


def test_writer_shuffles_rows_within_files(tmp_path: Path) -> None:
    # wine is stored sorted by class; silo files must not be.
    write_federation("wine", n_silos=1, partition="iid", out=tmp_path / "w")

    labels = pd.read_parquet(tmp_path / "w" / "silo-0" / "train.parquet")["label"]

    assert not labels.is_monotonic_increasing


def test_writer_splits_each_silo_stratified(tmp_path: Path) -> None:
    write_federation("breast_cancer", n_silos=2, partition="iid", out=tmp_path / "f")

    for silo in _read_silos(tmp_path / "f", 2).values():
        train, test = silo["train"]["label"], silo["test"]["label"]
        assert len(test) / (len(train) + len(test)) == pytest.approx(0.2, abs=0.01)
        assert test.mean() == pytest.approx(train.mean(), abs=0.02)


def test_writer_options_reach_spec_and_data(tmp_path: Path) -> None:
    path = write_federation(
        "synthetic-regression",
        n_silos=2,
        partition="iid",
        out=tmp_path / "r",
        rounds=7,
        model_kind="mlp-regressor",
        n_samples=100,
        test_fraction=0.5,
        seed=3,
    )

    spec = load_spec(path)
    silos = _read_silos(tmp_path / "r", 2)
    assert (spec.rounds, spec.model.kind, spec.seed, spec.task) == (
        7,
        "mlp-regressor",
        3,
        "regression",
    )
    assert sum(len(f) for s in silos.values() for f in s.values()) == 100
    assert all(len(s["test"]) == 25 for s in silos.values())


def test_writer_refuses_to_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "fed"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")

    with pytest.raises(FileExistsError, match="not empty"):
        write_federation("wine", n_silos=2, partition="iid", out=out)

    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_writer_accepts_an_existing_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "fed").mkdir()

    path = write_federation("wine", n_silos=2, partition="iid", out=tmp_path / "fed")

    assert path.is_file()


def test_writer_refuses_a_file_as_out(tmp_path: Path) -> None:
    (tmp_path / "fed").write_text("")

    with pytest.raises(FileExistsError, match="not a directory"):
        write_federation("wine", n_silos=2, partition="iid", out=tmp_path / "fed")


def test_overwrite_replaces_previous_output_only(tmp_path: Path) -> None:
    out = tmp_path / "fed"
    write_federation("wine", n_silos=4, partition="iid", out=out)
    (out / "notes.txt").write_text("keep me")

    write_federation("wine", n_silos=2, partition="iid", out=out, overwrite=True)

    names = sorted(p.name for p in out.iterdir())
    assert names == ["federation.yaml", "notes.txt", "silo-0", "silo-1"]
    assert len(load_spec(out / "federation.yaml").silos) == 2


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"dataset": "iris"}, ValueError, "unknown data set 'iris'"),
        ({"partition": "shards"}, ValueError, "unknown partition 'shards'"),
        ({"n_silos": 100}, ValueError, "cannot split 178 rows into 100 silos"),
        ({"test_fraction": 1.0}, ValueError, "test_fraction must be in"),
        ({"model_kind": "sgd-regressor"}, SpecError, "is a regressor"),
        (
            {"dataset": "diabetes", "partition": "dirichlet"},
            ValueError,
            "needs class labels",
        ),
        ({"rounds": 0}, SpecError, "rounds"),
    ],
)
def test_invalid_arguments_raise_and_write_nothing(
    tmp_path: Path, kwargs: dict[str, object], error: type[Exception], message: str
) -> None:
    args: dict[str, object] = {"dataset": "wine", "n_silos": 2, "partition": "iid"}
    out = tmp_path / "fed"

    with pytest.raises(error, match=message):
        write_federation(**{**args, **kwargs}, out=out)  # type: ignore[arg-type]

    assert not out.exists()


# --- train/test split of one silo ---------------------------------------------


@pytest.mark.parametrize("n_rows", [2, 3, 10, 101])
def test_train_test_rows_partition_the_silo(n_rows: int) -> None:
    train, test = train_test_rows(n_rows, 0.2, np.random.default_rng(0))

    assert len(train) > 0 and len(test) > 0
    assert sorted([*train, *test]) == list(range(n_rows))


def test_train_test_rows_stratify_and_keep_singletons_in_train() -> None:
    strata = np.array([0] * 50 + [1] * 10 + [2])

    train, test = train_test_rows(len(strata), 0.2, np.random.default_rng(0), strata)

    assert np.bincount(strata[test], minlength=3).tolist() == [10, 2, 0]
    assert np.bincount(strata[train], minlength=3).tolist() == [40, 8, 1]


def test_train_test_rows_moves_a_row_when_test_would_be_empty() -> None:
    strata = np.array([0, 1, 2, 2])

    train, test = train_test_rows(4, 0.1, np.random.default_rng(0), strata)

    assert len(test) == 1 and strata[test[0]] == 2
    assert len(train) == 3


def test_train_test_rows_refuse_one_row() -> None:
    with pytest.raises(ValueError, match="cannot split 1 row"):
        train_test_rows(1, 0.2, np.random.default_rng(0))


# --- demo specs under federations/ --------------------------------------------

DEMOS = {
    "breast-cancer.yaml": ("breast_cancer", "iid", 4, "sgd-logistic"),
    "breast-cancer-dirichlet.yaml": ("breast_cancer", "dirichlet", 4, "sgd-logistic"),
    "wine.yaml": ("wine", "iid", 3, "mlp-classifier"),
    "diabetes.yaml": ("diabetes", "iid", 4, "sgd-regressor"),
    "breast-cancer-xgboost.yaml": ("breast_cancer", "iid", 4, "xgboost"),
}


def _demo_command(path: Path) -> list[str]:
    for line in path.read_text().splitlines():
        text = line.lstrip("# ").strip()
        if text.startswith("fedsilo datasets split "):
            return shlex.split(text)
    raise AssertionError(f"{path.name}: no 'fedsilo datasets split' command")


def test_demo_specs_are_the_expected_set() -> None:
    assert {p.name for p in FEDERATIONS.glob("*.yaml")} == set(DEMOS)


@pytest.mark.parametrize("name", sorted(DEMOS))
def test_demo_spec_loads_and_matches_its_command(name: str) -> None:
    dataset, kind, n_silos, model = DEMOS[name]

    spec = load_spec(FEDERATIONS / name)
    words = _demo_command(FEDERATIONS / name)

    assert words[3] == dataset
    assert words[words.index("--partition") + 1] == kind
    assert int(words[words.index("--silos") + 1]) == n_silos
    assert (spec.model.kind, len(spec.silos), spec.rounds) == (model, n_silos, 20)
    out = ROOT / words[words.index("--out") + 1]
    for i, silo in enumerate(spec.silos):
        assert silo.name == f"silo-{i}"
        assert silo.train == str(out / f"silo-{i}" / "train.parquet")
        assert silo.test == str(out / f"silo-{i}" / "test.parquet")


def test_dirichlet_demo_uses_alpha_0_3() -> None:
    words = _demo_command(FEDERATIONS / "breast-cancer-dirichlet.yaml")

    assert words[words.index("--alpha") + 1] == "0.3"


def test_wine_demo_has_a_small_hidden_layer() -> None:
    spec = load_spec(FEDERATIONS / "wine.yaml")

    assert list(spec.model.params["hidden_layer_sizes"]) == [16]


@pytest.mark.parametrize("name", sorted(DEMOS))
def test_demo_spec_finds_the_data_its_command_writes(tmp_path: Path, name: str) -> None:
    # Rebuild the repository layout in tmp_path: federations/<spec> and data/...
    words = _demo_command(FEDERATIONS / name)
    alpha = float(words[words.index("--alpha") + 1]) if "--alpha" in words else 0.5
    (tmp_path / "federations").mkdir()
    shutil.copy(FEDERATIONS / name, tmp_path / "federations" / name)
    out = tmp_path / words[words.index("--out") + 1]

    written = write_federation(
        words[3],
        n_silos=int(words[words.index("--silos") + 1]),
        partition=words[words.index("--partition") + 1],
        out=out,
        alpha=alpha,
    )

    demo = load_spec(tmp_path / "federations" / name)
    made = load_spec(written)
    assert (demo.task, demo.target) == (made.task, made.target)
    assert [(s.name, s.train, s.test) for s in demo.silos] == [
        (s.name, s.train, s.test) for s in made.silos
    ]
    columns = pq.read_schema(demo.silos[0].train or "").names
    assert demo.target in columns


@pytest.mark.parametrize(
    ("dataset", "objective"),
    [
        ("breast_cancer", "binary:logistic"),
        ("wine", "multi:softprob"),
        ("diabetes", "reg:squarederror"),
    ],
)
def test_xgboost_specs_get_the_objective_of_their_data(
    tmp_path: Path, dataset: str, objective: str
) -> None:
    from fedsilo.spec import load_spec

    path = write_federation(
        dataset, n_silos=2, partition="iid", out=tmp_path / "x", model_kind="xgboost"
    )

    spec = load_spec(path)
    assert spec.model.params["objective"] == objective
    if objective == "multi:softprob":
        assert spec.model.params["num_class"] == 3
