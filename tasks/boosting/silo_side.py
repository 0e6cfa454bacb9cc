"""Federated boosting at a silo, on its own Dask worker.

These functions run inside the silo's worker process. The rows are read there
(``tasks.silo.load_silo``), validated and binned there, and stay there for the
whole run in one :class:`BoostingSilo` (binned train and test rows, labels,
margins, node positions), held by the silo's runtime (tasks/silo/runtime.py):
the coordinator names it, never holds it, and the runtime frees it when the
run ends or fails.

What a reply holds (and nothing else): quantile summaries of feature columns
and label sums at setup; per tree level the gradient/hessian histograms of the
nodes asked for (masked under secure aggregation: the silo's X25519 private key
is made and held by its runtime and never leaves it); per tree the summed
training loss; per round the metrics and their sums.
``docs/gbdt.md`` says what each of these reveals.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fedsilo.errors import SiloDataError
from tasks.boosting.messages import BoostingSetup, SiloSketch
from tasks.gbdt.histogram import Backend, NodeHistograms
from tasks.gbdt.model import Tree
from tasks.gbdt.objective import Intercept
from tasks.gbdt.private_histograms import MaskedHistograms, mask_histograms
from tasks.gbdt.silo_state import (
    LossSum,
    NodeSplit,
    SiloTreeState,
    TreeRows,
    prepare_silo_data,
)
from tasks.gbdt.sketch import summarize
from tasks.metrics import evaluations
from tasks.privacy.secagg import KeyPair, MaskContext
from tasks.protocol.messages import Evaluation
from tasks.silo.data import SiloData, worker_name

#: What a histogram exchange returns: plain, or masked under secure aggregation.
Histograms = NodeHistograms | MaskedHistograms


@dataclass(frozen=True, slots=True)
class BoostingRows:
    """A silo's validated rows before binning (resident, freed once binned)."""

    silo: str
    train: TreeRows
    X_test: np.ndarray  # float32, NaN for missing
    y_test: np.ndarray  # float64


