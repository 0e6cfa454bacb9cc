from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedsilo.locking import FederationBusyError, federation_lock, lock_path


@pytest.fixture(autouse=True)
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FEDSILO_STATE_DIR", str(tmp_path / "state"))
    return tmp_path / "state"


def test_second_holder_is_refused_and_told_who_runs() -> None:
    with federation_lock("fed", "./checkpoints", "run-a"):
        with pytest.raises(FederationBusyError, match=rf"pid {os.getpid()}.*run run-a"):
            with federation_lock("fed", "./checkpoints", "run-b"):
                pass


def test_lock_is_released_after_the_block() -> None:
    with federation_lock("fed", "./checkpoints", "run-a"):
        pass
    with federation_lock("fed", "./checkpoints", "run-b") as path:
        assert "run-b" in path.read_text()


def test_other_federations_and_stores_do_not_collide() -> None:
    with federation_lock("fed", "./checkpoints", "a"):
        with federation_lock("other", "./checkpoints", "b"):
            with federation_lock("fed", "s3://bucket/x", "c"):
                assert lock_path("fed", "./checkpoints") != lock_path(
                    "fed", "s3://bucket/x"
                )


def test_cli_started_while_locked_exits_75_naming_the_holder(
    breast_cancer_dir: Path, state_dir: Path
) -> None:
    spec = breast_cancer_dir / "federation.yaml"
    with federation_lock("breast-cancer-iid-4", "./checkpoints", "cron-1"):
        result = subprocess.run(
            [sys.executable, "-m", "fedsilo.cli", "run", str(spec)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            env={**os.environ, "FEDSILO_STATE_DIR": str(state_dir)},
        )
    assert result.returncode == 75
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "already running" in lines[0] and "cron-1" in lines[0]


def test_a_killed_holder_leaves_no_stale_lock(state_dir: Path) -> None:
    code = (
        "import os, time\n"
        "from fedsilo.locking import federation_lock\n"
        "with federation_lock('fed', './checkpoints', 'doomed'):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(60)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "FEDSILO_STATE_DIR": str(state_dir)},
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(FederationBusyError):
            with federation_lock("fed", "./checkpoints", "x"):
                pass
    finally:
        holder.kill()
        holder.wait(timeout=10)
    with federation_lock("fed", "./checkpoints", "after"):
        pass
