"""The wheel installs one import package, ``fedsilo``, and shadows nothing."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
APP_PACKAGES = ("flows", "tasks", "connectors", "datasets")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), "."],
        cwd=ROOT,
        check=True,
        timeout=300,
    )
    (built,) = out.glob("fedsilo-*.whl")
    return built


def test_the_wheel_holds_only_the_fedsilo_package(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"fedsilo", wheel.name.split("-py3")[0] + ".dist-info"}
    for package in APP_PACKAGES:
        assert f"fedsilo/{package}/__init__.py" in names
    assert "fedsilo/tasks/averaging/averaged.py" in names


def test_the_wheel_ships_its_type_information(wheel: Path) -> None:
    archive = zipfile.ZipFile(wheel)
    names = archive.namelist()
    assert "fedsilo/py.typed" in names  # PEP 561: checkers read fedsilo's hints
    stub = archive.read("fedsilo/__init__.pyi").decode()
    for name in ("train", "load_run", "runs", "TrainedRun"):
        assert f"import {name} as {name}" in stub


def test_the_installed_code_imports_only_through_fedsilo(
    wheel: Path, tmp_path: Path
) -> None:
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    code = (
        "import sys\n"
        "import fedsilo\n"
        "assert 'prefect' not in sys.modules and 'pandas' not in sys.modules\n"
        "from fedsilo.api import TrainedRun, train\n"
        "assert fedsilo.train is train and fedsilo.TrainedRun is TrainedRun\n"
        "import fedsilo.api, fedsilo.cli, fedsilo.flows.training\n"
        "import fedsilo.tasks.protocol.codec as codec\n"
        "codec.message_types()\n"
        "import fedsilo.silo, fedsilo.tasks.silo.runtime as runtime\n"
        "assert all(callable(runtime.operation(n)) for n in runtime.OPERATIONS)\n"
        "print(fedsilo.flows.training.__file__)\n"
        f"tops = {APP_PACKAGES!r}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in tops))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    where, imported = result.stdout.splitlines()[-2:]
    assert where.startswith(str(tmp_path / "site" / "fedsilo"))
    assert imported == "[]"  # no top-level flows, tasks, connectors or datasets
