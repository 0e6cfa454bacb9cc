"""The CLI as users run it: bad input gives one clear line and exit code 2."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import yaml

from fedsilo.cli import main


def run_cli(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fedsilo.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
        check=False,
    )


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def test_malformed_yaml_names_file_and_line(tmp_path: Path) -> None:
    spec = tmp_path / "broken.yaml"
    spec.write_text("name: x\nsilos: [\n  - {name: a\n")

    result = run_cli("run", str(spec))

    assert result.returncode == 2
    (line,) = error_lines(result)
    assert "broken.yaml" in line and "line" in line and "invalid YAML" in line


def test_unknown_key_names_the_field_path(tmp_path: Path) -> None:
    spec = tmp_path / "typo.yaml"
    spec.write_text(
        "name: x\ntask: classification\ntarget: y\nrounds: 1\n"
        "silos:\n  - {name: a, trian: a.parquet}\n"
    )

    result = run_cli("run", str(spec))

    assert result.returncode == 2
    (line,) = error_lines(result)
    assert "typo.yaml" in line and "silos.0.trian: unknown key" in line


def test_missing_spec_file(tmp_path: Path) -> None:
    result = run_cli("run", str(tmp_path / "nowhere.yaml"))

    assert result.returncode == 2
    (line,) = error_lines(result)
    assert "nowhere.yaml" in line and "no such spec file" in line


def test_split_refuses_a_bad_partition_count(tmp_path: Path) -> None:
    result = run_cli(
        "datasets",
        "split",
        "breast_cancer",
        "--silos",
        "0",
        "--out",
        str(tmp_path / "x"),
    )

    assert result.returncode == 2
    assert len(error_lines(result)) == 1


def _drop_rows(path: Path) -> None:
    frame = pd.read_parquet(path)
    frame.iloc[:0].to_parquet(path)


def _rename_column(path: Path) -> None:
    frame = pd.read_parquet(path)
    frame.rename(columns={"mean_radius": "radius"}).to_parquet(path)


def _drop_target(path: Path) -> None:
    frame = pd.read_parquet(path)
    frame.drop(columns=["label"]).to_parquet(path)


def _string_column(path: Path) -> None:
    frame = pd.read_parquet(path)
    frame["mean_radius"] = frame["mean_radius"].astype(str)
    frame.to_parquet(path)


def _delete(path: Path) -> None:
    path.unlink()


BAD_DATA: dict[str, tuple[Callable[[Path], None], str, str | None]] = {
    "missing file": (_delete, "no such file", None),
    "empty silo": (_drop_rows, "no training rows", None),
    "mismatched columns": (_rename_column, "", "mean_radius"),
    "target missing": (_drop_target, "target column is missing", "label"),
    "string feature": (_string_column, "incompatible", "mean_radius"),
}


@pytest.mark.integration
@pytest.mark.parametrize("case", sorted(BAD_DATA))
def test_bad_silo_data_is_one_line_naming_silo_and_column(
    case: str,
    breast_cancer_dir: Path,
    tmp_path: Path,
    shared_cluster: str,
    prefect_api: None,
) -> None:
    from prefect.settings import PREFECT_API_URL

    data = tmp_path / "data"
    shutil.copytree(breast_cancer_dir, data)
    spec_path = data / "federation.yaml"
    spec = yaml.safe_load(spec_path.read_text())
    spec["cluster"] = {"address": shared_cluster}
    spec["checkpoints"] = str(tmp_path / "store")
    spec_path.write_text(yaml.safe_dump(spec))
    mutate, reason, column = BAD_DATA[case]
    mutate(data / "silo-2" / "train.parquet")

    result = run_cli(
        "run", str(spec_path), env={"PREFECT_API_URL": str(PREFECT_API_URL.value())}
    )

    assert result.returncode == 2, result.stderr
    (line,) = error_lines(result)
    assert line.startswith("fedsilo: error: silo 'silo-2'")
    assert reason in line
    if column:
        assert f"column {column!r}" in line
    assert not (tmp_path / "store").exists() or not any(
        (tmp_path / "store").rglob("_SUCCESS")
    )


def test_in_process_main_reports_spec_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text("- just\n- a list\n")

    code = main(["run", str(spec)])

    assert code == 2
    assert "expected a mapping" in capsys.readouterr().err


def test_rounds_override_is_validated_like_the_spec(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "name": "tiny",
                "task": "classification",
                "target": "label",
                "rounds": 2,
                "silos": [{"name": "a", "train": "a.parquet"}],
            }
        )
    )

    code = main(["run", str(spec), "--rounds", "0"])

    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "rounds: Input should be greater than or equal to 1" in err[0]


def _unread_spec(tmp_path: Path, files: list[str], **extra: object) -> Path:
    """Write a one-round spec whose silo files do not exist (never to be read).

    Silo ``i`` is named ``"a"``, ``"b"``, ... and reads ``<files[i]>.parquet``.
    """
    spec = tmp_path / "s.yaml"
    silos = [
        {"name": chr(ord("a") + i), "train": str(tmp_path / f"{f}.parquet")}
        for i, f in enumerate(files)
    ]
    spec.write_text(
        yaml.safe_dump(
            {
                "name": "tiny",
                "task": "classification",
                "target": "label",
                "rounds": 1,
                "silos": silos,
                "checkpoints": str(tmp_path / "store"),
                **extra,
            }
        )
    )
    return spec


def test_a_bad_run_id_is_refused_before_anything_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = _unread_spec(tmp_path, ["none"])

    code = main(["run", str(spec), "--run-id", "../escape"])

    assert code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "run id '../escape'" in line
    assert not (tmp_path / "store").exists()


def test_bad_model_params_fail_once_before_any_silo_is_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = _unread_spec(
        tmp_path,
        ["a", "b"],
        model={"kind": "sgd-logistic", "params": {"alpha": -1.0}},
    )
    for name in ("a", "b"):  # the CLI's preflight reads their schemas first
        frame = pd.DataFrame({"x": [0.0, 1.0, 2.0], "label": [0, 1, 0]})
        frame.to_parquet(tmp_path / f"{name}.parquet")

    code = main(["run", str(spec)])

    assert code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "model.params" in line and "'alpha'" in line and "Got -1.0" in line
    assert "a.parquet" not in line and not (tmp_path / "store").exists()


def test_version_names_fedsilo_and_its_libraries(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import fedsilo

    with pytest.raises(SystemExit) as caught:
        main(["--version"])

    assert caught.value.code == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"fedsilo {fedsilo.__version__} (prefect ")
    assert "distributed " in line and "xgboost " in line and "Python 3." in line


def test_python_dash_m_fedsilo_is_the_cli() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fedsilo", "--version"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("fedsilo ")
