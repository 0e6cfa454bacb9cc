"""Exported models loaded by stock skops, onnxruntime and xgboost score as recorded.

Each model kind trains one real round on the shared silo workers; its export
is loaded by the library that owns the format, scores every silo's test rows,
and the pooled metrics (computed here with scikit-learn) equal the global test
metrics of the checkpoint.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import fsspec
import numpy as np
import onnxruntime
import pandas as pd
import pytest
import skops.io
import xgboost
import yaml
from sklearn.metrics import (
    accuracy_score,
    log_loss,
    mean_absolute_error,
    mean_squared_error,
    r2_score,
)

from fedsilo.cli import main
from fedsilo.spec import FederationSpec, load_spec
from tasks.export import FORMATS, ExportError, export_model, named_estimator
from tasks.store.checkpoints import CheckpointStore

pytestmark = [
    pytest.mark.integration,
    pytest.mark.usefixtures("prefect_api"),
    # xgboost's float32 probabilities sum to one only to float32 rounding.
    pytest.mark.filterwarnings("ignore:The y_prob values do not sum to one"),
]

#: (data set, model kind, formats its export takes)
CASES = {
    "sgd-logistic": ("breast_cancer", "sgd-logistic", ("skops", "onnx")),
    "logistic": ("wine", "logistic", ("skops", "onnx")),
    "mlp-classifier": ("wine", "mlp-classifier", ("skops", "onnx")),
    "sgd-regressor": ("diabetes", "sgd-regressor", ("skops", "onnx")),
    "mlp-regressor": ("diabetes", "mlp-regressor", ("skops", "onnx")),
    "xgboost-binary": ("breast_cancer", "xgboost", ("skops", "xgboost-json")),
    "xgboost-regression": ("diabetes", "xgboost", ("skops", "xgboost-json")),
    "one-hot": ("colours", "sgd-logistic", ("skops", "onnx")),
}
MLP = {"hidden_layer_sizes": [8], "learning_rate_init": 0.01}


def write_colours(out: Path) -> Path:
    """Three silos with a string column the federation one-hot encodes."""
    rng = np.random.default_rng(3)
    effect = {"red": 1.5, "green": -1.0, "blue": 0.0}
    silos = []
    for i in range(3):
        n = 120
        colour = rng.choice(sorted(effect), n)
        x1 = rng.normal(10.0, 2.0, n)
        logit = (x1 - 10.0) + np.array([effect[c] for c in colour])
        label = (logit + rng.logistic(size=n) * 0.5 > 0).astype(np.int64)
        frame = pd.DataFrame({"x1": x1, "colour": colour, "label": label})
        folder = out / f"silo-{i}"
        folder.mkdir(parents=True)
        frame.iloc[:90].to_parquet(folder / "train.parquet")
        frame.iloc[90:].to_parquet(folder / "test.parquet")
        silos.append(
            {
                "name": f"silo-{i}",
                "train": f"silo-{i}/train.parquet",
                "test": f"silo-{i}/test.parquet",
            }
        )
    spec = {
        "name": "colours",
        "task": "classification",
        "target": "label",
        "rounds": 1,
        "model": {"kind": "sgd-logistic", "params": {"alpha": 0.01}},
        "preprocessing": {"categorical": ["colour"]},
        "statistics": {"min_count": 5},
        "silos": silos,
    }
    path = out / "federation.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module", params=list(CASES))
def trained(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    shared_cluster: str,
) -> tuple[str, FederationSpec, CheckpointStore]:
    """One round of the case's model kind on three shared silo workers."""
    from datasets.writer import write_federation
    from flows.training import federated_training

    case = request.param
    dataset, kind, _ = CASES[case]
    folder = tmp_path_factory.mktemp(case)
    if dataset == "colours":
        spec_path = write_colours(folder / "data")
    else:
        spec_path = write_federation(
            dataset,
            n_silos=3,
            partition="iid",
            out=folder / "data",
            rounds=1,
            model_kind=kind,
        )
    spec = load_spec(spec_path)
    model = spec.model.model_dump()
    if kind.startswith("mlp"):
        model["params"] = MLP
    spec = FederationSpec.model_validate(
        {
            **spec.model_dump(),
            "model": model,
            "checkpoints": str(folder / "store"),
            "cluster": {"address": shared_cluster},
        }
    )
    summary = federated_training(spec)
    return case, spec, CheckpointStore(spec.checkpoints, spec.name, summary["run_id"])


