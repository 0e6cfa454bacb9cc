"""``fedsilo compare``: every variant on the same silos, a table, an HTML report.

Integration tests run one comparison on breast cancer (4 silos, 3 rounds) on
the session's shared cluster and check the stored table, the runs behind it
and the report made from it; the report is opened in headless Chromium, and
its screenshot is kept in ``test-artifacts/`` (or ``$FEDSILO_TEST_ARTIFACTS``).
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pytest

from fedsilo.cli import EXIT_USER_ERROR, main
from fedsilo.errors import CheckpointError, FedsiloError
from fedsilo.spec import FederationSpec, load_spec
from tasks.reports import comparison
from tasks.reports.compare_report import embedded_data, render_html, report_data
from tasks.reports.pooled import pooled_refusal, pooled_silo_name, read_silos
from tasks.store.checkpoints import CheckpointStore, list_runs

ROUNDS = 3
ARTIFACTS = Path(
    os.environ.get(
        "FEDSILO_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "test-artifacts"
    )
)


def make_spec(data_dir: Path, store: Path, **changes: Any) -> FederationSpec:
    spec = load_spec(data_dir / "federation.yaml")
    data = {**spec.model_dump(), "checkpoints": str(store), **changes}
    return FederationSpec.model_validate(data)


# -- pure parts ------------------------------------------------------------------


def test_rounds_to_reach_is_the_first_round_within_five_percent() -> None:
    curve = [(3, 0.95), (1, 0.5), (2, 0.94), (4, 0.99)]

    assert comparison.rounds_to_reach(curve, comparison.reach_target(1.0)) == 3.0
    assert comparison.rounds_to_reach(curve, comparison.reach_target(0.98)) == 2.0
    assert math.isnan(comparison.rounds_to_reach(curve, 1.5))
    assert comparison.reach_target(-0.2) == pytest.approx(-0.21)
    assert comparison.rounds_to_reach([(1, float("nan")), (2, 0.3)], 0.1) == 2.0


@pytest.mark.parametrize("task", ["regression", "classification"])
def test_local_only_global_rows_equal_the_pooled_metrics(task: str) -> None:
    from sklearn.metrics import accuracy_score, log_loss, mean_absolute_error, r2_score

    from flows.compare import local_overall
    from tasks.metrics import classification_scores, regression_scores
    from tasks.protocol.messages import Evaluation

    rng = np.random.default_rng(0)
    # Silos whose label means differ: a row-weighted mean of their R² is not
    # the R² over all their rows.
    ys, predictions, evaluations = [], [], []
    for i, n in enumerate((5, 17, 40)):
        if task == "regression":
            y = rng.normal(loc=3.0 * i, size=n)
            p = y + rng.normal(scale=0.5 + i, size=n)
            metrics, sums = regression_scores(y, p)
        else:
            y = (rng.random(n) < 0.2 + 0.3 * i).astype(int)
            p = np.clip(0.6 * y + 0.2 + rng.normal(scale=0.2, size=n), 0.01, 0.99)
            metrics, sums = classification_scores(
                y, np.column_stack([1 - p, p]), np.array([0, 1])
            )
        ys.append(y)
        predictions.append(p)
        evaluations.append(
            Evaluation(f"silo-{i}", 1, f"silo-{i}", "test", n, metrics, sums)
        )

    rows = local_overall(evaluations, "local-*", task)

    got = dict(zip(rows["metric"], rows["value"], strict=True))
    assert set(rows["silo"]) == {"global"} and set(rows["n_samples"]) == {62}
    y, p = np.concatenate(ys), np.concatenate(predictions)
    if task == "regression":
        assert got["r2"] == pytest.approx(r2_score(y, p), rel=1e-12)
        assert got["rmse"] == pytest.approx(np.sqrt(np.mean((y - p) ** 2)))
        assert got["mae"] == pytest.approx(mean_absolute_error(y, p))
        weighted = sum(e.metrics["r2"] * e.n_samples for e in evaluations) / 62
        assert abs(weighted - r2_score(y, p)) > 0.01  # what was reported before
    else:
        assert got["accuracy"] == pytest.approx(accuracy_score(y, p > 0.5))
        assert got["log_loss"] == pytest.approx(log_loss(y, p))


def test_comparison_table_names_a_missing_column() -> None:
    with pytest.raises(CheckpointError, match="'variant'"):
        comparison.comparison_table(pd.DataFrame({"silo": ["a"]}))


def test_centralized_is_refused_for_a_silo_configured_at_its_worker(
    breast_cancer_dir: Path, tmp_path: Path
) -> None:
    spec = make_spec(breast_cancer_dir, tmp_path)
    silos = [s.model_dump() for s in spec.silos]
    silos[2] = {"name": silos[2]["name"]}  # its worker holds its data config
    hidden = make_spec(breast_cancer_dir, tmp_path, silos=silos)

    assert pooled_refusal(spec) is None
    reason = pooled_refusal(hidden)
    assert reason is not None and "'silo-2'" in reason
    with pytest.raises(FedsiloError, match="'silo-2'"):
        read_silos(hidden)


def test_pooled_silo_name_avoids_the_silos_names(
    breast_cancer_dir: Path, tmp_path: Path
) -> None:
    spec = make_spec(breast_cancer_dir, tmp_path)
    silos = [
        {**s.model_dump(), "name": n}
        for s, n in zip(spec.silos, ["pooled", "pooled-1", "c", "d"], strict=True)
    ]

    assert pooled_silo_name(make_spec(breast_cancer_dir, tmp_path, silos=silos)) == (
        "pooled-2"
    )


def test_cli_refuses_zero_personalization_epochs(
    breast_cancer_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "compare",
            str(breast_cancer_dir / "federation.yaml"),
            "--personalize-epochs",
            "0",
        ]
    )

    assert code == EXIT_USER_ERROR
    assert "--personalize-epochs" in capsys.readouterr().err


# -- one real comparison -----------------------------------------------------------


@pytest.fixture(scope="module")
def compared(
    breast_cancer_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
    shared_cluster: str,
    prefect_api: None,
) -> dict[str, Any]:
    from flows.compare import federated_comparison

    store = tmp_path_factory.mktemp("compare") / "store"
    spec = make_spec(
        breast_cancer_dir, store, rounds=ROUNDS, cluster={"address": shared_cluster}
    )
    result = federated_comparison(spec, personalize_epochs=2, command="pytest")
    return {"spec": spec, "store": store, **result}


def _stored(compared: dict[str, Any]) -> pd.DataFrame:
    path = Path(compared["comparison"])
    return duckdb.sql(f"SELECT * FROM read_parquet('{path}')").df()


@pytest.mark.integration
def test_every_variant_has_rows_for_every_silo(compared: dict[str, Any]) -> None:
    frame = _stored(compared)
    silos = [s.name for s in compared["spec"].silos]

    assert comparison.present_variants(frame) == list(comparison.VARIANTS)
    final = comparison.final_rows(frame)
    for variant in comparison.VARIANTS:
        rows = final[
            (final["variant"] == variant)
            & (final["split"] == "test")
            & (final["metric"] == "accuracy")
        ]
        assert sorted(rows["silo"]) == sorted([*silos, "global"]), variant
        assert set(rows["round"]) == {ROUNDS}
        assert rows["value"].between(0.0, 1.0).all()
    curves = frame[(frame["variant"] == "local") & (frame["round"] > 0)]
    assert sorted(set(curves["round"])) == list(range(1, ROUNDS + 1))
    assert compared["skipped"] == {}


@pytest.mark.integration
def test_variant_runs_are_in_the_store_under_the_normal_layout(
    compared: dict[str, Any],
) -> None:
    from flows.compare import variant_federation

    spec, store = compared["spec"], compared["store"]
    runs = compared["runs"]
    ids = [runs["federated"], runs["centralized"]] + [
        runs["local"].replace("*", s.name) for s in spec.silos
    ]

    aside = variant_federation(spec.name)
    for federation, run_id in zip(
        [spec.name, *[aside] * (len(ids) - 1)], ids, strict=True
    ):
        rounds = CheckpointStore(str(store), federation, run_id).complete_rounds()
        assert rounds == list(range(1, ROUNDS + 1)), run_id
    # The spec's own federation holds its federated run only (what --resume takes).
    assert list_runs(str(store), spec.name) == [runs["federated"]]
    report = Path(compared["report"])
    assert report.parent == Path(compared["comparison"]).parent
    assert report.parent.name == f"compare={compared['compare_id']}"


@pytest.mark.integration
def test_federated_numbers_are_the_runs_checkpointed_numbers(
    compared: dict[str, Any],
) -> None:
    spec, store = compared["spec"], compared["store"]
    frame = _stored(compared)
    run = compared["runs"]["federated"]
    checkpointed = duckdb.sql(
        f"""
        SELECT silo, metric, sum(value) AS total
        FROM read_parquet('{store}/federation={spec.name}/run={run}/**/metrics.parquet',
                          hive_partitioning = true)
        WHERE metric IN ('bytes_up', 'bytes_down')
        GROUP BY silo, metric
        """
    ).df()
    final_global = duckdb.sql(
        f"""
        SELECT value FROM read_parquet(
            '{store}/federation={spec.name}/run={run}/round=00003/metrics.parquet')
        WHERE silo = 'global' AND split = 'test' AND metric = 'accuracy'
        """
    ).df()["value"]

    totals = frame[(frame["round"] == 0) & (frame["variant"] == "federated")]
    for silo, metric, total in checkpointed.itertuples(index=False):
        mine = totals[(totals["silo"] == silo) & (totals["metric"] == metric)]
        assert mine["value"].item() == total > 0
    final = comparison.final_rows(frame)
    fed = final[
        (final["variant"] == "federated")
        & (final["silo"] == "global")
        & (final["split"] == "test")
        & (final["metric"] == "accuracy")
    ]
    assert fed["value"].item() == final_global.item()


@pytest.mark.integration
def test_traffic_of_each_variant(compared: dict[str, Any]) -> None:
    frame = _stored(compared)
    totals = frame[(frame["round"] == 0) & (frame["silo"] != "global")]

    def per_silo(variant: str, metric: str) -> pd.Series:
        rows = totals[(totals["variant"] == variant) & (totals["metric"] == metric)]
        return rows.set_index("silo")["value"].sort_index()

    raw = per_silo("federated", "raw_bytes")
    n_features = 30
    train_rows = raw / ((n_features + 1) * comparison.VALUE_BYTES)
    assert (train_rows == train_rows.round()).all() and (train_rows > 50).all()
    assert (per_silo("local", "bytes_up") == 0).all()
    assert (per_silo("centralized", "bytes_up") == raw).all()
    assert (per_silo("centralized", "bytes_down") == 0).all()
    # Linear models: fine-tuning happens at the silo and sends nothing more.
    assert (
        per_silo("personalized", "bytes_up") == per_silo("federated", "bytes_up")
    ).all()
    assert (per_silo("federated", "bytes_up") < raw).all()


@pytest.mark.integration
def test_report_numbers_are_the_stored_numbers(compared: dict[str, Any]) -> None:
    frame = _stored(compared)
    page = Path(compared["report"]).read_text()
    data = embedded_data(page)

    for variant in comparison.VARIANTS:
        for silo in [*data["silos"], "global"]:
            want = duckdb.sql(
                f"""
                SELECT value FROM frame
                WHERE variant = '{variant}' AND silo = '{silo}' AND split = 'test'
                  AND metric = 'accuracy'
                  AND round = (SELECT max(round) FROM frame
                               WHERE variant = '{variant}')
                """
            ).df()["value"]
            assert data["finals"][variant][silo]["accuracy"] == want.item()
            for metric in ("bytes_up", "bytes_down", "raw_bytes"):
                stored = duckdb.sql(
                    f"""
                    SELECT value FROM frame WHERE round = 0 AND variant = '{variant}'
                      AND silo = '{silo}' AND metric = '{metric}'
                    """
                ).df()["value"]
                assert data["totals"][variant][silo][metric] == stored.item()
        curve = frame[
            (frame["variant"] == variant)
            & (frame["silo"] == "global")
            & (frame["split"] == "test")
            & (frame["metric"] == "accuracy")
            & (frame["round"] > 0)
        ].sort_values("round")
        assert data["curves"][variant]["global"] == [
            [int(r), v] for r, v in zip(curve["round"], curve["value"], strict=True)
        ]
    fed_final = data["finals"]["federated"]["global"]["accuracy"]
    assert f"{fed_final:.4f}" in page
    assert data["totals"]["federated"]["global"]["rounds_to_95pct"] in range(
        1, ROUNDS + 1
    )


@pytest.mark.integration
def test_report_renders_from_the_store_alone(compared: dict[str, Any]) -> None:
    frame, notes = comparison.read_comparison(str(Path(compared["comparison"]).parent))

    assert render_html(frame, notes) == Path(compared["report"]).read_text()
    assert notes["command"] == "pytest"
    assert report_data(frame, notes)["silos"] == [
        s.name for s in compared["spec"].silos
    ]
    assert "http://" not in Path(compared["report"]).read_text().replace(
        "http://www.w3.org/2000/svg", ""
    )


@pytest.mark.integration
def test_report_renders_its_charts_in_headless_chromium(
    compared: dict[str, Any], tmp_path: Path
) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (.ci/run installs Debian's chromium)")
    url = Path(compared["report"]).resolve().as_uri()
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu"]
    flags += [f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars"]

    dom = subprocess.run(
        [*flags, "--enable-logging=stderr", "--v=0", "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    png = tmp_path / "report.png"
    subprocess.run(
        [*flags, "--window-size=1100,2600", f"--screenshot={png}", url],
        capture_output=True,
        timeout=120,
        check=True,
    )

    n_silos = len(compared["spec"].silos)
    assert 'data-charts="' + str(n_silos + 3) + '"' in dom.stdout
    assert "(rendered)</title>" in dom.stdout
    assert "data-error" not in dom.stdout.split("<body", 1)[0].split("<script", 1)[0]
    assert dom.stdout.count("<svg") == n_silos + 3
    assert dom.stdout.count('class="curve"') >= 3 * (n_silos + 1)
    assert "Uncaught" not in dom.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(png, ARTIFACTS / "compare-report.png")


@pytest.mark.integration
@pytest.mark.usefixtures("prefect_api")
def test_centralized_is_refused_when_rows_cannot_be_read_here_and_the_rest_runs(
    breast_cancer_dir: Path, tmp_path: Path, shared_cluster: str
) -> None:
    """A silo whose rows only its worker can read: no pooling, clear reason."""
    from distributed import Client

    from fedsilo.cluster import silo_workers
    from flows.compare import federated_comparison
    from tests._probe import probe

    spec = make_spec(breast_cancer_dir, tmp_path / "store")
    rows = (breast_cancer_dir / "silo-1" / "train.parquet").read_bytes()
    url = f"memory://fedsilo-compare-test/{tmp_path.name}/train.parquet"

    silos = [spec.silos[0].model_dump(), {**spec.silos[1].model_dump(), "train": url}]
    two = make_spec(
        breast_cancer_dir,
        tmp_path / "store",
        rounds=1,
        silos=silos,
        strategy={"min_silos": 2},
        cluster={"address": shared_cluster},
    )
    with Client(shared_cluster) as client:
        address = silo_workers(client)["silo-1"]
        # In silo-1's worker process only, through the tests' probe.
        probe(address, "memory-file", url, rows, security=client.security)
        try:
            result = federated_comparison(two)
        finally:
            probe(address, "memory-file", url, None, security=client.security)

    assert "'silo-1'" in result["skipped"]["centralized"]
    assert url in result["skipped"]["centralized"]
    frame, notes = comparison.read_comparison(result["directory"])
    assert comparison.present_variants(frame) == ["federated", "personalized", "local"]
    assert notes["skipped"] == result["skipped"]
    page = Path(result["report"]).read_text()
    assert "centralized not run: silo &#x27;silo-1&#x27;" in page


@pytest.mark.integration
def test_prefect_artifact_summarises_the_stored_comparison(
    compared: dict[str, Any],
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.reporting import artifact_key

    key = artifact_key(compared["spec"].name, "comparison")
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
        )
    mine = [a for a in found if compared["report"] in str(a.data)]
    assert len(mine) == 1 and mine[0].type == "markdown"
    frame, _ = comparison.read_comparison(str(Path(compared["comparison"]).parent))
    final = comparison.final_rows(frame)
    local = final[
        (final["variant"] == "local")
        & (final["silo"] == "global")
        & (final["split"] == "test")
        & (final["metric"] == "accuracy")
    ]
    assert f"{local['value'].item():.4f}" in str(mine[0].data)
    assert "Rounds to reach 95%" in str(mine[0].data)


@pytest.mark.integration
@pytest.mark.usefixtures("prefect_api")
def test_a_one_class_silo_trains_alone_with_the_federations_classes(
    breast_cancer_dir: Path, tmp_path: Path, shared_cluster: str
) -> None:
    from fedsilo.errors import SiloDataError
    from flows.training import federated_training

    spec = make_spec(breast_cancer_dir, tmp_path / "store")
    for split in ("train", "test"):
        frame = pd.read_parquet(breast_cancer_dir / "silo-0" / f"{split}.parquet")
        frame[frame["label"] == 0].to_parquet(tmp_path / f"{split}.parquet")
    alone = make_spec(
        breast_cancer_dir,
        tmp_path / "store",
        rounds=1,
        silos=[
            {
                "name": "silo-0",
                "train": str(tmp_path / "train.parquet"),
                "test": str(tmp_path / "test.parquet"),
            }
        ],
        strategy={"min_silos": 1},
        cluster={"address": shared_cluster},
    )

    with pytest.raises(SiloDataError, match="only the label"):
        federated_training(alone)
    summary = federated_training(alone, known_classes=(0, 1))

    assert summary["classes"] == [0, 1]
    assert spec.name == alone.name
    metrics = CheckpointStore(
        str(tmp_path / "store"), alone.name, summary["run_id"]
    ).read_metrics(1)
    test = metrics[(metrics["silo"] == "silo-0") & (metrics["split"] == "test")]
    assert set(test["metric"]) >= {"accuracy", "log_loss"}


@pytest.mark.integration
@pytest.mark.usefixtures("prefect_api")
def test_cli_prints_the_table_and_where_the_report_is(
    breast_cancer_dir: Path,
    tmp_path: Path,
    shared_cluster: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import yaml

    monkeypatch.setenv("FEDSILO_STATE_DIR", str(tmp_path / "state"))
    spec = load_spec(breast_cancer_dir / "federation.yaml")
    data = spec.model_dump(mode="json", exclude_none=True)
    data["silos"] = data["silos"][:2]
    data["strategy"]["min_silos"] = 2
    data["cluster"] = {"address": shared_cluster}
    path = tmp_path / "federation.yaml"
    path.write_text(yaml.safe_dump(data))

    code = main(
        [
            "compare",
            str(path),
            "--rounds",
            "2",
            "--checkpoints",
            str(tmp_path / "store"),
            "--no-centralized",
        ]
    )

    out = capsys.readouterr().out
    assert code == 0
    lines = out.splitlines()
    assert any(line.split()[:1] == ["silo-1"] for line in lines)
    assert "centralized: not run: turned off (--no-centralized)" in out
    report = next(line for line in lines if line.startswith("report "))
    page = Path(report.split(" ", 1)[1]).read_text()
    assert "fedsilo compare " in page and "--no-centralized" in page


@pytest.mark.integration
@pytest.mark.usefixtures("prefect_api")
def test_tree_models_personalize_with_extra_trees_grown_at_each_silo(
    breast_cancer_dir: Path, tmp_path: Path, shared_cluster: str
) -> None:
    from flows.compare import federated_comparison

    spec = make_spec(breast_cancer_dir, tmp_path / "store")
    trees = make_spec(
        breast_cancer_dir,
        tmp_path / "store",
        name="bc-trees",
        rounds=2,
        silos=[s.model_dump() for s in spec.silos[:2]],
        strategy={"min_silos": 2},
        model={
            "kind": "xgboost",
            "params": {"objective": "binary:logistic", "max_depth": 2, "max_bin": 16},
        },
        cluster={"address": shared_cluster},
    )

    result = federated_comparison(trees, personalize_epochs=2)

    frame, notes = comparison.read_comparison(result["directory"])
    assert comparison.present_variants(frame) == list(comparison.VARIANTS)
    assert notes["personalize"] == {"epochs": 2, "unit": "trees"}
    final = comparison.final_rows(frame)
    test = final[(final["split"] == "test") & (final["metric"] == "accuracy")]
    for variant in comparison.VARIANTS:
        chosen = test[test["variant"] == variant]
        assert sorted(chosen["silo"]) == ["global", "silo-0", "silo-1"], variant
    totals = frame[(frame["round"] == 0) & (frame["metric"] == "bytes_up")]
    up = totals.set_index(["variant", "silo"])["value"]
    for silo in ("silo-0", "silo-1"):
        # The extra trees' histograms travel like those of federated rounds.
        assert up["personalized", silo] > up["federated", silo] > 0
    assert (frame[frame["variant"] == "centralized"]["run"] != "").all()
