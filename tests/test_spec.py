"""Tests of the federation spec: loading, path resolution, errors, hash."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from fedsilo.errors import SpecError
from fedsilo.spec import FederationSpec, load_spec, parse_spec

REPO = Path(__file__).resolve().parents[1]


def _spec_dict(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "fed-a",
        "task": "classification",
        "target": "label",
        "rounds": 3,
        "seed": 7,
        "model": {"kind": "sgd-logistic", "params": {"alpha": 0.001}},
        "strategy": {"kind": "fedavg", "fraction": 1.0, "min_silos": 2},
        "silos": [
            {"name": "silo-a", "train": "data/a/train.parquet"},
            {"name": "silo-b", "train": "data/b/train.csv", "test": "data/b/test.csv"},
        ],
    }
    data.update(overrides)
    return data


def _write(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _load_error(path: Path) -> str:
    with pytest.raises(SpecError) as info:
        load_spec(path)
    return info.value.reason


# --- valid specs --------------------------------------------------------------


def test_valid_spec_loads(tmp_path: Path) -> None:
    path = _write(tmp_path / "fed.yaml", _spec_dict())

    spec = load_spec(path)

    assert isinstance(spec, FederationSpec)
    assert spec.name == "fed-a"
    assert spec.task == "classification"
    assert spec.rounds == 3
    assert spec.seed == 7
    assert spec.model.kind == "sgd-logistic"
    assert spec.model.params == {"alpha": 0.001}
    assert spec.strategy.min_silos == 2
    assert [s.name for s in spec.silos] == ["silo-a", "silo-b"]
    assert spec.silos[0].test is None  # absent test stays absent (holdout)
    assert spec.privacy.secure_aggregation is False


def test_load_spec_accepts_str_path(tmp_path: Path) -> None:
    path = _write(tmp_path / "fed.yaml", _spec_dict())

    spec = load_spec(str(path))

    assert spec.name == "fed-a"


@pytest.mark.parametrize(
    "name", sorted(p.name for p in (REPO / "federations").glob("*.yaml"))
)
def test_bundled_federations_load(name: str) -> None:
    spec = load_spec(REPO / "federations" / name)

    assert spec.silos
    assert all(Path(s.train).is_absolute() for s in spec.silos if s.train)


def test_relative_silo_paths_resolve_against_spec_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec_dir = tmp_path / "specs" / "nested"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    silos = [
        {"name": "rel", "train": "data/train.parquet", "test": "../up/test.csv"},
        {"name": "dot", "train": "./x.parquet"},
    ]
    path = _write(spec_dir / "fed.yaml", _spec_dict(silos=silos))
    monkeypatch.chdir(elsewhere)  # the working directory must not matter

    spec = load_spec(path)

    rel, dot = spec.silos
    assert rel.train == str(spec_dir.resolve() / "data" / "train.parquet")
    assert rel.test == str(tmp_path.resolve() / "specs" / "up" / "test.csv")
    assert dot.train == str(spec_dir.resolve() / "x.parquet")


def test_urls_and_absolute_paths_untouched(tmp_path: Path) -> None:
    absolute = str(tmp_path / "abs" / "train.parquet")
    silos = [
        {"name": "s3", "train": "s3://bucket/a/train.parquet", "test": "gs://b/t.csv"},
        {"name": "mem", "train": "memory://fed/train.parquet"},
        {"name": "abs", "train": absolute, "test": None},
    ]
    path = _write(tmp_path / "sub" / "fed.yaml", _spec_dict(silos=silos))

    spec = load_spec(path)

    s3, mem, abs_ = spec.silos
    assert s3.train == "s3://bucket/a/train.parquet"
    assert s3.test == "gs://b/t.csv"
    assert mem.train == "memory://fed/train.parquet"
    assert abs_.train == absolute
    assert abs_.test is None


def test_parse_spec_without_base_keeps_paths() -> None:
    spec = parse_spec(_spec_dict())

    assert spec.silos[0].train == "data/a/train.parquet"


# --- errors ------------------------------------------------------------------


def test_unknown_top_level_key(tmp_path: Path) -> None:
    path = _write(tmp_path / "fed.yaml", _spec_dict(rouns=5))

    reason = _load_error(path)

    assert str(path) in reason
    assert "rouns: unknown key" in reason


def test_unknown_nested_key_names_field_path(tmp_path: Path) -> None:
    data = _spec_dict()
    data["silos"][0]["trian"] = "data/a/train.parquet"
    path = _write(tmp_path / "fed.yaml", data)

    reason = _load_error(path)

    assert reason.startswith(f"{path}: ")
    assert "silos.0.trian: unknown key" in reason


def test_unknown_key_in_nested_section(tmp_path: Path) -> None:
    path = _write(tmp_path / "fed.yaml", _spec_dict(strategy={"min_silo": 1}))

    reason = _load_error(path)

    assert "strategy.min_silo: unknown key" in reason


def test_invalid_value_names_field(tmp_path: Path) -> None:
    path = _write(tmp_path / "fed.yaml", _spec_dict(rounds=0))

    reason = _load_error(path)

    assert str(path) in reason
    assert re.search(r"\brounds: ", reason)


def test_malformed_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: fed-a\ntask: classification\nrounds: [1, 2\ntarget: y\n")

    reason = _load_error(path)

    assert str(path) in reason
    assert "invalid YAML" in reason
    assert re.search(r"line [34]\b", reason)


def test_yaml_that_is_not_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")

    reason = _load_error(path)

    assert str(path) in reason
    assert "mapping" in reason


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")

    reason = _load_error(path)

    assert str(path) in reason


def test_missing_file_named(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "fed.yaml"

    reason = _load_error(path)

    assert str(path) in reason
    assert "no such spec file" in reason


def test_duplicate_silo_names(tmp_path: Path) -> None:
    silos = [{"name": "twin"}, {"name": "other"}, {"name": "twin"}]
    path = _write(tmp_path / "fed.yaml", _spec_dict(silos=silos))

    reason = _load_error(path)

    assert str(path) in reason
    assert "unique" in reason
    assert "twin" in reason
    assert "other" not in reason


@pytest.mark.parametrize(
    ("task", "kind"),
    [
        ("classification", "sgd-regressor"),
        ("classification", "mlp-regressor"),
        ("regression", "sgd-logistic"),
        ("regression", "logistic"),
        ("regression", "mlp-classifier"),
    ],
)
def test_model_kind_must_match_task(tmp_path: Path, task: str, kind: str) -> None:
    path = _write(tmp_path / "fed.yaml", _spec_dict(task=task, model={"kind": kind}))

    reason = _load_error(path)

    assert kind in reason


@pytest.mark.parametrize(
    ("task", "kind"),
    [("classification", "mlp-classifier"), ("regression", "mlp-regressor")],
)
def test_model_kind_matching_task_accepted(task: str, kind: str) -> None:
    spec = parse_spec(_spec_dict(task=task, model={"kind": kind}))

    assert spec.model.kind == kind


def test_min_silos_above_silo_count(tmp_path: Path) -> None:
    path = _write(tmp_path / "fed.yaml", _spec_dict(strategy={"min_silos": 3}))

    reason = _load_error(path)

    assert "min_silos=3" in reason
    assert "2 silos" in reason


def test_min_silos_equal_to_silo_count_accepted() -> None:
    spec = parse_spec(_spec_dict(strategy={"min_silos": 2}))

    assert spec.strategy.min_silos == 2


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        (
            {
                "privacy": {"secure_aggregation": True},
                "strategy": {"kind": "median", "min_silos": 2},
            },
            "coordinator sees only sums",
        ),
        (
            {
                "privacy": {"dp": {"clip": 1.0, "noise_multiplier": 1.0}},
                "strategy": {"kind": "fedavg", "norm_bound": 3.0},
            },
            "norm_bound",
        ),
        (
            {"strategy": {"kind": "krum", "byzantine": 1, "min_silos": 1}},
            "needs at least 5 silos",
        ),
        (
            {
                "privacy": {
                    "dp": {
                        "clip": 1.0,
                        "noise_multiplier": 1.0,
                        "adaptive": {"count_stddev": 0.2},
                    }
                }
            },
            "count_stddev must exceed",
        ),
        (
            {
                "privacy": {
                    "dp": {
                        "clip": 1.0,
                        "noise_multiplier": 1.0,
                        "adaptive": {"count_stddev": 1.0},
                    }
                },
                "model": {
                    "kind": "xgboost",
                    "params": {"objective": "binary:logistic"},
                },
            },
            "privacy.dp.adaptive is for FedAvg",
        ),
        (
            {
                "privacy": {
                    "dp": {
                        "clip": 1.0,
                        "noise_multiplier": 1.0,
                        "noise": "distributed",
                    }
                }
            },
            "privacy.dp.noise 'distributed' needs privacy.secure_aggregation",
        ),
        (
            {
                "privacy": {
                    "secure_aggregation": True,
                    "dp": {
                        "clip": 1.0,
                        "noise_multiplier": 1.0,
                        "noise": "distributed",
                    },
                },
                "model": {
                    "kind": "xgboost",
                    "params": {"objective": "binary:logistic"},
                },
            },
            "privacy.dp.noise 'distributed' is for FedAvg",
        ),
        (
            {
                "rounds": 5,
                "model": {
                    "kind": "xgboost",
                    "trees_per_round": 2,
                    "params": {"objective": "binary:logistic", "num_boost_round": 8},
                },
            },
            "num_boost_round=8 disagrees with rounds x model.trees_per_round = 10",
        ),
        (
            {
                "model": {
                    "kind": "xgboost",
                    "params": {"objective": "binary:logistic"},
                },
                "strategy": {"fraction": 0.5},
            },
            "strategy.fraction must be 1.0 for model kind 'xgboost'",
        ),
    ],
)
def test_privacy_and_strategy_combinations_are_checked(
    tmp_path: Path, changes: dict[str, Any], fragment: str
) -> None:
    path = _write(tmp_path / "fed.yaml", _spec_dict(**changes))

    reason = _load_error(path)

    assert fragment in reason


def test_privacy_options_load(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "fed.yaml",
        _spec_dict(
            privacy={
                "secure_aggregation": True,
                "dp": {
                    "clip": 1.0,
                    "noise_multiplier": 1.1,
                    "epsilon_budget": 8.0,
                    "noise": "distributed",
                },
            },
            strategy={
                "kind": "fedavg",
                "min_silos": 2,
                "server_optimizer": {"kind": "fedadam", "learning_rate": 0.05},
            },
        ),
    )

    spec = load_spec(path)

    assert spec.privacy.dp is not None and spec.privacy.dp.epsilon_budget == 8.0
    assert spec.privacy.dp.noise == "distributed"
    central = parse_spec(_spec_dict(privacy={"dp": {"clip": 1, "noise_multiplier": 1}}))
    assert central.privacy.dp is not None and central.privacy.dp.noise == "central"
    assert spec.strategy.server_optimizer is not None


def test_parse_spec_errors_name_source() -> None:
    with pytest.raises(SpecError, match=r"^api-request: rouns: unknown key"):
        parse_spec(_spec_dict(rouns=1), source="api-request")


# --- hash --------------------------------------------------------------------


def test_spec_hash_stable(tmp_path: Path) -> None:
    data = _spec_dict()
    first = _write(tmp_path / "one.yaml", data)
    reordered = dict(reversed(list(data.items())))  # key order must not matter
    second = _write(tmp_path / "two.yaml", reordered)

    hashes = {load_spec(first).spec_hash(), load_spec(second).spec_hash()}

    assert len(hashes) == 1
    assert re.fullmatch(r"[0-9a-f]{16}", hashes.pop())


def test_spec_hash_survives_yaml_round_trip() -> None:
    spec_a = parse_spec(_spec_dict())
    spec_b = parse_spec(yaml.safe_load(yaml.safe_dump(_spec_dict())))

    assert spec_a.spec_hash() == spec_b.spec_hash()


@pytest.mark.parametrize(
    "change",
    [
        {"rounds": 4},
        {"seed": 8},
        {"model": {"kind": "sgd-logistic", "params": {"alpha": 0.01}}},
        {"silos": [{"name": "silo-a"}, {"name": "silo-c"}]},
    ],
)
def test_spec_hash_changes_with_content(change: dict[str, Any]) -> None:
    base = parse_spec(_spec_dict()).spec_hash()

    changed = parse_spec(_spec_dict(**change)).spec_hash()

    assert changed != base
