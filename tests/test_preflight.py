"""Fail fast: the silos' sources are checked before any cluster or Prefect starts."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pytest
import yaml

from connectors.files import detect_format
from datasets.writer import write_federation
from fedsilo.cli import main
from fedsilo.errors import SiloDataError
from fedsilo.preflight import _format, preflight
from fedsilo.spec import load_spec
from tests._moto import MotoS3, moto_server

SPLIT = "fedsilo datasets split breast_cancer --silos 3 --partition iid"


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Breast cancer over three silos, written as `fedsilo datasets split` does."""
    out = tmp_path_factory.mktemp("preflight") / "bc"
    write_federation("breast_cancer", n_silos=3, partition="iid", out=out, rounds=2)
    return out


@pytest.fixture
def federation(split: Path, tmp_path: Path) -> Path:
    """A copy of the split whose spec attaches to a scheduler nobody runs.

    Were the preflight to let a mistake through, the run would fail later and
    otherwise (no scheduler answers on 127.0.0.1:9), not with the line asserted.
    """
    data = tmp_path / "bc"
    shutil.copytree(split, data)
    spec = data / "federation.yaml"
    header = [line for line in spec.read_text().splitlines() if line.startswith("#")]
    body = yaml.safe_load(spec.read_text())
    body["cluster"] = {"address": "tcp://127.0.0.1:9", "timeout": 1}
    body["checkpoints"] = str(tmp_path / "store")
    spec.write_text("\n".join(header) + "\n" + yaml.safe_dump(body, sort_keys=False))
    return spec


def _edit_spec(spec: Path, **changes: object) -> None:
    text = spec.read_text()
    header = [line for line in text.splitlines() if line.startswith("#")]
    body = {**yaml.safe_load(text), **changes}
    spec.write_text("\n".join(header) + "\n" + yaml.safe_dump(body, sort_keys=False))


def _rewrite(path: Path, change: Callable[[pd.DataFrame], pd.DataFrame]) -> None:
    change(pd.read_parquet(path)).to_parquet(path, index=False)


def _one_error_line(capsys: pytest.CaptureFixture[str], code: int) -> str:
    captured = capsys.readouterr()
    assert code == 2
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, captured.err
    assert captured.out == ""
    return lines[0]


