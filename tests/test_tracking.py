"""MLflow tracking against a real ``mlflow server`` on 127.0.0.1, read back.

One server (SQLite backend, proxied artifacts in a temporary folder) serves the
module. A federated run logs to it through the spec or ``MLFLOW_TRACKING_URI``;
the test reads the run back with ``MlflowClient``: the public spec as params,
the checkpoint's metrics per round as steps, and the logged model, which
loads with ``mlflow.sklearn`` and scores the test rows as the checkpoint says.
A server that goes away mid-run costs one warning, not the run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from fedsilo.errors import SpecError
from fedsilo.spec import FederationSpec, load_spec, parse_recorded_spec
from tasks import run_state
from tasks.store.checkpoints import CheckpointStore
from tasks.tracking import TrackingError, mlflow_target
from tasks.tracking.mlflow_run import flat_params, metric_key

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_api")]

#: Bound on the server's start; it is polled, not slept on.
SERVER_START_SECONDS = 180


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def stop_group(process: subprocess.Popen[bytes]) -> None:
    """End the process group this module started: TERM, then KILL if it lingers."""
    if process.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real MLflow tracking server on 127.0.0.1; its URL."""
    folder = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    log = (folder / "server.log").open("wb")
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "mlflow", "server"),
            *("--host", "127.0.0.1", "--port", str(port), "--workers", "1"),
            *("--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}"),
            *("--artifacts-destination", str(folder / "artifacts")),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,  # its own group: the workers it forks end with it
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_SECONDS
        while True:
            if process.poll() is not None:
                pytest.fail(
                    f"mlflow server exited: {(folder / 'server.log').read_text()}"
                )
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server not up in {SERVER_START_SECONDS}s")
            time.sleep(0.5)
        yield url
    finally:
        stop_group(process)
        log.close()


