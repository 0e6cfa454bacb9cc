"""``fedsilo compare``: should we federate? Every variant on the same silos.

One Prefect flow starts (or attaches to) one Dask cluster and runs, attached to
it, each variant as a run of the existing training flows:

- ``federated``: the spec as written;
- ``personalized``: the federated model of the last round fine-tuned at each
  silo (``local.epochs``-style extra epochs, or extra trees for ``xgboost``)
  and scored there; the fine-tuned models never leave their silos;
- ``local``: each silo alone (a federation of that one silo);
- ``centralized``: one pseudo-silo holding the pooled rows, an upper bound a
  real deployment cannot run; only when every silo's files are readable here.

Every variant is scored on each silo's own test rows. The federated run goes
under the spec's federation, the one-silo and pooled runs under
``<name>.compare``. The table goes to
``<store>/federation=<name>/compare=<id>/comparison.parquet``; the HTML report
beside it and the Prefect markdown artifact are made from that file as read
back (``tasks/reports/comparison.py``, ``tasks/reports/compare_report.py``).
See docs/compare.md.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
from distributed import Worker
from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact

from fedsilo.cluster import SiloCluster, spec_cluster
from fedsilo.errors import FedsiloError
from fedsilo.spec import FederationSpec, PrivacySpec, SiloSpec, StrategySpec
from flows.reporting import artifact_key
from flows.training import federated_training
from tasks import run_state
from tasks.metrics import global_metrics
from tasks.prefect_decorators import unstored_flow
from tasks.protocol.messages import Evaluation
from tasks.reports import comparison
from tasks.reports.compare_report import markdown_summary, render_html
from tasks.reports.pooled import (
    pooled_silo_name,
    read_silos,
    score_linear,
    score_trees,
    write_pooled,
)
from tasks.silo.data import FitConfig, SiloData
from tasks.silo.runtime import SiloRuntime
from tasks.store.checkpoints import CheckpointStore, new_run_id

_MAX_NAME = 63
_SUFFIX = ".compare"


@dataclasses.dataclass(slots=True)
class Personalizer:
    """A round listener that fine-tunes the final federated model at each silo.

    It runs inside the federated run, after its last round, while the silos
    still hold their prepared rows (or tree state) for that run.
    """

    run_id: str
    epochs: int
    evaluations: list[Evaluation] = dataclasses.field(default_factory=list)
    traffic: dict[str, tuple[int, int]] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0
    round: int | None = None

    def __call__(self, result: run_state.RoundResult, run: run_state.Run) -> None:
        """Fine-tune after the run's last round; ignore other runs and rounds."""
        if run.run_id != self.run_id or result.round != run.spec.rounds:
            return
        started = time.perf_counter()
        tuned = run.family.personalize(self.epochs, result.round)
        self.evaluations.extend(tuned.evaluations)
        self.traffic.update(tuned.traffic)
        self.round = result.round
        self.seconds = time.perf_counter() - started


def _run_id(compare_id: str, variant: str, silo: str | None = None, i: int = 0) -> str:
    base = f"{compare_id}-{variant}"
    if silo is None:
        return base
    named = f"{base}-{silo}"
    return named if len(named) <= _MAX_NAME else f"{base}-{i}"


def _store(spec: FederationSpec, run_id: str) -> CheckpointStore:
    return CheckpointStore.of_run(spec, run_id)


def _run_rows(spec: FederationSpec, run_id: str, variant: str) -> pd.DataFrame:
    """Return every complete round's metrics of a run, tagged with the variant."""
    store = _store(spec, run_id)
    kept = {*comparison.metric_names(spec.task), *comparison.TRAFFIC}
    frames = []
    for round_number in store.complete_rounds():
        frame = store.read_metrics(round_number)
        frame = frame[frame["metric"].isin(kept)].copy()
        frame["round"] = round_number
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=comparison.COMPARISON_SCHEMA.names)
    out = pd.concat(frames, ignore_index=True)
    out["variant"], out["run"] = variant, run_id
    return out[list(comparison.COMPARISON_SCHEMA.names)]


def _evaluation_rows(
    variant: str, run_id: str, evaluations: list[Evaluation], task: str
) -> pd.DataFrame:
    """Return per-silo rows of evaluations and exact global rows per round/split."""
    rows: list[dict[str, Any]] = []
    base = {"variant": variant, "run": run_id}
    for e in evaluations:
        for metric, value in e.metrics.items():
            rows.append(
                {
                    **base,
                    "round": e.round,
                    "silo": e.silo,
                    "split": e.split,
                    "metric": metric,
                    "value": value,
                    "n_samples": e.n_samples,
                }
            )
    groups: dict[tuple[int, str], list[Evaluation]] = {}
    for e in evaluations:
        groups.setdefault((e.round, e.split), []).append(e)
    for (round_number, split), group in sorted(groups.items()):
        n = sum(e.n_samples for e in group)
        for metric, value in global_metrics(group, task).items():
            rows.append(
                {
                    **base,
                    "round": round_number,
                    "silo": "global",
                    "split": split,
                    "metric": metric,
                    "value": value,
                    "n_samples": n,
                }
            )
    return pd.DataFrame(rows, columns=comparison.COMPARISON_SCHEMA.names)


