"""Many logical silos on a few pool workers (cluster.workers)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from fedsilo.cluster import assign_silos
from fedsilo.errors import SiloFailedError, SpecError
from fedsilo.spec import parse_spec
from tasks import run_state
from tasks.store.checkpoints import CheckpointStore
from tests._probe import probe
from tests._stall import stall_silo

ROOT = Path(__file__).resolve().parent.parent
FEATURES = ["x0", "x1", "x2"]


def write_silos(root: Path, n: int, bad: str | None = None) -> list[dict[str, str]]:
    """Write ``n`` small silos; the ``bad`` one's rows overflow any fit."""
    rng = np.random.default_rng(0)
    silos = []
    for i in range(n):
        name = f"silo-{i:02d}"
        X = rng.normal(size=(30, len(FEATURES)))
        frame = pd.DataFrame(X, columns=FEATURES)
        frame["label"] = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(int)
        if name == bad:
            frame["x1"] = 1e308  # finite, so it passes the silo's checks; overflows
        path = root / f"{name}.parquet"
        frame.to_parquet(path, index=False)
        silos.append({"name": name, "train": str(path)})
    return silos


def make_spec(tmp_path: Path, silos: list[dict[str, str]], **changes: Any) -> Any:
    data: dict[str, Any] = {
        "name": "many-silos",
        "task": "classification",
        "target": "label",
        "rounds": 2,
        "model": {"kind": "sgd-logistic"},
        "preprocessing": {"scale": "none"},
        "silos": silos,
        "cluster": {"workers": 2},
        "checkpoints": str(tmp_path / "store"),
    }
    data.update(changes)
    return parse_spec(data)


# --- the assignment rule and the spec -------------------------------------------


def test_silos_go_to_pool_workers_in_contiguous_blocks() -> None:
    silos = [f"s{i}" for i in range(7)]

    hosts = assign_silos(silos, 3)

    assert list(hosts.values()) == ["pool-0"] * 3 + ["pool-1"] * 2 + ["pool-2"] * 2
    assert assign_silos(silos, 3) == hosts
    assert assign_silos(silos[:2], 5) == {"s0": "pool-0", "s1": "pool-1"}


@pytest.mark.parametrize("silos", [1, 5, 40, 1000])
@pytest.mark.parametrize("workers", [1, 2, 3, 7])
def test_blocks_differ_by_at_most_one_silo(silos: int, workers: int) -> None:
    hosts = assign_silos([f"s{i}" for i in range(silos)], workers)

    sizes = pd.Series(list(hosts.values())).value_counts()
    assert len(sizes) == min(silos, workers)
    assert sizes.max() - sizes.min() <= 1


def test_spec_refuses_workers_with_an_address(tmp_path: Path) -> None:
    silos = [{"name": "a", "train": "a.parquet"}, {"name": "b", "train": "b.parquet"}]

    with pytest.raises(SpecError, match=r"cluster: workers=2 applies to an embedded"):
        make_spec(tmp_path, silos, cluster={"workers": 2, "address": "tcp://h:1"})
    with pytest.raises(SpecError, match=r"cluster\.workers: .*greater than or equal"):
        make_spec(tmp_path, silos, cluster={"workers": 0})
    boosted = make_spec(tmp_path, silos, task="regression", model={"kind": "xgboost"})
    assert boosted.cluster.workers == 2  # boosting runs on pool workers too
    assert make_spec(tmp_path, silos).cluster.workers == 2
    assert make_spec(tmp_path, silos, cluster={}).cluster.workers is None


# --- running on pool workers --------------------------------------------------


def _resident_silos(address: str, run: str, security: Any) -> list[str]:
    """The silos whose prepared rows the runtime at ``address`` holds for ``run``."""
    held = probe(address, "holdings", run, security=security)
    return sorted(silo for silo, slot in held if slot == "prepared")


@pytest.mark.integration
@pytest.mark.usefixtures("prefect_api")
def test_many_silos_on_two_workers_train_where_their_rows_are(tmp_path: Path) -> None:
    from flows.training import federated_training

    silos = write_silos(tmp_path, 40)
    spec = make_spec(
        tmp_path,
        silos,
        rounds=3,
        strategy={"fraction": 0.25, "min_silos": 5},
    )
    hosts = assign_silos([s["name"] for s in silos], 2)
    seen: list[Any] = []
    resident: dict[str, list[str]] = {}

    def listener(result: Any, state: run_state.Run) -> None:
        seen.append(result)
        if result.round == 1:
            client = state.cluster.client
            workers = client.scheduler_info(n_workers=-1)["workers"]
            resident.update(
                {
                    w["name"]: _resident_silos(a, state.run_id, client.security)
                    for a, w in workers.items()
                }
            )

    with run_state.listening(listener):
        summary = federated_training(spec)

    assert summary["rounds"] == [1, 2, 3]
    assert resident == {
        w: sorted(s for s, h in hosts.items() if h == w) for w in ("pool-0", "pool-1")
    }
    store = CheckpointStore(spec.checkpoints, spec.name, summary["run_id"])
    for result in seen:
        assert len(result.selected) == 10
        assert result.fit_workers == {s: hosts[s] for s in result.selected}
        assert result.eval_workers == hosts
        rows = store.read_metrics(result.round)
        chosen = rows[rows.metric == "selected"]
        assert tuple(chosen.silo) == result.selected
        assert set(rows[rows.metric == "fit_seconds"].silo) == set(result.selected)
    assert len({r.selected for r in seen}) > 1  # a new sample every round


