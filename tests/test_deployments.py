"""Deployments against a real Prefect server and worker, on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from fedsilo.prefect_env import EPHEMERAL_DEFAULTS
from fedsilo.spec import load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).with_name("prefect"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stop(process: subprocess.Popen[Any]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


@pytest.fixture(scope="module")
def server_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A real `prefect server start` with its own PREFECT_HOME, stopped at the end."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = _free_port()
    env = {
        **os.environ,
        **EPHEMERAL_DEFAULTS,
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_LOGGING_LEVEL": "WARNING",
    }
    log = open(home / "server.log", "w")  # noqa: SIM115 - closed in teardown
    server = subprocess.Popen(
        [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(
                    f"{env['PREFECT_API_URL']}/health", timeout=2
                ):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        (home / "server.log").read_text()[-2000:]
                    ) from None
                time.sleep(0.5)
        yield env
    finally:
        _stop(server)
        log.close()


def _prefect(env: dict[str, str], *args: str, timeout: float = 120) -> str:
    result = subprocess.run(
        [PREFECT, "--no-prompt", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_prefect_yaml_specs_match_the_federations_folder() -> None:
    deployments = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    assert deployments
    for deployment in deployments:
        in_yaml = parse_spec(deployment["parameters"]["spec"], base=ROOT)
        in_folder = load_spec(ROOT / "federations" / f"{deployment['name']}.yaml")
        assert in_yaml == in_folder, deployment["name"]
        assert deployment["enforce_parameter_schema"] is True


@pytest.mark.slow
@pytest.mark.integration
def test_deploy_schedule_and_run_through_a_worker(
    server_env: dict[str, str], breast_cancer_dir: Path, tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterParentFlowRunId,
    )
    from prefect.settings import PREFECT_API_URL, temporary_settings

    _prefect(server_env, "work-pool", "create", "fedsilo-process", "--type", "process")
    _prefect(server_env, "deploy", "--all")
    spec = load_spec(breast_cancer_dir / "federation.yaml").model_dump(mode="json")
    spec.update(rounds=2, checkpoints=str(tmp_path / "store"), name="deployed-run")

    with temporary_settings({PREFECT_API_URL: server_env["PREFECT_API_URL"]}):
        with get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name(
                "federated-training/breast-cancer"
            )
            assert [s.schedule.cron for s in deployment.schedules] == ["0 2 * * *"]
            assert deployment.enforce_parameter_schema
            assert "spec" in deployment.parameter_openapi_schema["properties"]
            with pytest.raises(Exception, match=r"(?i)validation|schema|422"):
                client.create_flow_run_from_deployment(
                    deployment.id, parameters={"spec": {"name": "no-silos"}}
                )
            run = client.create_flow_run_from_deployment(
                deployment.id, parameters={"spec": spec}
            )
        worker = subprocess.run(
            [PREFECT, "worker", "start", "--pool", "fedsilo-process", "--run-once"],
            env=server_env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=420,
            check=False,
        )
        with get_client(sync_client=True) as client:
            finished = client.read_flow_run(run.id)
            children = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run.id])
                )
            )
    assert finished.state is not None and finished.state.is_completed(), (
        worker.stdout[-3000:] + worker.stderr[-3000:]
    )
    assert sorted(r.name for r in children) == ["round-0001", "round-0002"]
    assert all(r.state is not None and r.state.is_completed() for r in children)
    done = sorted(
        (tmp_path / "store").glob("federation=deployed-run/run=*/round=*/_SUCCESS")
    )
    assert [p.parent.name for p in done] == ["round=00001", "round=00002"]
