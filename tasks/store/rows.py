"""A round's metrics as the long-format rows of metrics.parquet."""

from __future__ import annotations

from tasks.metrics import global_metrics
from tasks.protocol.messages import Evaluation, LocalUpdate
from tasks.store.checkpoints import MetricRow


def metric_rows(
    evaluations: list[Evaluation],
    updates: list[LocalUpdate],
    task: str,
    absent: dict[str, str] | None = None,
) -> list[MetricRow]:
    """Long-format rows: every silo's metrics, the global ones, and traffic."""
    rows = []
    for evaluation in evaluations:
        for name, value in evaluation.metrics.items():
            rows.append(
                MetricRow(
                    evaluation.silo, evaluation.split, name, value, evaluation.n_samples
                )
            )
    for split in ("train", "test"):
        chosen = [e for e in evaluations if e.split == split]
        n = sum(e.n_samples for e in chosen)
        for name, value in global_metrics(chosen, task).items():
            rows.append(MetricRow("global", split, name, value, n))
    for update in updates:
        n = update.n_samples
        rows.append(MetricRow(update.silo, "train", "bytes_down", update.bytes_down, n))
        rows.append(MetricRow(update.silo, "train", "bytes_up", update.bytes_up, n))
        rows.append(MetricRow(update.silo, "train", "fit_seconds", update.seconds, n))
    for silo, kind in sorted((absent or {}).items()):
        rows.append(MetricRow(silo, "train", kind, 1.0, 0))
    return rows
