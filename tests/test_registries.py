"""Registries: a strategy, a model kind and a connector added from this file alone."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pytest
from pydantic import BaseModel, ConfigDict
from sklearn.linear_model import SGDRegressor

from fedsilo.api import (
    CheckpointStore,
    SourceKind,
    Strategy,
    StrategySpec,
    Update,
    federated_training,
    listening,
    read_source,
    register_model,
    register_model_kind,
    register_reader,
    register_source_kind,
    register_strategy,
    register_strategy_spec,
)
from fedsilo.errors import RegistryError, SpecError
from fedsilo.model_kinds import SgdKind
from fedsilo.spec import FederationSpec, load_spec, parse_recorded_spec, parse_spec
from tasks.averaging import sklearn_models
from tasks.averaging.linear_models import SgdModel
from tasks.averaging.strategies import strategy_for
from tasks.averaging.weighted import weighted_average

# --- a strategy: the coordinate-wise maximum of the silos' updates -----------


@register_strategy_spec
class CoordinateMaxSpec(StrategySpec):
    """Take the largest value of every coordinate; ``shift`` is added to it."""

    kind: Literal["coordinate-max"] = "coordinate-max"
    shift: float = 0.0


@register_strategy("coordinate-max")
class CoordinateMax(Strategy[CoordinateMaxSpec]):
    def aggregate(
        self, updates: Sequence[Update], global_params: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        return {
            name: np.max([u.params[name] for u in updates], axis=0) + self.spec.shift
            for name in updates[0].params
        }


def _spec_dict(**changes: Any) -> dict[str, Any]:
    return {
        "name": "fed",
        "task": "classification",
        "target": "label",
        "rounds": 1,
        "silos": [{"name": f"s{i}", "train": f"/data/{i}.parquet"} for i in range(3)],
        **changes,
    }


@pytest.mark.integration
@pytest.mark.usefixtures("prefect_api")
def test_a_strategy_registered_here_combines_a_real_round(
    breast_cancer_dir: Path, tmp_path: Path, shared_cluster: str
) -> None:
    spec = load_spec(breast_cancer_dir / "federation.yaml")
    spec = FederationSpec.model_validate(
        {
            **spec.model_dump(mode="json"),
            "rounds": 1,
            "checkpoints": str(tmp_path / "store"),
            "cluster": {"address": shared_cluster},
            "strategy": {"kind": "coordinate-max", "min_silos": 4},
        }
    )
    seen: list[Any] = []

    with listening(lambda result, run: seen.append(list(run.last_updates))):
        summary = federated_training(spec)

    store = CheckpointStore(str(tmp_path / "store"), spec.name, summary["run_id"])
    model = store.read_params(1)
    (updates,) = seen
    assert len(updates) == 4 and set(model) == set(updates[0].params)
    for name in model:
        expected = np.max([u.params[name] for u in updates], axis=0)
        np.testing.assert_array_equal(model[name], expected)
    fedavg = weighted_average([(u.params, float(u.n_samples)) for u in updates])
    assert not np.allclose(model["coef_"], fedavg["coef_"])
    recorded = store.read_metadata(1)["fedsilo.spec"]
    back = parse_recorded_spec(json.loads(recorded), "checkpoint")
    assert isinstance(back.strategy, CoordinateMaxSpec)
    assert back.strategy == spec.strategy


def test_the_spec_takes_the_registered_kind_and_its_own_fields() -> None:
    spec = parse_spec(
        _spec_dict(strategy={"kind": "coordinate-max", "shift": 0.5, "min_silos": 2})
    )

    assert isinstance(spec.strategy, CoordinateMaxSpec)
    assert (spec.strategy.shift, spec.strategy.min_silos) == (0.5, 2)
    dumped = spec.model_dump(mode="json")
    assert dumped["strategy"]["shift"] == 0.5
    assert FederationSpec.model_validate(dumped) == spec
    assert StrategySpec(kind="coordinate-max", shift=1.0) == CoordinateMaxSpec(shift=1)
    schema = json.dumps(FederationSpec.model_json_schema())
    assert '"const": "coordinate-max"' in schema


def test_a_strategy_without_a_kind_is_fedavg() -> None:
    spec = parse_spec(_spec_dict(strategy={"min_silos": 2}))

    assert spec.strategy.kind == "fedavg"
    assert parse_spec(_spec_dict()).strategy == StrategySpec()


def test_the_spec_refuses_fields_of_other_kinds_naming_them() -> None:
    with pytest.raises(SpecError, match=r"strategy\.beta: unknown key"):
        parse_spec(_spec_dict(strategy={"kind": "coordinate-max", "beta": 0.2}))
    with pytest.raises(SpecError, match=r"strategy\.shift: unknown key"):
        parse_spec(_spec_dict(strategy={"kind": "median", "shift": 1.0}))


def test_the_toy_strategy_needs_single_updates() -> None:
    with pytest.raises(SpecError, match="'coordinate-max' needs each silo's update"):
        parse_spec(
            _spec_dict(
                strategy={"kind": "coordinate-max"},
                privacy={"secure_aggregation": True},
            )
        )


def test_strategy_for_looks_up_the_registered_class() -> None:
    updates = [
        Update("a", {"w": np.array([1.0, 5.0])}, 1.0),
        Update("b", {"w": np.array([3.0, 2.0])}, 9.0),
    ]

    strategy = strategy_for(StrategySpec(kind="coordinate-max", shift=1.0))

    assert isinstance(strategy, CoordinateMax)
    got = strategy.aggregate(updates, {"w": np.zeros(2)})
    np.testing.assert_array_equal(got["w"], [4.0, 6.0])


def test_an_unknown_strategy_kind_names_the_known_ones() -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(_spec_dict(strategy={"kind": "coordinate-min"}))

    reason = info.value.reason
    assert "strategy.kind: unknown strategy kind 'coordinate-min'" in reason
    assert "fedavg" in reason and "coordinate-max" in reason


@register_strategy_spec
class SpecOnly(StrategySpec):
    """A kind the spec knows and no strategy class combines."""

    kind: Literal["spec-only"] = "spec-only"


def test_a_spec_kind_without_a_strategy_class_is_refused_when_combining() -> None:
    with pytest.raises(RegistryError, match="unknown strategy kind 'spec-only'"):
        strategy_for(SpecOnly())


def test_registering_a_kind_twice_is_refused_naming_it() -> None:
    class Again(StrategySpec):
        kind: Literal["coordinate-max"] = "coordinate-max"

    with pytest.raises(RegistryError) as info:
        register_strategy_spec(Again)
    assert "strategy kind 'coordinate-max' is already registered" in str(info.value)
    assert "fedavg" in str(info.value)
    with pytest.raises(RegistryError, match="'fedavg' is already registered"):
        register_strategy("fedavg")(CoordinateMax)
    with pytest.raises(RegistryError, match="model kind 'logistic' is already"):
        register_model_kind(SgdKind("logistic", "classification"))
    with pytest.raises(RegistryError, match="connector 'path' is already"):
        register_reader("path")(lambda silo, source, options: pd.DataFrame())


# --- a model kind: SGD regression with the Huber loss ------------------------

register_model_kind(SgdKind("sgd-huber", "regression", "invscaling"))
register_model(
    SgdModel("sgd-huber", SGDRegressor, classifier=False, forced={"loss": "huber"})
)


def test_a_model_kind_registered_here_trains_through_sklearn_models() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 3))
    y = X @ np.array([1.0, -2.0, 0.5])
    params = sklearn_models.init_params(
        "sgd-huber", {}, n_features=3, classes=[], seed=0
    )
    estimator = sklearn_models.materialise(
        "sgd-huber", {}, n_features=3, classes=[], seed=0, params=params
    )

    sklearn_models.train_local(
        "sgd-huber",
        estimator,
        X,
        y,
        classes=[],
        epochs=2,
        batch_size=8,
        rng=rng,
        proximal_mu=0.1,
    )

    assert estimator.loss == "huber"
    trained = sklearn_models.extract_params("sgd-huber", estimator)
    assert set(trained) == {"coef_", "intercept_", "t_"}
    assert np.any(trained["coef_"] != 0)
    spec = parse_spec(_spec_dict(task="regression", model={"kind": "sgd-huber"}))
    assert spec.model.kind == "sgd-huber"
    with pytest.raises(SpecError, match="model 'sgd-huber' is a regressor"):
        parse_spec(_spec_dict(model={"kind": "sgd-huber"}))


def test_an_unknown_model_kind_names_the_known_ones() -> None:
    with pytest.raises(SpecError, match=r"model\.kind: unknown model kind 'ridge'"):
        parse_spec(_spec_dict(model={"kind": "ridge"}))
    with pytest.raises(RegistryError, match="unknown model kind 'xgboost'; known: "):
        sklearn_models.check_params("xgboost", {})


# --- a connector: rows written into the spec itself ---------------------------


class InlineSource(BaseModel):
    """A few rows given in the spec (for tests only: rows belong at the silo)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["inline"] = "inline"
    rows: list[dict[str, float]]


