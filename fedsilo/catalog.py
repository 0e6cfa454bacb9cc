"""The runs a checkpoint store holds: federation, run, rounds, last metrics, status.

Read through the store's public readers (``tasks.store.checkpoints``): each
run's manifest (``manifest.parquet``, docs/checkpoints.md) and its last
complete round's ``metrics.parquet``. A run written before manifests existed
is described from its round directories and the spec its checkpoints record.
Nothing here imports Prefect or Dask: ``fedsilo runs`` answers at once.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import fsspec

from fedsilo.errors import CheckpointError
from tasks.store.checkpoints import CheckpointStore, list_runs
from tasks.store.credentials import resolve_storage_options

#: A run whose manifest is missing (written by an earlier fedsilo) and whose
#: checkpoints hold no spec: how many rounds it wanted is unknown.
UNKNOWN = "unknown"

__all__ = ["RunEntry", "format_runs", "store_runs"]


@dataclass(frozen=True, slots=True)
class RunEntry:
    """One run of a store, as ``fedsilo runs`` lists it."""

    federation: str
    run_id: str
    rounds_done: int
    last_round: int
    rounds_planned: int | None
    status: str  # complete, partial (in progress, stopped or killed) or unknown
    metrics: dict[str, float] = field(default_factory=dict)  # global test, last round
    model_kind: str | None = None
    updated_at: Any = None  # datetime of the manifest's last write, if any


def store_runs(
    root: str,
    federation: str | None = None,
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> list[RunEntry]:
    """Return the runs under ``root`` with a complete round, by federation and run.

    Parameters
    ----------
    root : str
        The checkpoint store: a local path or an fsspec URL.
    federation : str, optional
        List this federation's runs only.
    storage_options : mapping, optional
        Options of the store's filesystem (as the spec's ``storage_options``).
    """
    options = dict(storage_options or {})
    names = [federation] if federation is not None else _federations(root, options)
    entries = []
    for name in names:
        try:
            runs = list_runs(root, name, storage_options=options)
        except CheckpointError:
            if federation is not None:
                raise
            continue  # a directory whose name no federation can have
        for run_id in runs:
            store = CheckpointStore(root, name, run_id, storage_options=options)
            entries.append(_entry(store))
    return entries


def _federations(root: str, options: Mapping[str, Any]) -> list[str]:
    """Return the federations whose directories are in the store, sorted."""
    try:
        fs, base = fsspec.core.url_to_fs(root, **resolve_storage_options(options))
        if not fs.exists(base):
            raise CheckpointError(f"{root}: no such checkpoint store")
        found = fs.glob(posixpath.join(str(base).rstrip("/"), "federation=*"))
    except CheckpointError:
        raise
    except Exception as error:
        raise CheckpointError(f"cannot list {root}: {error}") from None
    names = {posixpath.basename(str(p)).removeprefix("federation=") for p in found}
    return sorted(name for name in names if name)


def _entry(store: CheckpointStore) -> RunEntry:
    """Describe one run from its manifest, or from its rounds without one."""
    manifest = store.read_manifest()
    if manifest is not None:
        last = int(manifest["last_round"])
        planned = manifest.get("rounds_planned")
        return RunEntry(
            federation=store.federation,
            run_id=store.run_id,
            rounds_done=int(manifest["rounds_done"]),
            last_round=last,
            rounds_planned=None if planned is None else int(planned),
            status=str(manifest["status"]),
            metrics=_final_metrics(store, last),
            model_kind=manifest.get("model_kind"),
            updated_at=manifest.get("updated_at"),
        )
    rounds = store.complete_rounds()
    last = rounds[-1]
    spec = _recorded_spec(store, last)
    planned = spec.get("rounds") if spec else None
    if isinstance(planned, int):
        status = "complete" if last >= planned else "partial"
    else:
        planned, status = None, UNKNOWN
    model = spec.get("model") if spec else None
    return RunEntry(
        federation=store.federation,
        run_id=store.run_id,
        rounds_done=len(rounds),
        last_round=last,
        rounds_planned=planned,
        status=status,
        metrics=_final_metrics(store, last),
        model_kind=model.get("kind") if isinstance(model, dict) else None,
    )


def _recorded_spec(store: CheckpointStore, round_number: int) -> dict[str, Any] | None:
    """Return the spec a round's checkpoint records, or None."""
    text = store.read_metadata(round_number).get("fedsilo.spec")
    try:
        spec = json.loads(text) if text else None
    except json.JSONDecodeError:
        return None
    return spec if isinstance(spec, dict) else None


def _final_metrics(store: CheckpointStore, round_number: int) -> dict[str, float]:
    """Return the global test metrics of a complete round."""
    frame = store.read_metrics(round_number)
    rows = frame[(frame["silo"] == "global") & (frame["split"] == "test")]
    return {
        str(m): float(v) for m, v in zip(rows["metric"], rows["value"], strict=True)
    }


def format_runs(entries: Sequence[RunEntry]) -> str:
    """Return the runs as a text table: one line per run, metrics last."""
    header = ("federation", "run", "rounds", "status", "last metrics (global test)")
    rows = [
        (
            e.federation,
            e.run_id,
            f"{e.rounds_done}/{e.rounds_planned if e.rounds_planned else '?'}",
            e.status,
            "  ".join(f"{k} {v:.4f}" for k, v in sorted(e.metrics.items())),
        )
        for e in entries
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    lines = []
    for row in [header, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)