class Proxy:
    """A TCP relay on 127.0.0.1 to the server that can be cut, like a network."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # cut
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self.lock:
                self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        """Refuse new connections and drop the open ones."""
        with contextlib.suppress(OSError):  # wakes the accept() blocked on it
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        with self.lock:
            for end in self.sockets:
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
                end.close()
        self.thread.join(timeout=10)


def make_spec(
    data_dir: Path, store: Path, address: str, **changes: Any
) -> FederationSpec:
    spec = load_spec(data_dir / "federation.yaml")
    data = {
        **spec.model_dump(),
        "checkpoints": str(store),
        "cluster": {"address": address},
        **changes,
    }
    return FederationSpec.model_validate(data)


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


def checkpoint_values(
    store: CheckpointStore, silo: str, metric: str
) -> list[tuple[int, float]]:
    out = []
    for round_number in store.complete_rounds():
        frame = store.read_metrics(round_number)
        row = frame[
            (frame.silo == silo) & (frame.split == "test") & (frame.metric == metric)
        ]
        out.append((round_number, float(row.value.iloc[0])))
    return out


def test_a_run_and_its_resumption_are_one_mlflow_run(
    mlflow_server: str,
    breast_cancer_dir: Path,
    shared_cluster: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from flows.training import federated_training

    store_root = tmp_path / "store"
    # Round 1: MLFLOW_TRACKING_URI alone turns tracking on.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    first = make_spec(breast_cancer_dir, store_root, shared_cluster, rounds=1)
    summary = federated_training(first, run_id="tracked-run")
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    # Round 2: resumed, the spec's tracking section names the same server.
    tracking = {"mlflow": {"tracking_uri": mlflow_server}}
    second = make_spec(
        breast_cancer_dir, store_root, shared_cluster, rounds=2, tracking=tracking
    )
    resumed = federated_training(second, run_id="tracked-run", resume=True)

    assert resumed["mlflow_run_id"] == summary["mlflow_run_id"]
    client = MlflowClient(mlflow_server)
    run = client.get_run(summary["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "tracked-run"
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == first.name
    assert run.data.tags["fedsilo.run_id"] == "tracked-run"
    assert run.data.tags["fedsilo.spec_hash"] == first.spec_hash()
    assert run.data.tags["fedsilo.model_round"] == "2"

    params = run.data.params
    assert params["model.kind"] == "sgd-logistic"
    assert params["model.params.alpha"] == "0.01"
    assert params["silos.0.name"] == "silo-0"
    assert params["rounds"] == "1"  # params are the run's start
    assert params == flat_params(first.public_dict())
    assert not [k for k in params if k.startswith(("storage_options", "tracking"))]

    store = CheckpointStore(str(store_root), first.name, "tracked-run")
    assert store.complete_rounds() == [1, 2]
    for silo in ("global", "silo-0"):
        for metric in ("accuracy", "log_loss"):
            key = metric_key(silo, "test", metric)
            assert history(client, run.info.run_id, key) == checkpoint_values(
                store, silo, metric
            )
    assert [step for step, _ in history(client, run.info.run_id, "round_seconds")] == [
        1,
        2,
    ]

    # The logged model: MLflow's sklearn flavour, as the checkpoint scores it.
    import mlflow.pyfunc
    import mlflow.sklearn

    local = client.download_artifacts(run.info.run_id, "model", str(tmp_path / "m"))
    model = mlflow.sklearn.load_model(local)
    rows = pd.concat([pd.read_parquet(str(silo.test)) for silo in first.silos])
    features = list(model.feature_names_in_)
    accuracy = float(np.mean(model.predict(rows[features]) == rows[first.target]))
    assert accuracy == dict(checkpoint_values(store, "global", "accuracy"))[2]
    # As `mlflow models serve` loads it: pyfunc, through the input schema.
    served = mlflow.pyfunc.load_model(local)
    assert [c.name for c in served.metadata.get_input_schema().inputs] == features
    np.testing.assert_array_equal(
        served.predict(rows[features]), model.predict(rows[features])
    )


def test_a_boosted_run_logs_xgboosts_own_model(
    mlflow_server: str, breast_cancer_dir: Path, shared_cluster: str, tmp_path: Path
) -> None:
    import mlflow.xgboost
    import xgboost

    from flows.training import federated_training

    spec = make_spec(
        breast_cancer_dir,
        tmp_path / "store",
        shared_cluster,
        rounds=1,
        model={"kind": "xgboost", "params": {"objective": "binary:logistic"}},
        tracking={"mlflow": {"tracking_uri": mlflow_server, "experiment": "boosted"}},
    )

    summary = federated_training(spec)

    client = MlflowClient(mlflow_server)
    run = client.get_run(summary["mlflow_run_id"])
    assert run.data.params["model.kind"] == "xgboost"
    store = CheckpointStore(str(tmp_path / "store"), spec.name, summary["run_id"])
    key = metric_key("global", "test", "log_loss")
    assert history(client, run.info.run_id, key) == checkpoint_values(
        store, "global", "log_loss"
    )
    local = client.download_artifacts(run.info.run_id, "model", str(tmp_path / "m"))
    model = mlflow.xgboost.load_model(local)
    assert isinstance(model, xgboost.XGBClassifier)
    rows = pd.concat([pd.read_parquet(str(silo.test)) for silo in spec.silos])
    predicted = model.predict(rows[list(model.feature_names_in_)])
    accuracy = float(np.mean(predicted == rows[spec.target]))
    assert accuracy == dict(checkpoint_values(store, "global", "accuracy"))[1]


def test_an_unreachable_server_fails_the_run_before_any_silo_is_read(
    breast_cancer_dir: Path, shared_cluster: str, tmp_path: Path
) -> None:
    from flows.training import federated_training

    closed = f"http://127.0.0.1:{free_port()}"
    spec = make_spec(
        breast_cancer_dir,
        tmp_path / "store",
        shared_cluster,
        rounds=1,
        tracking={"mlflow": {"tracking_uri": closed, "experiment": "nowhere"}},
    )

    with pytest.raises(TrackingError, match=f"experiment 'nowhere' at {closed}"):
        federated_training(spec)

    assert not (tmp_path / "store").exists()


def test_a_server_lost_mid_run_costs_one_warning_not_the_run(
    mlflow_server: str, breast_cancer_dir: Path, shared_cluster: str, tmp_path: Path
) -> None:
    from flows.training import federated_training

    proxy = Proxy(int(mlflow_server.rsplit(":", 1)[1]))
    url = f"http://127.0.0.1:{proxy.port}"
    spec = make_spec(
        breast_cancer_dir,
        tmp_path / "store",
        shared_cluster,
        rounds=2,
        tracking={"mlflow": {"tracking_uri": url, "experiment": "lost"}},
    )

    def cut_after_first_round(result: Any, run: Any) -> None:
        if result.round == 1:
            proxy.cut()

    try:
        with run_state.listening(cut_after_first_round):
            summary = federated_training(spec)
    finally:
        proxy.cut()

    assert summary["rounds"] == [1, 2]
    store = CheckpointStore(str(tmp_path / "store"), spec.name, summary["run_id"])
    assert store.complete_rounds() == [1, 2]
    assert "tracking stopped after round 1" in summary["tracking"]
    client = MlflowClient(mlflow_server)
    run = client.get_run(summary["mlflow_run_id"])
    assert run.data.params["model.kind"] == "sgd-logistic"  # logged before the cut
    assert run.data.metrics == {}
    assert run.info.status == "RUNNING"  # nobody could tell the server otherwise


def test_tracking_is_chosen_by_the_spec_or_the_environment(
    breast_cancer_dir: Path,
) -> None:
    spec = load_spec(breast_cancer_dir / "federation.yaml")
    assert mlflow_target(spec, {}) is None
    from_env = mlflow_target(spec, {"MLFLOW_TRACKING_URI": "http://127.0.0.1:1"})
    assert from_env is not None
    assert (from_env.tracking_uri, from_env.experiment, from_env.required) == (
        "http://127.0.0.1:1",
        spec.name,
        False,
    )
    named = FederationSpec.model_validate(
        {**spec.model_dump(), "tracking": {"mlflow": {"experiment": "e"}}}
    )
    target = mlflow_target(named, {"MLFLOW_TRACKING_URI": "http://127.0.0.1:1"})
    assert target is not None
    assert (target.tracking_uri, target.experiment, target.required) == (
        "http://127.0.0.1:1",
        "e",
        True,
    )
    # Tracking changes no model: the recorded spec and its hash leave it out.
    assert named.public_dict() == spec.public_dict()
    assert named.spec_hash() == spec.spec_hash()
    assert parse_recorded_spec(spec.public_dict(), "old").tracking.mlflow is None


def test_a_tracking_uri_with_a_password_is_refused() -> None:
    from fedsilo.spec import parse_spec

    data = {
        "name": "f",
        "task": "classification",
        "target": "y",
        "rounds": 1,
        "silos": [{"name": "a", "train": "a.parquet"}],
        "tracking": {"mlflow": {"tracking_uri": "https://me:hunter2@mlflow.example"}},
    }
    with pytest.raises(SpecError) as error:
        parse_spec(data, source="spec.yaml")
    message = str(error.value)
    assert "spec.yaml: tracking.mlflow.tracking_uri" in message
    assert "MLFLOW_TRACKING_PASSWORD" in message
    assert "hunter2" not in message
