"""The ``federated-stats`` flow: describe every silo's rows without moving them.

Pass 1 asks each silo's worker for a profile of its training rows, pass 2 for
histograms on bin edges shared by all silos; the coordinator merges the replies
(``tasks/statistics/federated.py``), stores the tables as Parquet under
``<store>/federation=<name>/stats=<id>/`` and attaches a Markdown report to the
flow run. Silos withhold small cells themselves (docs/statistics.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from fedsilo.cluster import SiloCluster, spec_cluster
from fedsilo.spec import FederationSpec
from flows.reporting import artifact_key
from tasks.averaging.averaged import read_silos
from tasks.protocol.messages import SiloSchema
from tasks.silo.failures import wait_silo
from tasks.silo.schema import categorical_features, check_schemas
from tasks.statistics.federated import (
    FederatedStats,
    SiloProfile,
    build_tables,
    shared_edges,
)
from tasks.statistics.report import markdown_report
from tasks.statistics.silo_side import silo_histograms, silo_profile
from tasks.statistics.storage import write_stats
from tasks.store.checkpoints import new_run_id


@dataclass(frozen=True, slots=True)
class StatsResult:
    """What a ``federated-stats`` run produced and where it stored it."""

    stats_id: str
    path: str
    stats: FederatedStats
    numeric: list[str]
    categorical: list[str]


def _gather(spec: FederationSpec, futures: dict[str, Any]) -> dict[str, Any]:
    """Wait for one reply per silo; the first failure names its silo."""
    return {
        silo: wait_silo(silo, future, spec.cluster.silo_timeout)
        for silo, future in futures.items()
    }


def stats_columns(
    spec: FederationSpec, schemas: list[SiloSchema]
) -> tuple[list[str], list[str]]:
    """Return (numeric, categorical) features: strings and declared ones tallied."""
    declared = spec.preprocessing.categorical
    features = check_schemas(
        schemas, target=spec.target, task=spec.task, categorical="auto"
    )
    categorical = categorical_features(schemas, features, "auto")
    if declared != "auto":
        check_schemas(
            schemas,
            target=spec.target,
            task=spec.task,
            categorical=[*declared, *categorical],
        )
        categorical = [f for f in features if f in categorical or f in declared]
    return [f for f in features if f not in categorical], categorical


@task(name="open-silo-rows", cache_policy=NO_CACHE, persist_result=False)
def open_silo_rows(
    spec: FederationSpec, cluster: SiloCluster, stats_id: str
) -> tuple[dict[str, Any], list[str], list[str]]:
    """Read each silo's rows on its worker; check their schemas agree."""
    data, schemas = read_silos(spec, cluster, stats_id, prefix="stats-")
    numeric, categorical = stats_columns(spec, list(schemas.values()))
    return data, numeric, categorical


@task(name="silo-profiles", cache_policy=NO_CACHE, persist_result=False)
def silo_profiles(
    spec: FederationSpec,
    cluster: SiloCluster,
    data: dict[str, Any],
    columns: tuple[list[str], list[str]],
    min_count: int,
    stats_id: str,
) -> dict[str, SiloProfile]:
    """Pass 1: each silo's counts, moments, quantile summary and value counts."""
    numeric, categorical = columns
    return _gather(
        spec,
        {
            name: cluster.submit(
                name,
                silo_profile,
                future,
                numeric,
                categorical,
                spec.target,
                spec.task,
                min_count,
                key=f"stats-profile-{name}-{stats_id}",
            )
            for name, future in data.items()
        },
    )


@task(name="silo-histograms", cache_policy=NO_CACHE, persist_result=False)
def histograms(
    spec: FederationSpec,
    cluster: SiloCluster,
    data: dict[str, Any],
    edges: dict[str, Any],
    min_count: int,
    stats_id: str,
) -> dict[str, Any]:
    """Pass 2: each silo's bin counts on the shared edges."""
    return _gather(
        spec,
        {
            name: cluster.submit(
                name,
                silo_histograms,
                future,
                edges,
                min_count,
                key=f"stats-histograms-{name}-{stats_id}",
            )
            for name, future in data.items()
        },
    )


@flow(name="federated-stats", flow_run_name="{spec.name}-stats", persist_result=False)
def federated_stats(
    spec: FederationSpec,
    stats_id: str | None = None,
    min_count: int | None = None,
    bins: int | None = None,
    store: str | None = None,
) -> StatsResult:
    """Describe the silos' training rows, store the tables, publish a report.

    ``min_count`` and ``bins`` default to the spec's ``statistics``; ``store``
    to its ``checkpoints``.
    """
    logger = get_run_logger()
    stats_id = stats_id or new_run_id()
    min_count = spec.statistics.min_count if min_count is None else min_count
    bins = spec.statistics.bins if bins is None else bins
    with spec_cluster(spec) as cluster:
        data, numeric, categorical = open_silo_rows(spec, cluster, stats_id)
        try:
            profiles = silo_profiles(
                spec, cluster, data, (numeric, categorical), min_count, stats_id
            )
            measured = [*numeric, *([spec.target] if spec.task == "regression" else [])]
            edges = {}
            for column in measured:
                sent = [
                    p.numeric[column].sketch
                    for p in profiles.values()
                    if column in p.numeric and p.numeric[column].sketch is not None
                ]
                cuts = shared_edges([s for s in sent if s is not None], bins)
                if cuts.size:
                    edges[column] = cuts
            counted = histograms(spec, cluster, data, edges, min_count, stats_id)
        finally:
            data.clear()
    stats = build_tables(
        list(profiles.values()),
        list(counted.values()),
        edges,
        target=spec.target,
        task=spec.task,
        min_count=min_count,
        bins=bins,
    )
    metadata = {
        "fedsilo.spec": spec.public_json(),
        "fedsilo.spec_hash": spec.spec_hash(),
        "fedsilo.stats": f'{{"min_count": {min_count}, "bins": {bins}}}',
    }
    path = write_stats(
        store or spec.checkpoints,
        spec.name,
        stats_id,
        stats.tables(),
        metadata,
        storage_options=spec.storage_options,
    )
    create_markdown_artifact(
        markdown=markdown_report(
            stats, spec.target, f"{spec.name}: federated statistics `{stats_id}`"
        )
        + f"\n\nTables: `{path}`",
        key=artifact_key(spec.name, "federated-stats"),
        description=f"{spec.name}: federated statistics of the silos' training rows",
    )
    logger.info("federated statistics of %d silos written to %s", len(spec.silos), path)
    return StatsResult(stats_id, path, stats, numeric, categorical)