def silo_test_rows(spec: FederationSpec) -> list[pd.DataFrame]:
    """Return each silo's test rows, as the silo read them."""
    return [pd.read_parquet(str(silo.test)) for silo in spec.silos]


def pooled_metrics(
    spec: FederationSpec, rows: list[pd.DataFrame], predicted: list[np.ndarray]
) -> dict[str, float]:
    """Return accuracy and log loss, or RMSE, MAE and R2, over all silos' rows."""
    y = np.concatenate([frame[spec.target].to_numpy() for frame in rows])
    scores = np.concatenate(predicted)
    if spec.task == "classification":
        classes = np.unique(
            np.concatenate(
                [pd.read_parquet(str(s.train))[spec.target] for s in spec.silos]
            )
        )
        return {
            "accuracy": accuracy_score(y, classes[np.argmax(scores, axis=1)]),
            "log_loss": log_loss(y, scores, labels=classes),
        }
    return {
        "rmse": float(np.sqrt(mean_squared_error(y, scores))),
        "mae": mean_absolute_error(y, scores),
        "r2": r2_score(y, scores),
    }


def recorded(store: CheckpointStore) -> dict[str, float]:
    """Return the checkpoint's global test metrics of its round 1."""
    frame = store.read_metrics(1)
    chosen = frame[(frame.silo == "global") & (frame.split == "test")]
    return dict(zip(chosen.metric, chosen.value, strict=True))


def check_scores(got: dict[str, float], want: dict[str, float]) -> None:
    """Accuracy must match exactly; the rest to float rounding."""
    assert got
    for name, value in got.items():
        if name == "accuracy":
            assert value == want[name]
        else:
            assert value == pytest.approx(want[name], rel=1e-6, abs=1e-9), name


def skops_predict(path: Path, frame: pd.DataFrame, task: str) -> np.ndarray:
    untrusted = skops.io.get_untrusted_types(file=path)
    assert all(name.startswith("xgboost.") for name in untrusted), untrusted
    model = skops.io.load(path, trusted=untrusted)
    columns = frame[list(model.feature_names_in_)]
    if task == "classification":
        return np.asarray(model.predict_proba(columns), dtype=np.float64)
    return np.asarray(model.predict(columns), dtype=np.float64)


def onnx_predict(path: Path, frame: pd.DataFrame, task: str) -> np.ndarray:
    session = onnxruntime.InferenceSession(
        str(path), providers=["CPUExecutionProvider"]
    )
    inputs = [i.name for i in session.get_inputs()]
    meta = session.get_modelmeta().custom_metadata_map
    features = json.loads(meta["fedsilo.features"])
    if inputs == ["input"]:
        feeds = {"input": frame[features].to_numpy(dtype=np.float64)}
    else:
        assert inputs == features
        feeds = {}
        for inp in session.get_inputs():
            column = frame[[inp.name]].to_numpy()
            feeds[inp.name] = (
                column.astype(str) if inp.type == "tensor(string)" else column
            )
    names = [o.name for o in session.get_outputs()]
    outputs = dict(zip(names, session.run(None, feeds), strict=True))
    if task == "classification":
        return np.asarray(outputs["probabilities"], dtype=np.float64)
    return np.asarray(outputs["variable"], dtype=np.float64).ravel()