class BoostingSilo:
    """A silo's resident boosting state: binned rows, labels, margins.

    Holds the training side in a ``SiloTreeState`` and, for evaluation, the
    float32 test rows with their margins, kept up to date tree by tree. Every
    call after :meth:`free` raises RuntimeError.
    """

    def __init__(
        self,
        silo: str,
        state: SiloTreeState,
        X_test: np.ndarray,
        y_test: np.ndarray,
        intercept: Intercept,
        backend: Backend,
    ) -> None:
        self.silo = silo
        self.backend: Backend = backend
        self.seconds: dict[str, float] = {}
        self._state: SiloTreeState | None = state
        self._X_test: np.ndarray | None = X_test
        self._y_test: np.ndarray | None = y_test
        k = state.objective.n_outputs
        margin = np.full((X_test.shape[0], k), intercept.base_margin)
        self._test_margin: np.ndarray | None = margin
        self._test_offsets = np.asarray(intercept.offsets, np.float64).copy()
        self._saved_test: tuple[np.ndarray, np.ndarray] | None = None
        self._keys: KeyPair | None = None
        self._roster: tuple[int, dict[int, bytes]] | None = None
        self._used: set[MaskContext] = set()
        self._exponent: int | None = None

    @property
    def state(self) -> SiloTreeState:
        """Return the training side, or raise if the silo was freed."""
        if self._state is None:
            raise RuntimeError(f"silo {self.silo!r}: boosting state was freed")
        return self._state

    def _test(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._X_test is None or self._y_test is None or self._test_margin is None:
            raise RuntimeError(f"silo {self.silo!r}: boosting state was freed")
        return self._X_test, self._y_test, self._test_margin

    def add_test_trees(self, trees: Sequence[Tree], tree_info: Sequence[int]) -> None:
        """Add trees to the test margins, routing raw float32 values like XGBoost."""
        X, _, margin = self._test()
        for tree, k in zip(trees, tree_info, strict=True):
            leaf = tree.leaves(X, self.backend)
            margin[:, k] += tree.value[leaf].astype(np.float64)
        if trees:
            self._test_offsets = np.zeros_like(self._test_offsets)

    def predictions(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """Return (labels, predictions) of the current model on train or test rows."""
        objective = self.state.objective
        if split == "train":
            return self.state.labels(), self.state.predictions()
        _, y, margin = self._test()
        return y, objective.transform(margin + self._test_offsets)

    def free(self) -> None:
        """Drop every row and per-row array."""
        if self._state is not None:
            self._state.free()
        self._state = None
        self._X_test = self._y_test = self._test_margin = None
        self._saved_test = None
        self._keys = self._roster = None

    # -- the calls the coordinator makes (tasks/boosting/exchange.py) ----------
    def join_secure(self, silo_index: int, peers_public: dict[int, bytes]) -> int:
        """Take ``silo_index`` in the roster of ``peers_public`` (mask from now on)."""
        if self._keys is None:
            raise RuntimeError(f"silo {self.silo!r}: opened without a key pair")
        self._roster = (silo_index, dict(peers_public))
        return len(peers_public)

    def _protect(
        self, histograms: NodeHistograms, context: MaskContext | None
    ) -> Histograms:
        """Return the histograms masked for ``context``, or as they are if None."""
        if context is None:
            if self._roster is not None:
                raise RuntimeError(
                    f"silo {self.silo!r}: secure aggregation is on; refusing to "
                    "send histograms in the clear"
                )
            return histograms
        if self._keys is None or self._roster is None or self._exponent is None:
            raise RuntimeError(f"silo {self.silo!r}: not set up for secure sums")
        if context in self._used:
            # Masking twice under one context would reveal the difference.
            raise RuntimeError(f"silo {self.silo!r}: context {context} used before")
        self._used.add(context)
        index, peers = self._roster
        return mask_histograms(
            histograms,
            index,
            self._keys.private,
            peers,
            context=context,
            exponent=self._exponent,
        )

    def start_round(
        self,
        exponent: int,
        context: MaskContext | None = None,
        into: NodeHistograms | None = None,
    ) -> Histograms:
        """Compute gradients on the grid ``2**-exponent``; return root histograms.

        ``into``: plain histograms of another silo on this worker to add these
        to (and return); ignored when masking (``context``).
        """
        started = time.thread_time()
        self._exponent = exponent
        into = into if context is None else None
        out = self._protect(self.state.start_round(exponent, into), context)
        self._busy("start_round", started)
        return out

    def grow_level(
        self,
        splits: Sequence[NodeSplit],
        nodes: Sequence[tuple[int, int]],
        context: MaskContext | None = None,
        into: NodeHistograms | None = None,
    ) -> Histograms:
        """Apply the level's splits; return histograms of the nodes to build.

        ``into`` as for :meth:`start_round`.
        """
        started = time.thread_time()
        into = into if context is None else None
        out = self._protect(self.state.level(splits, nodes, into), context)
        self._busy("grow_level", started)
        return out

    def save_margins(self) -> None:
        """Remember train and test margins at the start of a round of trees."""
        _, _, margin = self._test()
        self.state.save_margins()
        self._saved_test = (margin.copy(), self._test_offsets.copy())

    def restore_margins(self) -> None:
        """Undo the trees added since ``save_margins`` (an abandoned round)."""
        _, _, margin = self._test()
        if self._saved_test is None:
            raise RuntimeError(f"silo {self.silo!r}: no margins were saved")
        self.state.restore_margins()
        margin[:] = self._saved_test[0]
        self._test_offsets = self._saved_test[1].copy()

    def finish_round(self, trees: Sequence[Tree], loss: bool = True) -> LossSum | None:
        """Add the round's trees to the train and test margins; return the loss.

        The loss (None without ``loss``) is summed over the silo's training rows.
        """
        started = time.thread_time()
        total = self.state.finish_round(trees, loss)
        self.add_test_trees(trees, range(len(trees)))
        self._busy("finish_round", started)
        return total

    def timings(self) -> dict[str, float]:
        """Return the CPU seconds this silo has spent per call (its thread's)."""
        return dict(self.seconds)

    def _busy(self, call: str, started: float) -> None:
        self.seconds[call] = self.seconds.get(call, 0.0) + (
            time.thread_time() - started
        )

    def finish_and_start(
        self,
        trees: Sequence[Tree],
        exponent: int,
        loss: bool,
        context: MaskContext | None = None,
        into: NodeHistograms | None = None,
    ) -> tuple[LossSum | None, Histograms]:
        """Finish this round and start the next on the grid ``2**-exponent``."""
        return self.finish_round(trees, loss), self.start_round(exponent, context, into)

    def evaluate(self, setup: BoostingSetup, round_number: int) -> list[Evaluation]:
        """Score the current model on the silo's train and test rows."""
        return evaluate(self, setup, round_number)


#: The methods the coordinator may call on a silo.
CALLS = frozenset(
    {
        "start_round",
        "grow_level",
        "finish_round",
        "finish_and_start",
        "evaluate",
        "timings",
        "free",
        "join_secure",
        "save_margins",
        "restore_margins",
    }
)


# -- setup ---------------------------------------------------------------------


def _label_problem(
    silo: str, y: np.ndarray, setup: BoostingSetup, split: str
) -> str | None:
    """Return why labels do not suit the objective, or None."""
    k = max(setup.num_class, 2)
    if not (np.issubdtype(y.dtype, np.number) or y.dtype == np.bool_):
        classes = f" 0..{k - 1}" if setup.task == "classification" else ""
        return (
            f"{split} labels have dtype {y.dtype}; "
            f"xgboost needs numeric labels{classes}"
        )
    values = y.astype(np.float64)
    if not np.all(np.isfinite(values)):
        return f"{split} labels must be finite (no missing value or infinity)"
    if setup.task == "classification":
        bad = values[(values < 0) | (values >= k) | (values != np.floor(values))]
        if bad.size:
            return (
                f"{split} label {bad[0]:g} is not one of the classes 0..{k - 1} "
                f"of {setup.objective}"
            )
    problem = setup.make_objective().label_problem(values)
    return None if problem is None else f"{split} {problem}"


def _test_matrix(silo: str, frame: pd.DataFrame, features: Sequence[str]) -> np.ndarray:
    columns = []
    for name in features:
        col = frame[name]
        if not (pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col)):
            raise SiloDataError(
                silo,
                f"test rows have dtype {col.dtype}; features must be numeric",
                column=name,
            )
        values = col.to_numpy(dtype=np.float32, na_value=np.nan)
        if np.isinf(values).any():
            raise SiloDataError(silo, "test rows have infinite values", column=name)
        columns.append(values)
    if not columns:
        return np.empty((len(frame), 0), np.float32)
    return np.ascontiguousarray(np.column_stack(columns))


def prepare_rows(data: SiloData, setup: BoostingSetup) -> BoostingRows:
    """Validate the silo's rows for boosting; errors name the silo and column."""
    silo = data.silo
    objective = setup.make_objective()
    for split, frame in (("train", data.train), ("test", data.test)):
        y = frame[setup.target].to_numpy()
        if pd.isna(y).any():
            raise SiloDataError(
                silo, f"{split} rows have missing labels", column=setup.target
            )
        problem = _label_problem(silo, y, setup, split)
        if problem is not None:
            raise SiloDataError(silo, problem, column=setup.target)
    features = list(setup.features)
    train = prepare_silo_data(
        silo,
        data.train[features],
        data.train[setup.target].to_numpy().astype(np.float64),
        objective,
        label=setup.target,
    )
    return BoostingRows(
        silo=silo,
        train=train,
        X_test=_test_matrix(silo, data.test, features),
        y_test=data.test[setup.target].to_numpy().astype(np.float64),
    )


def sketch_rows(
    rows: BoostingRows, setup: BoostingSetup, max_size: int | None
) -> SiloSketch:
    """Summarise the labels and (unless ``max_size`` is None) every feature column."""
    objective = setup.make_objective()
    summaries = () if max_size is None else tuple(summarize(rows.train.X, max_size))
    return SiloSketch(
        silo=rows.silo,
        summaries=summaries,
        n_rows=int(rows.train.X.shape[0]),
        label_stats=objective.label_stats(rows.train.y),
        label_bound=objective.label_bound(rows.train.y),
    )


def open_silo(
    rows: BoostingRows,
    setup: BoostingSetup,
    cuts: Sequence[np.ndarray],
    intercept: Intercept,
    trees: Sequence[Tree] = (),
    tree_info: Sequence[int] = (),
    keys: KeyPair | None = None,
) -> BoostingSilo:
    """Bin the silo's rows once with the federation's cuts; replay saved trees.

    ``keys`` is the silo's key pair for secure aggregation (made on this worker).
    """
    objective = setup.make_objective()
    state = SiloTreeState.create(rows.silo, rows.train, cuts, objective, setup.backend)
    state.set_intercept(intercept)
    state.gradient_clip = setup.gradient_clip
    silo = BoostingSilo(
        rows.silo, state, rows.X_test, rows.y_test, intercept, setup.backend
    )
    silo._keys = keys
    if trees:
        state.replay(trees, tree_info)
        silo.add_test_trees(trees, tree_info)
    return silo


def evaluate(
    silo: BoostingSilo, setup: BoostingSetup, round_number: int
) -> list[Evaluation]:
    """Score the current model on the silo's train and test rows (sums included)."""
    labels = setup.task == "classification"
    predictions = []
    for split in ("train", "test"):
        y, predicted = silo.predictions(split)
        predictions.append((split, y.astype(np.int64) if labels else y, predicted))
    return evaluations(
        silo.silo, round_number, worker_name(), setup.task, setup.classes, predictions
    )


def n_rows(rows: BoostingRows) -> int:
    """Return a silo's training rows (run on the silo: it never imports Prefect)."""
    return int(rows.train.X.shape[0])