@pytest.mark.integration
@pytest.mark.usefixtures("prefect_api")
def test_a_bad_silo_fails_alone_on_a_shared_worker(tmp_path: Path) -> None:
    from flows.training import federated_training

    silos = write_silos(tmp_path, 12, bad="silo-04")
    spec = make_spec(tmp_path, silos, strategy={"min_silos": 11})
    seen: list[Any] = []

    def listener(result: Any, state: run_state.Run) -> None:
        seen.append(result)

    with run_state.listening(listener):
        summary = federated_training(spec)

    neighbours = [f"silo-{i:02d}" for i in range(6) if i != 4]  # also on pool-0
    for result in seen:
        assert result.absent == {"silo-04": "failed"}
        assert len(result.silos) == 11 and set(neighbours) <= set(result.silos)
        assert {result.fit_workers[s] for s in neighbours} == {"pool-0"}
    rows = CheckpointStore(spec.checkpoints, spec.name, summary["run_id"]).read_metrics(
        2
    )
    assert rows[rows.metric == "failed"].silo.tolist() == ["silo-04"]

    strict = make_spec(tmp_path, silos, strategy={"min_silos": 12})
    with pytest.raises(
        SiloFailedError,
        match=r"silo 'silo-04': ValueError: .*overflow.*min_silos is 12",
    ):
        federated_training(strict, run_id="strict")


@pytest.mark.integration
@pytest.mark.usefixtures("prefect_api")
def test_a_late_pool_worker_makes_all_its_silos_late(tmp_path: Path) -> None:
    from flows.training import federated_training

    silos = write_silos(tmp_path, 6)
    spec = make_spec(tmp_path, silos, strategy={"min_silos": 3, "deadline": 2.0})
    seen: list[Any] = []

    def listener(result: Any, state: run_state.Run) -> None:
        seen.append(result)
        if result.round == 1:  # keep pool-1's only thread busy past the deadline
            address = state.cluster.workers["silo-05"]
            client = state.cluster.client
            stall_silo(client, address, 6.0)

    with run_state.listening(listener):
        federated_training(spec)

    assert seen[0].absent == {}
    assert seen[1].absent == dict.fromkeys(["silo-03", "silo-04", "silo-05"], "late")
    assert seen[1].silos == ("silo-00", "silo-01", "silo-02")


@pytest.mark.integration
@pytest.mark.usefixtures("prefect_api")
def test_secure_aggregation_on_pool_workers_gives_fedavg(tmp_path: Path) -> None:
    from flows.training import federated_training

    silos = write_silos(tmp_path, 6)
    plain = make_spec(tmp_path, silos, strategy={"fraction": 0.5, "min_silos": 2})
    secure = make_spec(
        tmp_path,
        silos,
        strategy={"fraction": 0.5, "min_silos": 2},
        privacy={"secure_aggregation": True},
    )

    federated_training(plain, run_id="plain")
    federated_training(secure, run_id="secure")

    final = {
        run: CheckpointStore(spec.checkpoints, spec.name, run).read_params(2)
        for run, spec in (("plain", plain), ("secure", secure))
    }
    for name in ("coef_", "intercept_"):
        np.testing.assert_allclose(
            final["secure"][name], final["plain"][name], atol=1e-5
        )


# --- the fork server the embedded workers come from ---------------------------


@pytest.mark.integration
def test_workers_use_the_coordinators_fedsilo_not_one_in_the_cwd(
    tmp_path: Path,
) -> None:
    decoy = tmp_path / "cwd" / "fedsilo"
    decoy.mkdir(parents=True)
    (decoy / "__init__.py").write_text("DECOY = True\n")
    script = tmp_path / "bin" / "probe.py"
    script.parent.mkdir()
    script.write_text(
        textwrap.dedent(
            """
            import sys

            import dask
            import fedsilo
            from fedsilo.cluster import silo_cluster

            if __name__ == "__main__":
                sys.path.append(sys.argv[1])  # last: the probe's tests package
                dask.config.set({"distributed.worker.preload": ["tests._probe"]})
                from tests._probe import probe

                with silo_cluster(["a", "b", "c"], None, 120.0, n_workers=2) as c:
                    seen = {
                        probe(a, "module-file", "fedsilo")
                        for a in set(c.workers.values())
                    }
                    print("COORDINATOR", fedsilo.__file__)
                    print("WORKERS", *sorted(seen))
            """
        )
    )

    out = subprocess.run(
        [sys.executable, str(script), str(ROOT)],
        cwd=tmp_path / "cwd",
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout

    lines = dict(line.split(" ", 1) for line in out.splitlines() if " " in line)
    assert "cwd" not in lines["COORDINATOR"]
    assert lines["WORKERS"] == lines["COORDINATOR"]
