"""Find a run in a checkpoint store and the spec it was started with."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from typing import Any

from fedsilo.errors import CheckpointError, SpecError
from fedsilo.source_kinds import HIDDEN
from fedsilo.spec import FederationSpec, parse_recorded_spec
from tasks.store.checkpoints import (
    CheckpointStore,
    federations_of_run,
    list_runs,
)

SPEC_KEY = "fedsilo.spec"


def locate_run(
    root: str,
    run_id: str,
    federation: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> CheckpointStore:
    """Return the store of ``run_id`` under ``root``; raise naming what is wrong."""
    found = federations_of_run(root, run_id, storage_options=storage_options)
    if federation is not None:
        found = [f for f in found if f == federation]
    if not found:
        where = f" of federation {federation!r}" if federation else ""
        raise CheckpointError(
            f"{root}: no complete round of run {run_id!r}{where}; a run killed "
            "before its first checkpoint has nothing to resume (start it again)"
        )
    if len(found) > 1:
        raise CheckpointError(
            f"{root}: run {run_id!r} exists in federations {found}; "
            "choose one with --federation"
        )
    return CheckpointStore(
        root, found[0], run_id, storage_options=dict(storage_options or {})
    )


def recorded_spec(store: CheckpointStore) -> FederationSpec:
    """Return the spec the run recorded in its latest complete checkpoint.

    Checkpoints keep the spec without credentials and with SQL URLs hidden; a
    run that needs those is resumed with its spec file instead.
    """
    latest = store.latest_complete_round()
    if latest is None:
        raise CheckpointError(f"{store.run_path}: no complete round")
    meta = store.read_metadata(latest)
    if SPEC_KEY not in meta:
        raise CheckpointError(
            f"{store.round_path(latest)}: the checkpoint holds no spec "
            f"({SPEC_KEY} metadata); resume with its spec file"
        )
    text = meta[SPEC_KEY]
    if HIDDEN in text:
        raise SpecError(
            f"run {store.run_id}: its recorded spec hides SQL URLs; resume with "
            "the spec file: fedsilo run SPEC --run-id "
            f"{store.run_id} --resume"
        )
    source = f"run {store.run_id}'s recorded spec"
    return parse_recorded_spec(json.loads(text), source=source)


#: Fields a resumed run may change: more rounds, another scheduler or store URL.
MAY_DIFFER = ("rounds", "cluster", "checkpoints")


def check_same_federation(spec: FederationSpec, store: CheckpointStore) -> None:
    """Refuse to resume a run with a spec other than the one it started with.

    Only :data:`MAY_DIFFER` may change; the model, strategy, silos, seed and
    privacy settings must be those of the checkpoints.
    """
    latest = store.latest_complete_round()
    text = None if latest is None else store.read_metadata(latest).get(SPEC_KEY)
    if text is None:
        return
    recorded_data = json.loads(text)
    # With today's defaults filled in, so that a field added since is no change.
    with contextlib.suppress(SpecError):
        recorded_data = parse_recorded_spec(recorded_data, "<recorded>").public_dict()
    recorded = {k: v for k, v in recorded_data.items() if k not in MAY_DIFFER}
    current = {k: v for k, v in spec.public_dict().items() if k not in MAY_DIFFER}
    changed = sorted(
        key
        for key in recorded.keys() | current.keys()
        if recorded.get(key) != current.get(key)
    )
    if changed:
        raise SpecError(
            f"run {store.run_id} was started from another spec (differs in "
            f"{', '.join(changed)}); resume it with its own spec or start a new run"
        )


def latest_run(
    root: str, federation: str, storage_options: Mapping[str, Any] | None = None
) -> str | None:
    """Return the newest run id of ``federation`` with a complete round."""
    runs = list_runs(root, federation, storage_options=storage_options)
    return runs[-1] if runs else None