def test_a_missing_file_names_silo_file_and_the_split_command(
    federation: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = federation.parent / "silo-1" / "train.parquet"
    missing.unlink()

    line = _one_error_line(capsys, main(["run", str(federation)]))

    assert line.startswith("fedsilo: error: silo 'silo-1': no such file: ")
    assert str(missing) in line
    assert f"silos.1.train in {federation}" in line
    assert SPLIT in line  # the command of the spec's own header
    assert not (federation.parent.parent / "store").exists()


def test_a_wrong_target_names_the_column_and_the_ones_that_exist(
    federation: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _edit_spec(federation, target="labels")

    line = _one_error_line(capsys, main(["run", str(federation)]))

    assert line.startswith("fedsilo: error: silo 'silo-0', column 'labels': ")
    assert "target column is missing" in line
    assert str(federation.parent / "silo-0" / "train.parquet") in line
    assert f"fix `target` in {federation}" in line
    assert "did you mean 'label'?" in line
    assert "'mean_radius'" in line  # the columns the file does have


def test_a_feature_missing_at_one_silo_names_silo_column_and_file(
    federation: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for split in ("train", "test"):
        _rewrite(
            federation.parent / "silo-2" / f"{split}.parquet",
            lambda f: f.rename(columns={"mean_radius": "radius"}),
        )

    line = _one_error_line(capsys, main(["run", str(federation)]))

    assert line.startswith("fedsilo: error: silo 'silo-2', column 'mean_radius': ")
    assert "feature is missing (present at 2 other silo(s))" in line
    assert str(federation.parent / "silo-2" / "train.parquet") in line
    assert "did you mean 'radius'?" in line


def test_silos_with_different_columns_name_the_odd_one(
    federation: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for split in ("train", "test"):
        _rewrite(
            federation.parent / "silo-1" / f"{split}.parquet",
            lambda f: f.assign(ward=3.0),
        )

    line = _one_error_line(capsys, main(["run", str(federation)]))

    assert line.startswith("fedsilo: error: silo 'silo-1', column 'ward': ")
    assert "unexpected feature (absent at the other silos)" in line
    assert str(federation.parent / "silo-1" / "train.parquet") in line


def test_a_dtype_that_disagrees_across_silos_is_named(
    federation: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _rewrite(
        federation.parent / "silo-0" / "train.parquet",
        lambda f: f.assign(mean_area=f["mean_area"].astype(str)),
    )

    line = _one_error_line(capsys, main(["run", str(federation)]))

    assert line.startswith("fedsilo: error: silo 'silo-0', column 'mean_area': ")
    assert "incompatible with the numeric dtype the other silos have" in line


def test_train_and_test_files_with_different_columns(
    federation: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    test_file = federation.parent / "silo-2" / "test.parquet"
    _rewrite(test_file, lambda f: f.drop(columns=["worst_area"]))

    line = _one_error_line(capsys, main(["run", str(federation)]))

    assert line.startswith("fedsilo: error: silo 'silo-2', column 'worst_area': ")
    assert f"not in {test_file}" in line


def test_stats_and_compare_check_first_too(
    federation: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (federation.parent / "silo-0" / "test.parquet").unlink()

    for command in ("stats", "compare"):
        line = _one_error_line(capsys, main([command, str(federation)]))
        assert "silo 'silo-0': no such file: " in line
        assert "silos.0.test" in line


def test_a_missing_file_answers_before_prefect_or_dask_is_imported(
    federation: Path,
) -> None:
    (federation.parent / "silo-2" / "train.parquet").unlink()

    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "fedsilo", "run", str(federation)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 2
    imported = [
        line.rsplit("|", 1)[-1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:")
    ]
    said = [line for line in result.stderr.splitlines() if line.startswith("fedsilo")]
    assert len(said) == 1 and "silo 'silo-2': no such file" in said[0]
    assert "fedsilo.preflight" in imported
    tops = {name.split(".")[0] for name in imported}
    assert not tops & {"prefect", "distributed", "dask", "prefect_dask"}


def test_a_good_split_passes_and_silo_held_sources_are_left_to_the_silo(
    federation: Path,
) -> None:
    body = yaml.safe_load(federation.read_text())
    body["silos"][0] = {"name": "silo-0"}  # its worker's own config holds them
    body["silos"][1]["test"] = None
    body["silos"][1]["train"] = {"url": "sqlite:///silo-1.db", "table": "rows"}
    body["silos"].append({"name": "silo-3", "train": "s3://bucket/silo-3/train.csv"})
    spec_path = federation.parent / "mixed.yaml"
    spec_path.write_text(yaml.safe_dump(body))

    checked = preflight(load_spec(spec_path), spec_path)

    assert checked.silos == ("silo-2",)
    assert "configured at the silo" in checked.skipped["silo-0"]
    assert "not a file source" in checked.skipped["silo-1"]
    assert "a CSV at a URL" in checked.skipped["silo-3"]  # no row read from here


def test_paths_are_the_silos_own_when_the_scheduler_is_elsewhere(
    federation: Path,
) -> None:
    (federation.parent / "silo-1" / "train.parquet").unlink()
    _edit_spec(
        federation,
        cluster={"address": "tcp://192.0.2.7:8786", "insecure_plain_tcp": True},
    )

    checked = preflight(load_spec(federation), federation)

    assert checked.silos == ()
    assert all("the scheduler is elsewhere" in why for why in checked.skipped.values())


def test_csv_sources_are_read_by_their_first_rows(federation: Path) -> None:
    body = yaml.safe_load(federation.read_text())
    for i, silo in enumerate(body["silos"]):
        for split in ("train", "test"):
            parquet = federation.parent / silo[split]
            frame = pd.read_parquet(parquet)
            if i == 1:
                frame = frame.drop(columns=["mean_texture"])
            frame.to_csv(parquet.with_suffix(".csv"), index=False)
            silo[split] = silo[split].replace(".parquet", ".csv")
    federation.write_text(yaml.safe_dump(body))

    with pytest.raises(SiloDataError) as raised:
        preflight(load_spec(federation), federation)

    assert raised.value.silo == "silo-1" and raised.value.column == "mean_texture"
    assert str(federation.parent / "silo-1" / "train.csv") in raised.value.reason


@pytest.mark.parametrize(
    "location",
    ["a/train.parquet", "s3://b/x.PQ", "t.csv", "t.csv.gz", "dir/", "folder", "x.json"],
)
def test_the_preflight_reads_formats_as_the_file_connector_does(location: str) -> None:
    try:
        expected: str | None = detect_format(location)
    except ValueError:
        expected = None

    assert _format(location) == expected


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    with moto_server(tmp_path_factory.mktemp("moto") / "moto.log") as server:
        yield server


def _s3_spec(split: Path, tmp_path: Path, moto: MotoS3, bucket: str) -> Path:
    """The split's spec with every silo's files at s3://BUCKET/ (silo-1's train not)."""
    fs = moto.filesystem()
    body = yaml.safe_load((split / "federation.yaml").read_text())
    for silo in body["silos"]:
        for side in ("train", "test"):
            url = f"s3://{bucket}/{silo[side]}"
            if silo[side] != "silo-1/train.parquet":
                fs.put(str(split / silo[side]), url)
            silo[side] = url
        silo["storage_options"] = {"client_kwargs": {"endpoint_url": moto.endpoint}}
    spec = tmp_path / "s3.yaml"
    spec.write_text(yaml.safe_dump(body))
    return spec


def test_urls_the_coordinator_can_open_are_checked(
    split: Path, tmp_path: Path, moto: MotoS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    import s3fs

    spec = _s3_spec(split, tmp_path, moto, moto.make_bucket("preflight-a"))
    for name, value in moto.env().items():
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()

    with pytest.raises(SiloDataError) as raised:
        preflight(load_spec(spec), spec)

    assert raised.value.silo == "silo-1"
    assert "no such file: s3://preflight-a/silo-1/train.parquet" in raised.value.reason


def test_urls_the_coordinator_cannot_open_are_left_to_the_silo(
    split: Path, tmp_path: Path, moto: MotoS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    import s3fs

    spec = _s3_spec(split, tmp_path, moto, moto.make_bucket("preflight-b"))
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name in ("AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE"):
        monkeypatch.setenv(name, str(tmp_path / "none"))  # no credentials here
    s3fs.S3FileSystem.clear_instance_cache()

    checked = preflight(load_spec(spec), spec)

    assert checked.silos == ()
    assert set(checked.skipped) == {"silo-0", "silo-1", "silo-2"}
    assert all("cannot be opened from here" in why for why in checked.skipped.values())