@dataclasses.dataclass(slots=True)
class RoundScores:
    """A round listener keeping the silos' evaluations of the chosen runs."""

    run_ids: set[str]
    evaluations: list[Evaluation] = dataclasses.field(default_factory=list)

    def __call__(self, result: run_state.RoundResult, run: run_state.Run) -> None:
        """Keep the round's evaluations if the run is one of ours."""
        if run.run_id in self.run_ids:
            self.evaluations.extend(run.last_evaluations)


def local_overall(evaluations: list[Evaluation], runs: str, task: str) -> pd.DataFrame:
    """Return the local-only variant's global rows, exact as a federated round's.

    Each silo's own model scores its own rows; the silos' sums (not their
    metrics) combine, so R2 uses the pooled label variance.
    """
    rows = _evaluation_rows("local", runs, evaluations, task)
    return rows[rows["silo"] == "global"].reset_index(drop=True)


def variant_federation(name: str) -> str:
    """Return the federation name under which a comparison's one-silo runs go.

    They are runs of other federations (one silo each), so they stay out of
    the spec's own federation, whose newest run ``fedsilo run --resume`` takes.
    """
    return f"{name[: _MAX_NAME - len(_SUFFIX)]}{_SUFFIX}"


def _variant_spec(spec: FederationSpec, silos: list[SiloSpec]) -> FederationSpec:
    """Return the spec for a one-silo variant: plain FedAvg, no privacy options."""
    return spec.model_copy(
        update={
            "name": variant_federation(spec.name),
            "silos": silos,
            "strategy": StrategySpec(),
            "privacy": PrivacySpec(),
        }
    )


def _pooled_worker(cluster: SiloCluster, name: str) -> Worker:
    """Start a worker for the pooled pseudo-silo in this process (simulation)."""
    loopback = any(h in cluster.address for h in ("127.0.0.1", "localhost"))

    async def start() -> Worker:
        return await Worker(
            cluster.address,
            name=name,
            nthreads=1,
            host="127.0.0.1" if loopback else None,
            security=cluster.client.security,
            plugins=(SiloRuntime(guard=False),),  # in this very process
        )

    worker = cluster.client.sync(start)
    assert isinstance(worker, Worker)
    return worker


def _centralized(
    spec: FederationSpec,
    cluster: SiloCluster,
    silos: dict[str, SiloData],
    run_id: str,
) -> pd.DataFrame:
    """Train on the pooled rows; score every round's model on each silo's rows."""
    name = pooled_silo_name(spec)
    with tempfile.TemporaryDirectory(prefix="fedsilo-pooled-") as tmp:
        train_path, test_path = write_pooled(silos, Path(tmp))
        pooled = SiloSpec(name=name, train=train_path, test=test_path)
        variant = _variant_spec(spec, [pooled])
        worker = _pooled_worker(cluster, name)
        try:
            summary = federated_training(variant, run_id=run_id, resume=False)
        finally:
            cluster.client.sync(worker.close)
    store = _store(variant, run_id)
    rounds = store.complete_rounds()
    if spec.model.kind == "xgboost":
        from tasks.gbdt.xgb_export import model_from_json

        models = {r: model_from_json(store.read_model_json(r) or "") for r in rounds}
        scored = score_trees(silos, spec.task, spec.target, models)
    else:
        stored = json.loads(store.read_metadata(rounds[-1])["fedsilo.model"])
        config = FitConfig(
            kind=spec.model.kind,
            model_params=dict(spec.model.params),
            task=spec.task,
            classes=tuple(summary["classes"]),
            n_features=len(summary["features"]),
            epochs=spec.local.epochs,
            batch_size=spec.local.batch_size,
            seed=spec.seed,
        )
        params = {r: store.read_params(r) for r in rounds}
        params = {
            r: {k: v for k, v in p.items() if not k.startswith("server/")}
            for r, p in params.items()
        }
        scored = score_linear(
            silos,
            config,
            summary["features"],
            spec.target,
            stored["scaler"],
            params,
            stored.get("encoding"),
        )
    return _evaluation_rows("centralized", run_id, scored, spec.task)


