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

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact

from fedsilo.cluster import SiloCluster, spec_cluster
from fedsilo.spec import FederationSpec
from flows.reporting import artifact_key
from tasks.averaging.averaged import read_silos
from tasks.prefect_decorators import uncached_task, unstored_flow
from tasks.protocol.messages import SiloSchema
from tasks.silo.link import SiloLink
from tasks.silo.schema import categorical_features, check_schemas
from tasks.statistics.federated import (
    FederatedStats,
    SiloProfile,
    build_tables,
    shared_edges,
)
from tasks.statistics.report import markdown_report
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


@uncached_task("open-silo-rows")
def open_silo_rows(
    spec: FederationSpec, cluster: SiloCluster, stats_id: str
) -> tuple[SiloLink, list[str], list[str]]:
    """Read each silo's rows on its worker (they stay there); check the schemas."""
    link = SiloLink(cluster, f"stats-{stats_id}", spec.cluster.silo_timeout)
    try:
        link.connect([s.name for s in spec.silos])  # closing it frees the rows
        schemas = read_silos(spec, link)
    except BaseException:
        link.close()
        raise
    numeric, categorical = stats_columns(spec, list(schemas.values()))
    return link, numeric, categorical


@uncached_task("silo-profiles")
def silo_profiles(
    spec: FederationSpec,
    link: SiloLink,
    columns: tuple[list[str], list[str]],
    min_count: int,
) -> dict[str, SiloProfile]:
    """Pass 1: each silo's counts, moments, quantile summary and value counts."""
    numeric, categorical = columns
    return link.each(
        "profile",
        {
            s.name: (
                link.ref(s.name, "rows"),
                numeric,
                categorical,
                spec.target,
                spec.task,
                min_count,
            )
            for s in spec.silos
        },
        name="stats-profile",
    )


@uncached_task("silo-histograms")
def histograms(
    spec: FederationSpec,
    link: SiloLink,
    edges: dict[str, Any],
    min_count: int,
) -> dict[str, Any]:
    """Pass 2: each silo's bin counts on the shared edges."""
    return link.each(
        "histograms",
        {s.name: (link.ref(s.name, "rows"), edges, min_count) for s in spec.silos},
        name="stats-histograms",
    )


@unstored_flow("federated-stats", "{spec.name}-stats")
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
        link, numeric, categorical = open_silo_rows(spec, cluster, stats_id)
        try:
            profiles = silo_profiles(spec, link, (numeric, categorical), min_count)
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
            counted = histograms(spec, link, edges, min_count)
        finally:
            link.close()
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
