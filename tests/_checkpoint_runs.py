"""docs/checkpoints.md's queries, and a store written by real runs to run them on.

The doc marks every query and snippet it promises to work with a comment line
``<!-- run NAME: ENGINE ... -->`` right before its code block; `documented`
returns them, so the tests run exactly what the doc shows.


One averaged run (``sgd-logistic``, federation ``breast-cancer``) and one
boosted run (``xgboost``, federation ``breast-cancer-trees``) on the shared
silos, plus a torn round 4 of the averaged run (its files, no ``_SUCCESS``, as a
crash leaves them). The store is built the first time a test module asks for it
and shared by every module of the session (tests/test_analytics.py,
tests/test_spark_store.py); tests that change a store work on a copy.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from fedsilo.spec import FederationSpec, load_spec
from tasks import run_state

DOCS = Path(__file__).resolve().parents[1] / "docs" / "checkpoints.md"
ENGINES = frozenset({"duckdb", "spark", "python"})
_MARKED = re.compile(
    r"<!-- run (?P<name>\w+): (?P<engines>[a-z ]+) -->\n"
    r"```(?P<language>sql|python)\n(?P<code>.*?)```",
    re.DOTALL,
)

AVERAGED = "breast-cancer"
BOOSTED = "breast-cancer-trees"
AVERAGED_ROUNDS = 3
BOOSTED_ROUNDS = 2
TORN_ROUND = AVERAGED_ROUNDS + 1


@dataclass(frozen=True)
class Block:
    """A code block of docs/checkpoints.md that the tests run."""

    name: str
    engines: frozenset[str]
    language: str
    code: str


def documented() -> dict[str, Block]:
    """Return the doc's marked code blocks by name, in the doc's order."""
    text = DOCS.read_text()
    blocks: dict[str, Block] = {}
    for match in _MARKED.finditer(text):
        name = match["name"]
        assert name not in blocks, f"docs/checkpoints.md: {name} marked twice"
        engines = frozenset(match["engines"].split())
        assert engines <= ENGINES, f"docs/checkpoints.md: {name}: {engines}"
        blocks[name] = Block(name, engines, match["language"], match["code"])
    return blocks


def shared_queries() -> list[Block]:
    """Return the SQL queries the doc promises in both DuckDB and Spark."""
    return [
        b
        for b in documented().values()
        if b.language == "sql" and {"duckdb", "spark"} <= b.engines
    ]


@dataclass(frozen=True)
class TrainedStore:
    """A trained store and what its runs reported while writing it."""

    base: Path  # the store is base / "checkpoints"
    specs: dict[str, FederationSpec]  # federation -> spec
    runs: dict[str, str]  # federation -> its one run id
    summaries: dict[str, dict[str, Any]]  # run id -> federated_training's summary
    results: dict[str, list[run_state.RoundResult]]  # run id -> its rounds
    test: pd.DataFrame  # every silo's test rows, pooled (for scoring only)

    @property
    def root(self) -> Path:
        """Return the store's root directory."""
        return self.base / "checkpoints"

    def run_dir(self, federation: str, root: Path | None = None) -> Path:
        """Return the directory of ``federation``'s run under ``root``."""
        run = self.runs[federation]
        return (root or self.root) / f"federation={federation}" / f"run={run}"


_BUILT: dict[tuple[str, str], TrainedStore] = {}


def trained_store(
    factory: pytest.TempPathFactory, data_dir: Path, cluster: str
) -> TrainedStore:
    """Return the session's trained store, training it on the first call."""
    key = (str(data_dir), cluster)
    if key not in _BUILT:
        _BUILT[key] = _train(factory.mktemp("trained-store"), data_dir, cluster)
    return _BUILT[key]


def boosted_spec(spec: FederationSpec) -> FederationSpec:
    """Return ``spec`` as a small boosted federation over the same silos."""
    return FederationSpec.model_validate(
        {
            **spec.model_dump(),
            "name": BOOSTED,
            "rounds": BOOSTED_ROUNDS,
            "model": {
                "kind": "xgboost",
                "trees_per_round": 2,
                "params": {
                    "objective": "binary:logistic",
                    "max_depth": 2,
                    "eta": 0.3,
                    "max_bin": 16,
                },
            },
        }
    )


def _train(base: Path, data_dir: Path, cluster: str) -> TrainedStore:
    from flows.training import federated_training

    loaded = load_spec(data_dir / "federation.yaml")
    averaged = FederationSpec.model_validate(
        {
            **loaded.model_dump(),
            "name": AVERAGED,
            "rounds": AVERAGED_ROUNDS,
            "checkpoints": str(base / "checkpoints"),
            "cluster": {"address": cluster},
        }
    )
    specs = {AVERAGED: averaged, BOOSTED: boosted_spec(averaged)}
    results: dict[str, list[run_state.RoundResult]] = {}

    def listener(result: run_state.RoundResult, state: run_state.Run) -> None:
        results.setdefault(state.run_id, []).append(result)

    with run_state.listening(listener):
        summaries = {name: federated_training(spec) for name, spec in specs.items()}
    files = sorted(data_dir.glob("silo-*/test.parquet"))
    test = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    store = TrainedStore(
        base=base,
        specs=specs,
        runs={name: summary["run_id"] for name, summary in summaries.items()},
        summaries={s["run_id"]: s for s in summaries.values()},
        results=results,
        test=test,
    )
    # A crash in round 4 after metrics.parquet, before _SUCCESS.
    run_dir = store.run_dir(AVERAGED)
    torn = run_dir / f"round={TORN_ROUND:05d}"
    torn.mkdir()
    for name in ("model.parquet", "metrics.parquet"):
        shutil.copy(run_dir / f"round={AVERAGED_ROUNDS:05d}" / name, torn / name)
    return store
