"""What a person sees in the Prefect UI: a table per round, a summary per run."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from tasks.protocol.messages import Evaluation, LocalUpdate
from tasks.run_state import RoundResult


def artifact_key(*parts: str) -> str:
    """Return a Prefect artifact key: lowercase letters, digits and dashes."""
    joined = "-".join(parts).lower()
    return re.sub(r"[^a-z0-9-]+", "-", joined).strip("-")


def round_table(
    evaluations: Sequence[Evaluation],
    updates: Sequence[LocalUpdate],
    global_test: dict[str, float],
) -> list[dict[str, Any]]:
    """Return one row per silo (test metrics, traffic, fit time) plus a global row."""
    by_silo = {u.silo: u for u in updates}
    rows: list[dict[str, Any]] = []
    for evaluation in evaluations:
        if evaluation.split != "test":
            continue
        update = by_silo.get(evaluation.silo)
        row: dict[str, Any] = {"silo": evaluation.silo, "trained": update is not None}
        row["test_rows"] = evaluation.n_samples
        row.update({k: round(v, 6) for k, v in sorted(evaluation.metrics.items())})
        row["bytes_down"] = update.bytes_down if update else 0
        row["bytes_up"] = update.bytes_up if update else 0
        row["fit_seconds"] = round(update.seconds, 4) if update else None
        rows.append(row)
    total = {
        "silo": "global",
        "trained": bool(updates),
        "test_rows": sum(r["test_rows"] for r in rows),
        **{k: round(v, 6) for k, v in sorted(global_test.items())},
        "bytes_down": sum(u.bytes_down for u in updates),
        "bytes_up": sum(u.bytes_up for u in updates),
        "fit_seconds": None,
    }
    return [*rows, total]


def publish_round(
    federation: str, round_number: int, table: list[dict[str, Any]]
) -> None:
    """Attach the round's table to its flow run."""
    create_table_artifact(
        table=table,
        key=artifact_key(federation, "round-metrics"),
        description=f"{federation}: silo metrics and traffic of round {round_number}",
    )


def summary_markdown(
    federation: str, run_id: str, run_path: str, history: Sequence[RoundResult]
) -> str:
    """Return the run's summary: final metrics, learning curve, checkpoint location."""
    lines = [f"# {federation}, run `{run_id}`", ""]
    if not history:
        return "\n".join([*lines, "No round completed."])
    names = sorted(history[-1].metrics)
    lines += ["## Global test metrics by round", ""]
    lines.append("| round | silos | " + " | ".join(names) + " | seconds |")
    lines.append("|---:|---:|" + "---:|" * len(names) + "---:|")
    for result in history:
        cells = " | ".join(f"{result.metrics.get(n, float('nan')):.4f}" for n in names)
        lines.append(
            f"| {result.round} | {len(result.silos)}/{len(result.selected)} | {cells} "
            f"| {result.seconds:.2f} |"
        )
    down = sum(r.bytes_down for r in history)
    up = sum(r.bytes_up for r in history)
    lines += [
        "",
        f"Traffic: {down:,} bytes to silos, {up:,} bytes from silos.",
        "",
        f"Checkpoints: [{run_path}]({_link(run_path)})",
    ]
    return "\n".join(lines)


def _link(path: str) -> str:
    return path if "://" in path else f"file://{path}"


def publish_summary(
    federation: str, run_id: str, run_path: str, history: Sequence[RoundResult]
) -> None:
    """Attach the run's markdown summary to the parent flow run."""
    create_markdown_artifact(
        markdown=summary_markdown(federation, run_id, run_path, history),
        key=artifact_key(federation, "summary"),
        description=f"{federation}: learning curve and checkpoint location",
    )


def format_metrics(metrics: dict[str, float]) -> str:
    """Return ``name=value`` pairs in a short, stable form."""
    return " ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()))


def finish_run(
    federation: str,
    run_id: str,
    run_path: str,
    history: Sequence[RoundResult],
    logger: Any,
) -> dict[str, Any]:
    """Publish the run's summary, log its final metrics, return the common summary."""
    publish_summary(federation, run_id, run_path, history)
    final = history[-1] if history else None
    if final is not None:
        logger.info("finished %s: %s", run_id, format_metrics(final.metrics))
    return {
        "run_id": run_id,
        "run_path": run_path,
        "rounds": [r.round for r in history],
        "final_metrics": final.metrics if final else {},
    }