register_source_kind(SourceKind("inline", InlineSource))


@register_reader("inline")
def read_inline(
    silo: str, source: InlineSource, storage_options: Mapping[str, Any]
) -> pd.DataFrame:
    return pd.DataFrame(source.rows)


def test_a_connector_registered_here_reads_its_source() -> None:
    rows = [{"x": 1.0, "label": 0.0}, {"x": 2.0, "label": 1.0}]
    silos = [{"name": "s0", "train": {"kind": "inline", "rows": rows}}]
    spec = parse_spec(_spec_dict(silos=silos), base=Path("/elsewhere"))

    source = spec.silos[0].train
    assert isinstance(source, InlineSource)
    pd.testing.assert_frame_equal(read_source("s0", source), pd.DataFrame(rows))
    assert spec.public_dict()["silos"][0]["train"] == {"kind": "inline", "rows": rows}
    assert FederationSpec.model_validate(spec.model_dump(mode="json")) == spec
    # A silo's load operation reads it as it reads the built-in kinds.
    from tasks.silo.data import load_arguments, load_silo

    loaded = load_silo(*load_arguments(spec, spec.silos[0]))
    assert len(loaded.train) + len(loaded.test) == len(rows)


def test_connector_errors_name_the_field_and_the_known_kinds() -> None:
    with pytest.raises(SpecError, match=r"silos\.0\.train\.inline\.rows: Field"):
        parse_spec(_spec_dict(silos=[{"name": "s0", "train": {"kind": "inline"}}]))
    with pytest.raises(SpecError, match="'path', 'sql', 'inline'"):
        parse_spec(_spec_dict(silos=[{"name": "s0", "train": {"kind": "http"}}]))


def test_the_built_in_connectors_read_through_the_registry(tmp_path: Path) -> None:
    frame = pd.DataFrame({"x": [1.0, 2.0], "label": [0, 1]})
    frame.to_parquet(tmp_path / "a.parquet")
    frame.to_csv(tmp_path / "b.csv", index=False)
    with sqlite3.connect(tmp_path / "c.db") as db:
        frame.to_sql("t", db, index=False)
    silos = [
        {"name": "s0", "train": "a.parquet"},
        {"name": "s1", "train": {"url": "sqlite:///c.db", "table": "t"}},
        {"name": "s2", "train": str(tmp_path / "b.csv")},
    ]
    spec = parse_spec(_spec_dict(silos=silos), base=tmp_path)

    for silo in spec.silos:
        got = read_source(silo.name, silo.train)
        pd.testing.assert_frame_equal(got, frame, check_dtype=False)
