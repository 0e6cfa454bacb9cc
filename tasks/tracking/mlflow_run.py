"""One MLflow run per federated run: the public spec, every round's metrics, the model.

The MLflow run is named after the fedsilo run and tagged ``fedsilo.run_id``; a
resumed fedsilo run continues the MLflow run that tag finds. Params are the
spec as checkpoints record it (:meth:`FederationSpec.public_dict`: no storage
options, SQL URLs hidden), flattened to dotted keys, and the whole of it is
the artifact ``fedsilo/spec.json`` (a resumed run keeps those of its start,
adding only params the start lacked). After each round every row of the round's
``metrics.parquet`` becomes a metric at step = round: ``test_accuracy`` for
the federation (silo ``global``), ``silo-0/test_accuracy`` for a silo. When the
run ends well, the last complete round's model is logged under ``model`` in
MLflow's sklearn or xgboost flavour (``mlflow models serve -m runs:/ID/model``).

Failure policy: an MLflow that cannot be reached, or refuses the run, when the
run starts fails it before any silo is read (:class:`TrackingError`). Once
rounds run, an MLflow error costs one warning and the rest of the tracking;
training goes on and the checkpoints stay the record.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedsilo.errors import FedsiloError
from fedsilo.sources import mask_url
from tasks.export import (
    ModelInfo,
    input_types,
    model_info,
    named_estimator,
    round_to_export,
)

if TYPE_CHECKING:
    from fedsilo.spec import FederationSpec
    from tasks.run_state import ProgressListener, RoundResult, Run
    from tasks.store.checkpoints import CheckpointStore

ENV_URI = "MLFLOW_TRACKING_URI"
RUN_TAG = "fedsilo.run_id"
MODEL_PATH = "model"
SPEC_ARTIFACT = "fedsilo/spec.json"

#: MLflow retries an HTTP request 7 times over minutes by default; a tracked
#: run waits this long at most unless these variables are set.
HTTP_BOUNDS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}

#: MLflow's limits: params or tags per request, metrics per request, param value.
PARAMS_PER_BATCH = 100
METRICS_PER_BATCH = 1000
MAX_PARAM_VALUE = 6000


class TrackingError(FedsiloError):
    """The tracking server cannot be used; the run did not start."""


@dataclass(frozen=True, slots=True)
class MlflowTarget:
    """Where to track: a tracking URI (None: MLflow's default) and an experiment."""

    tracking_uri: str | None
    experiment: str
    required: bool  # the spec asked for it (else only MLFLOW_TRACKING_URI did)

    def describe(self) -> str:
        """Return the experiment and the URI, without any password."""
        where = mask_url(self.tracking_uri) if self.tracking_uri else "MLflow default"
        return f"experiment {self.experiment!r} at {where}"


def mlflow_target(
    spec: FederationSpec, environ: Mapping[str, str] | None = None
) -> MlflowTarget | None:
    """Return where the spec's run is tracked, or None if it is not.

    ``tracking.mlflow`` in the spec turns tracking on; without it, a set
    ``MLFLOW_TRACKING_URI`` does. The experiment defaults to the federation.
    """
    environ = os.environ if environ is None else environ
    wanted = spec.tracking.mlflow
    env_uri = environ.get(ENV_URI) or None
    if wanted is None:
        if env_uri is None:
            return None
        return MlflowTarget(env_uri, spec.name, required=False)
    return MlflowTarget(
        wanted.tracking_uri or env_uri,
        wanted.experiment or spec.name,
        required=True,
    )


def flat_params(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Return nested mappings (and lists of mappings) as ``a.b.0.c`` -> text.

    Strings stay as they are; other leaves are JSON. A value longer than
    MLflow takes is cut, ending in ``...`` (``fedsilo/spec.json`` has it whole).
    """
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flat_params(value, f"{name}."))
        elif (
            isinstance(value, list)
            and value
            and all(isinstance(v, Mapping) for v in value)
        ):
            for index, item in enumerate(value):
                out.update(flat_params(item, f"{name}.{index}."))
        else:
            text = value if isinstance(value, str) else json.dumps(value)
            if len(text) > MAX_PARAM_VALUE:
                text = text[: MAX_PARAM_VALUE - 3] + "..."
            out[name] = text
    return out


def metric_key(silo: str, split: str, metric: str) -> str:
    """Return the MLflow key of a checkpoint metric row."""
    name = f"{split}_{metric}"
    return name if silo == "global" else f"{silo}/{name}"


@contextlib.contextmanager
def _bounded_http() -> Iterator[None]:
    """Bound MLflow's HTTP retries and timeout unless the user set them."""
    added = [name for name in HTTP_BOUNDS if name not in os.environ]
    for name in added:
        os.environ[name] = HTTP_BOUNDS[name]
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


class Tracking:
    """A run that is not tracked: no listeners, nothing to report."""

    @property
    def listeners(self) -> tuple[ProgressListener, ...]:
        """Return the round listeners that log each round."""
        return ()

    def summary(self) -> dict[str, Any]:
        """Return what the run's summary says of its tracking."""
        return {}

    def close(self, status: str) -> None:
        """End the tracked run with MLflow's ``status`` (FINISHED, FAILED, KILLED)."""


class MlflowTracking(Tracking):
    """The MLflow run of one fedsilo run.

    ``warn`` is called once, with one line, if MLflow fails after the start.
    """

    def __init__(
        self,
        target: MlflowTarget,
        spec: FederationSpec,
        run_id: str,
        warn: Callable[[str], None],
    ) -> None:
        self.target = target
        self.spec = spec
        self.run_id = run_id
        self.warn = warn
        self.mlflow_run_id: str | None = None
        self.experiment_id: str | None = None
        self.stopped: str | None = None  # why tracking stopped, if it did
        self.store: CheckpointStore | None = None
        self.logged_round: int | None = None
        self._client: Any = None

    @property
    def listeners(self) -> tuple[ProgressListener, ...]:
        """Return the one listener, :meth:`log_round`."""
        return (self.log_round,)

    def open(self) -> None:
        """Find or create the experiment and the run; log the spec and tags."""
        try:
            from mlflow import MlflowClient
        except ImportError:
            raise TrackingError(
                f"tracking {self.target.describe()} needs MLflow: "
                "pip install 'fedsilo[mlflow]'"
            ) from None
        try:
            with _bounded_http():
                self._client = MlflowClient(self.target.tracking_uri)
                self.experiment_id = self._experiment()
                self.mlflow_run_id = self._start_run()
        except Exception as error:  # MLflow raises many kinds; all mean the same
            raise TrackingError(
                f"MLflow tracking, {self.target.describe()}: {_first_line(error)}"
            ) from None

    def _experiment(self) -> str:
        client = self._client
        found = client.get_experiment_by_name(self.target.experiment)
        if found is not None:
            return str(found.experiment_id)
        try:
            return str(client.create_experiment(self.target.experiment))
        except Exception:
            found = client.get_experiment_by_name(self.target.experiment)
            if found is None:  # not a race with another run's create: the error
                raise
            return str(found.experiment_id)

    def _start_run(self) -> str:
        """Continue the MLflow run of this fedsilo run, or create it; log the spec."""
        from mlflow.entities import Param

        client = self._client
        runs = client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{RUN_TAG}` = '{self.run_id}'",
            max_results=1,
        )
        tags = {
            RUN_TAG: self.run_id,
            "fedsilo.federation": self.spec.name,
            "fedsilo.spec_hash": self.spec.spec_hash(),
            "fedsilo.model_kind": self.spec.model.kind,
        }
        public = self.spec.public_dict()
        if runs:  # resumed: the params, tags and spec.json of its start stay
            run_id = str(runs[0].info.run_id)
            client.update_run(run_id, status="RUNNING")
            known = set(runs[0].data.params)
        else:
            run_id = str(
                client.create_run(
                    self.experiment_id, run_name=self.run_id, tags=tags
                ).info.run_id
            )
            known = set()
            client.log_text(
                run_id, json.dumps(public, indent=2, sort_keys=True), SPEC_ARTIFACT
            )
        params = [
            Param(key, value)
            for key, value in flat_params(public).items()
            if key not in known
        ]
        for start in range(0, len(params), PARAMS_PER_BATCH):
            client.log_batch(run_id, params=params[start : start + PARAMS_PER_BATCH])
        return run_id

    def _give_up(self, what: str, error: BaseException) -> None:
        self.stopped = f"{what}: {_first_line(error)}"
        self.warn(
            f"MLflow tracking stopped ({self.target.describe()}): {self.stopped}; "
            "training goes on, the checkpoints keep every round"
        )

    def log_round(self, result: RoundResult, run: Run) -> None:
        """Log the round's checkpoint metrics (step = round) and its duration."""
        if self.stopped is not None or self.mlflow_run_id is None:
            return
        from mlflow.entities import Metric, RunTag

        self.store = run.store
        try:
            frame = run.store.read_metrics(result.round)
            stamp = int(time.time() * 1000)
            metrics = [
                Metric(
                    metric_key(str(silo), str(split), str(name)),
                    float(value),
                    stamp,
                    result.round,
                )
                for silo, split, name, value in zip(
                    frame["silo"],
                    frame["split"],
                    frame["metric"],
                    frame["value"],
                    strict=True,
                )
            ]
            metrics.append(
                Metric("round_seconds", float(result.seconds), stamp, result.round)
            )
            with _bounded_http():
                if self.logged_round is None:
                    self._client.log_batch(
                        self.mlflow_run_id,
                        tags=[RunTag("fedsilo.checkpoints", run.store.run_path)],
                    )
                for start in range(0, len(metrics), METRICS_PER_BATCH):
                    self._client.log_batch(
                        self.mlflow_run_id,
                        metrics=metrics[start : start + METRICS_PER_BATCH],
                    )
            self.logged_round = result.round
        except Exception as error:
            self._give_up(f"round {result.round}", error)

    def log_model(self) -> None:
        """Log the latest complete round's model in its MLflow flavour."""
        if self.store is None or self.stopped is not None:
            return
        round_number = round_to_export(self.store, None)
        estimator = named_estimator(self.store, round_number)
        info = model_info(self.store, round_number)
        with tempfile.TemporaryDirectory() as folder:
            path = str(Path(folder) / MODEL_PATH)
            save_flavour(estimator, info.kind, path, _signature(info))
            with _bounded_http():
                self._client.log_artifacts(self.mlflow_run_id, path, MODEL_PATH)
                self._client.set_tag(
                    self.mlflow_run_id, "fedsilo.model_round", str(round_number)
                )

    def close(self, status: str) -> None:
        """Log the model if the run finished; end the MLflow run with ``status``."""
        if self.mlflow_run_id is None or self.stopped is not None:
            return
        try:
            if status == "FINISHED":
                self.log_model()
            with _bounded_http():
                self._client.set_terminated(self.mlflow_run_id, status=status)
        except Exception as error:
            self._give_up("ending the run", error)

    def summary(self) -> dict[str, Any]:
        """Return the MLflow run id and one line saying where it is, or why not."""
        line = f"mlflow run {self.mlflow_run_id} ({self.target.describe()})"
        if self.stopped is not None:
            line += f"; tracking stopped after {self.stopped}"
        return {"mlflow_run_id": self.mlflow_run_id, "tracking": line}


def _signature(info: ModelInfo) -> Any:
    """Return the model's input schema, one named column per raw input (or None)."""
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ColSpec, Schema, TensorSpec

    types = input_types(info)
    if None in types.values():
        return None  # a categorical column of mixed types: no schema fits it
    columns: list[ColSpec | TensorSpec] = [
        ColSpec(kind, name) for name, kind in types.items() if kind is not None
    ]
    return ModelSignature(inputs=Schema(columns))


def save_flavour(estimator: Any, kind: str, path: str, signature: Any) -> None:
    """Save ``estimator`` as an MLflow model directory at ``path``.

    Boosted models in the xgboost flavour (xgboost's JSON), averaged ones in
    the sklearn flavour serialised with skops, not pickle. Requirements are
    given, so MLflow need not load the model in a subprocess to infer them.
    """
    from importlib.metadata import version

    if kind == "xgboost":
        import mlflow.xgboost

        mlflow.xgboost.save_model(
            estimator,
            path,
            signature=signature,
            model_format="json",
            pip_requirements=[
                f"xgboost=={version('xgboost')}",
                f"scikit-learn=={version('scikit-learn')}",
            ],
        )
        return
    import mlflow.sklearn

    mlflow.sklearn.save_model(
        estimator,
        path,
        signature=signature,
        serialization_format="skops",
        pip_requirements=[
            f"scikit-learn=={version('scikit-learn')}",
            f"skops=={version('skops')}",
        ],
    )


@contextlib.contextmanager
def track_run(
    spec: FederationSpec, run_id: str, warn: Callable[[str], None]
) -> Iterator[Tracking]:
    """Track the run the block trains, if the spec or the environment asks.

    Enter before any silo is read: an unreachable tracking server the spec
    names fails here. ``MLFLOW_TRACKING_URI`` alone with MLflow not installed
    is one warning and no tracking. The block's end sets the MLflow run's
    status (FINISHED, FAILED, or KILLED on an interrupt).
    """
    target = mlflow_target(spec)
    if target is None:
        yield Tracking()
        return
    tracking = MlflowTracking(target, spec, run_id, warn)
    try:
        tracking.open()
    except TrackingError as error:
        if target.required or "fedsilo[mlflow]" not in error.reason:
            raise
        warn(f"{ENV_URI} is set but not tracked: {error.reason}")
        yield Tracking()
        return
    try:
        yield tracking
    except (KeyboardInterrupt, SystemExit):
        tracking.close("KILLED")
        raise
    except BaseException:
        tracking.close("FAILED")
        raise
    tracking.close("FINISHED")