@unstored_flow("federated-comparison", "{spec.name}-compare")
def federated_comparison(
    spec: FederationSpec,
    compare_id: str | None = None,
    personalize_epochs: int = 1,
    centralized: bool = True,
    command: str | None = None,
) -> dict[str, Any]:
    """Train every variant on the same silos; store the table, write the report."""
    logger = get_run_logger()
    if personalize_epochs < 1:
        raise FedsiloError("personalize_epochs must be at least 1")
    compare_id = compare_id or new_run_id()
    names = [s.name for s in spec.silos]
    skipped: dict[str, str] = {}
    pooled: dict[str, SiloData] | None = None
    if not centralized:
        skipped["centralized"] = "turned off (--no-centralized)"
    else:
        try:
            pooled = read_silos(spec)
        except FedsiloError as error:
            skipped["centralized"] = error.reason
            logger.warning("centralized variant not run: %s", error.reason)
    runs: dict[str, str] = {}
    wall: dict[tuple[str, str], float] = {}
    frames: list[pd.DataFrame] = []
    personalizer = Personalizer(_run_id(compare_id, "federated"), personalize_epochs)
    with spec_cluster(spec) as cluster:
        address = spec.cluster.model_copy(update={"address": cluster.address})
        attached = spec.model_copy(update={"cluster": address})

        runs["federated"] = personalizer.run_id
        started = time.perf_counter()
        with run_state.listening(personalizer):
            summary = federated_training(attached, run_id=personalizer.run_id)
        wall["federated", "global"] = time.perf_counter() - started
        if not summary["rounds"]:
            why = summary.get("stopped") or "no round to train"
            raise FedsiloError(f"the federated run trained no round ({why})")
        frames.append(_run_rows(spec, personalizer.run_id, "federated"))
        if personalizer.evaluations:
            runs["personalized"] = personalizer.run_id
            wall["personalized", "global"] = personalizer.seconds
            frames.append(
                _evaluation_rows(
                    "personalized",
                    personalizer.run_id,
                    personalizer.evaluations,
                    spec.task,
                )
            )
        else:
            done = summary["rounds"][-1] if summary["rounds"] else 0
            skipped["personalized"] = (
                f"the federated run stopped after round {done}, before its last "
                f"round {spec.rounds}"
            )

        known = tuple(summary["classes"])
        linear = spec.model.kind != "xgboost"  # trees take classes from params
        local_frames = []
        scores = RoundScores(
            {_run_id(compare_id, "local", s.name, i) for i, s in enumerate(spec.silos)}
        )
        with run_state.listening(scores):
            for i, silo in enumerate(spec.silos):
                run_id = _run_id(compare_id, "local", silo.name, i)
                started = time.perf_counter()
                variant = _variant_spec(attached, [silo])
                # A silo may hold one class only (label skew): its model still
                # learns the federation's classes, as the silo would know them.
                federated_training(
                    variant, run_id=run_id, known_classes=known if linear else ()
                )
                wall["local", silo.name] = time.perf_counter() - started
                rows = _run_rows(variant, run_id, "local")
                local_frames.append(rows[rows["silo"] == silo.name])
        local = pd.concat(local_frames, ignore_index=True)
        local = local[~local["metric"].isin(comparison.TRAFFIC)]
        runs["local"] = _run_id(compare_id, "local", "*")
        frames += [local, local_overall(scores.evaluations, runs["local"], spec.task)]
        wall["local", "global"] = sum(wall["local", s] for s in names)

        if pooled is not None:
            run_id = _run_id(compare_id, "centralized")
            started = time.perf_counter()
            frames.append(_centralized(attached, cluster, pooled, run_id))
            wall["centralized", "global"] = time.perf_counter() - started
            runs["centralized"] = run_id

    curves = pd.concat([f for f in frames if not f.empty], ignore_index=True)
    n_train = {
        s: int(
            curves[
                (curves["variant"] == "federated")
                & (curves["silo"] == s)
                & (curves["split"] == "train")
            ]["n_samples"].max()
        )
        for s in names
    }
    totals = comparison.totals_rows(
        curves,
        task=spec.task,
        runs=runs,
        silo_rows=n_train,
        n_features=len(summary["features"]),
        wall_seconds=wall,
        extra_traffic={"personalized": personalizer.traffic},
    )
    table = comparison.comparison_table(pd.concat([curves, totals], ignore_index=True))
    notes = {
        "federation": spec.name,
        "compare_id": compare_id,
        "task": spec.task,
        "metric": comparison.primary_metric(spec.task),
        "model": spec.model.kind,
        "rounds": spec.rounds,
        "silos": names,
        "n_features": len(summary["features"]),
        "personalize": {
            "epochs": personalize_epochs,
            "unit": "trees" if spec.model.kind == "xgboost" else "local epochs",
        },
        "runs": runs,
        "variant_federation": variant_federation(spec.name),
        "skipped": skipped,
        "command": command,
        "spec_hash": spec.spec_hash(),
    }
    directory = comparison.compare_dir(spec.checkpoints, spec.name, compare_id)
    table_path = comparison.write_comparison(
        directory, table, notes, spec.storage_options
    )
    # The report shows what the store holds: read it back, then render.
    stored, stored_notes = comparison.read_comparison(directory, spec.storage_options)
    report_path = comparison.put_atomic(
        f"{directory}/{comparison.REPORT_FILE}",
        render_html(stored, stored_notes).encode("utf-8"),
        spec.storage_options,
    )
    create_markdown_artifact(
        markdown=markdown_summary(stored, stored_notes, report_path),
        key=artifact_key(spec.name, "comparison"),
        description=f"{spec.name}: federated vs local, personalized, centralized",
    )
    logger.info("comparison %s: report at %s", compare_id, report_path)
    return {
        "compare_id": compare_id,
        "directory": directory,
        "comparison": table_path,
        "report": report_path,
        "runs": runs,
        "skipped": skipped,
    }