def xgboost_predict(path: Path, frame: pd.DataFrame, task: str) -> np.ndarray:
    cls = xgboost.XGBClassifier if task == "classification" else xgboost.XGBRegressor
    model = cls()
    model.load_model(str(path))
    columns = frame[list(model.feature_names_in_)]
    if task == "classification":
        return np.asarray(model.predict_proba(columns), dtype=np.float64)
    return np.asarray(model.predict(columns), dtype=np.float64)


PREDICT = {
    "skops": skops_predict,
    "onnx": onnx_predict,
    "xgboost-json": xgboost_predict,
}


def test_every_model_kind_loads_with_its_input_columns_named(
    trained: tuple[str, FederationSpec, CheckpointStore],
) -> None:
    case, spec, store = trained
    estimator = named_estimator(store)

    rows = pd.read_parquet(str(spec.silos[0].test))
    features = [c for c in rows.columns if c != spec.target]
    assert list(estimator.feature_names_in_) == features
    score = "predict_proba" if spec.task == "classification" else "predict"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "fitted without feature names"
        by_name = getattr(estimator, score)(rows[features])
    if not case.startswith("xgboost"):
        with pytest.warns(UserWarning, match="does not have valid feature names"):
            by_position = getattr(estimator, score)(rows[features].to_numpy())
        np.testing.assert_array_equal(by_name, by_position)
    with pytest.raises(ValueError, match=r"(?i)feature.names|columns are missing"):
        getattr(estimator, score)(rows[features[1:]])


def test_each_export_scores_the_test_rows_as_the_checkpoint_says(
    trained: tuple[str, FederationSpec, CheckpointStore],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    case, spec, store = trained
    rows = silo_test_rows(spec)
    want = recorded(store)
    *by_api, by_cli = CASES[case][2]
    monkeypatch.chdir(tmp_path)

    exported = {}
    for fmt in by_api:
        exported[fmt] = tmp_path / f"model{FORMATS[fmt]}"
        done = export_model(store, fmt, str(exported[fmt]))
        assert (done.round, done.format, done.kind) == (1, fmt, spec.model.kind)
    args = ["export", store.run_id, "--checkpoints", spec.checkpoints]
    assert main([*args, "--format", by_cli]) == 0
    # The default name, in the working directory.
    exported[by_cli] = tmp_path / f"{spec.name}-{store.run_id}-r00001{FORMATS[by_cli]}"
    assert exported[by_cli].name in capsys.readouterr().out

    for fmt, path in exported.items():
        predicted = [PREDICT[fmt](path, frame, spec.task) for frame in rows]
        check_scores(pooled_metrics(spec, rows, predicted), want)
    # To an fsspec URL: the same model.
    url = f"memory://exports/{case}{FORMATS[by_cli]}"
    export_model(store, by_cli, url)
    copy = tmp_path / f"copy{FORMATS[by_cli]}"
    with fsspec.open(url, "rb") as put:
        copy.write_bytes(put.read())
    np.testing.assert_array_equal(
        PREDICT[by_cli](copy, rows[0], spec.task),
        PREDICT[by_cli](exported[by_cli], rows[0], spec.task),
    )


def test_what_cannot_be_exported_is_refused_in_one_line(
    trained: tuple[str, FederationSpec, CheckpointStore],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    case, spec, store = trained
    lacking = sorted(set(FORMATS) - set(CASES[case][2]))
    args = ["export", store.run_id, "--checkpoints", spec.checkpoints]
    out = str(tmp_path / "x")

    for fmt in lacking:
        with pytest.raises(ExportError, match=f"format '{fmt}'"):
            export_model(store, fmt, out)
        assert main([*args, "--format", fmt, "--out", out]) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert f"format '{fmt}'" in line
    assert main([*args, "--format", "skops", "--round", "7", "--out", out]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "round 7 is not a complete round (complete rounds: 1..1)" in line
    assert main([*args[:2], "--format", "skops", "--out", out]) == 2  # other store
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"no complete round of run {store.run_id!r}" in line
    assert not Path(out).exists()
