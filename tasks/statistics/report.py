"""Readable text tables of federated statistics (CLI output, Prefect artifact).

Withheld cells print as ``supp``; a pooled count that misses some silo's
withheld cell prints as ``>=N`` (it is a lower bound).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

from tasks.statistics.federated import POOLED, FederatedStats

WITHHELD = "supp"


def _number(value: Any, digits: int = 4) -> str:
    if (
        value is None
        or value is pd.NA
        or (isinstance(value, float) and math.isnan(value))
    ):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _count(value: Any, exact: bool = True) -> str:
    if value is None or value is pd.NA:
        return WITHHELD
    return str(int(value)) if exact else f">={int(value)}"


def render(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    """Return rows as an aligned text table: first column left, others right."""
    table = [list(header), *[list(r) for r in rows]]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = []
    for row in table:
        cells = [
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def columns_table(stats: FederatedStats) -> str:
    """Return the pooled per-column summary."""
    header = ["column", "kind", "count", "missing", "mean", "std", "q25", "q50", "q75"]
    header += ["silos"]
    rows = []
    for r in stats.columns.itertuples(index=False):
        exact = bool(r.exact)
        rows.append(
            [
                str(r.column),
                str(r.kind),
                _count(r.count, exact),
                _count(r.missing, exact),
                _number(r.mean),
                _number(r.std),
                _number(r.q25),
                _number(r.q50),
                _number(r.q75),
                f"{r.silos}{'' if exact else '*'}",
            ]
        )
    return render(rows, header)


def labels_table(stats: FederatedStats, column: str) -> str:
    """Return one column's value counts per silo (rows) and value (columns)."""
    values = stats.values[stats.values["column"] == column]
    if values.empty:
        return ""
    order = list(dict.fromkeys(values["value"]))
    rare = values[values["value"] == "<rare>"]["count"]
    if (rare.fillna(0) == 0).all() and rare.notna().all():
        order = [v for v in order if v != "<rare>"]
    rows = []
    for silo, group in values.groupby("silo", sort=False):
        cells = {
            v: _count(c, bool(e))
            for v, c, e in group[["value", "count", "exact"]].itertuples(index=False)
        }
        rows.append([str(silo), *(cells.get(v, "0") for v in order)])
    pooled = [r for r in rows if r[0] == POOLED]
    rows = [r for r in rows if r[0] != POOLED] + pooled
    return render(rows, ["silo", *order])


def heterogeneity_table(stats: FederatedStats) -> str:
    """Return how each silo differs from the pooled rows."""
    header = ["silo", "rows", "share", "label_tv", "label_js", "mean|smd|", "max|smd|"]
    header += ["worst column"]
    rows = []
    for r in stats.heterogeneity.itertuples(index=False):
        rows.append(
            [
                str(r.silo),
                _count(r.rows),
                _number(r.share, 3),
                _number(r.label_tv, 3),
                _number(r.label_js, 3),
                _number(r.mean_abs_smd, 3),
                _number(r.max_abs_smd, 3),
                "-" if r.max_smd_column is pd.NA else str(r.max_smd_column),
            ]
        )
    return render(rows, header)


def report(stats: FederatedStats, target: str) -> list[tuple[str, str]]:
    """Return the report's sections as (title, text table)."""
    sections = [
        (
            f"Columns, pooled (threshold {stats.min_count} rows; "
            "* = some silo withheld cells, counts are lower bounds)",
            columns_table(stats),
        )
    ]
    labels = labels_table(stats, target)
    if labels:
        sections.append((f"Label distribution per silo ({target})", labels))
    sections.append(
        (
            "Heterogeneity: each silo against the pooled rows "
            "(tv/js: label distribution distance; smd: standardized mean difference)",
            heterogeneity_table(stats),
        )
    )
    return sections


def text_report(stats: FederatedStats, target: str) -> str:
    """Return the report as plain text."""
    return "\n\n".join(f"{title}\n{table}" for title, table in report(stats, target))


def markdown_report(stats: FederatedStats, target: str, heading: str) -> str:
    """Return the report as Markdown (tables in fixed-width blocks)."""
    parts = [f"# {heading}"]
    for title, table in report(stats, target):
        parts.append(f"## {title}\n\n```\n{table}\n```")
    return "\n\n".join(parts)
