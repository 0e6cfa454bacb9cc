"""The coordinator's side: grow trees level by level from summed histograms.

Growth is depth-wise like XGBoost's ``hist`` with ``grow_policy=depthwise``. The
coordinator talks to the silos only through a ``Federation``: three calls per
round (start, one per level, finish) that return summed aggregates, so the same
code runs in memory for tests and over Dask. One round grows one tree per output
(``num_class`` for ``multi:softprob``) in lockstep, so a level is one exchange.
Only the smaller child of each split is built; its sibling is the parent's
histogram minus it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from fedsilo.errors import SiloDataError
from fedsilo.gbdt_params import GBDTParams, TreeParams
from tasks.gbdt.histogram import (
    Backend,
    NodeHistograms,
    gradient_exponent,
    subtract,
    sum_histograms,
)
from tasks.gbdt.model import ROOT_PARENT, GBDTModel, Tree
from tasks.gbdt.objective import Intercept, make_objective
from tasks.gbdt.silo_state import (
    LossSum,
    NodeSplit,
    SiloTreeState,
    prepare_silo_data,
    sum_losses,
)
from tasks.gbdt.sketch import cut_points, merge_sketches, sketch_size, summarize
from tasks.gbdt.split import SplitInfo, find_splits, leaf_weight

#: Histograms of some frontier nodes: sums (m, F, W, 2) and their (tree, node) keys.
_Block = tuple[np.ndarray, list[tuple[int, int]]]


class Federation(Protocol):
    """The silos as the coordinator sees them; every answer is a sum over silos."""

    def start_round(self, exponent: int) -> NodeHistograms:
        """Compute gradients on the grid ``2**-exponent``; return root histograms."""
        ...

    def level(
        self, splits: Sequence[NodeSplit], nodes: Sequence[tuple[int, int]]
    ) -> NodeHistograms:
        """Apply ``splits`` at every silo; return summed histograms of ``nodes``."""
        ...

    def finish_round(self, trees: Sequence[Tree], loss: bool = True) -> LossSum | None:
        """Add the round's trees to every silo's margins; return the summed loss.

        With ``loss=False`` the silos skip computing it and None comes back.
        """
        ...


class InMemoryFederation:
    """Silos simulated in one process (tests, benchmarks, ``train_in_memory``)."""

    def __init__(self, silos: Sequence[SiloTreeState]) -> None:
        self.silos = list(silos)

    def start_round(self, exponent: int) -> NodeHistograms:
        """Return the silos' summed root histograms."""
        return sum_histograms([s.start_round(exponent) for s in self.silos])

    def level(
        self, splits: Sequence[NodeSplit], nodes: Sequence[tuple[int, int]]
    ) -> NodeHistograms:
        """Return the silos' summed histograms after applying ``splits``."""
        return sum_histograms([s.level(splits, nodes) for s in self.silos])

    def finish_round(self, trees: Sequence[Tree], loss: bool = True) -> LossSum | None:
        """Return the silos' summed loss after adding ``trees`` (None: not asked)."""
        return sum_losses([s.finish_round(trees, loss) for s in self.silos])


class _TreeBuilder:
    """Nodes of one tree under construction, numbered breadth-first."""

    def __init__(self, grad: float, hess: float) -> None:
        self.parent = [ROOT_PARENT]
        self.left = [-1]
        self.feature = [0]
        self.split_bin = [-1]
        self.threshold = [np.float32(0.0)]
        self.default_left = [False]
        self.gain = [0.0]
        self.grad = [grad]
        self.hess = [hess]

    def split(self, node: int, s: SplitInfo) -> int:
        left = len(self.parent)
        self.left[node] = left
        self.feature[node] = s.feature
        self.split_bin[node] = s.bin
        self.threshold[node] = s.threshold
        self.default_left[node] = s.default_left
        self.gain[node] = s.gain
        for g, h in ((s.left_grad, s.left_hess), (s.right_grad, s.right_hess)):
            self.parent.append(node)
            self.left.append(-1)
            self.feature.append(0)
            self.split_bin.append(-1)
            self.threshold.append(np.float32(0.0))
            self.default_left.append(False)
            self.gain.append(0.0)
            self.grad.append(g)
            self.hess.append(h)
        return left

    def finish(self, p: TreeParams, offset: float) -> Tree:
        left = np.array(self.left, np.int32)
        weights = [
            leaf_weight(g, h, p) + offset
            for g, h in zip(self.grad, self.hess, strict=True)
        ]
        threshold = np.array(self.threshold, np.float32)
        return Tree(
            left=left,
            right=np.where(left >= 0, left + 1, -1).astype(np.int32),
            parent=np.array(self.parent, np.int32),
            feature=np.array(self.feature, np.int32),
            split_bin=np.array(self.split_bin, np.int32),
            threshold=threshold,
            default_left=np.array(self.default_left, bool),
            value=np.array(weights, np.float32),
            gain=np.array(self.gain, np.float32),
            cover=np.array(self.hess, np.float32),
        )


def _node_totals(
    builders: Sequence[_TreeBuilder],
    rows: Mapping[tuple[int, int], float],
    keys: Sequence[tuple[int, int]],
) -> np.ndarray:
    """Return (G, H, rows) of each (tree, node) in ``keys``."""
    return np.array(
        [(builders[t].grad[n], builders[t].hess[n], rows[t, n]) for t, n in keys]
    )


def grow_round(
    federation: Federation,
    cuts: Sequence[np.ndarray],
    p: TreeParams,
    offsets: np.ndarray,
    exponent: int,
    loss: bool = True,
) -> tuple[list[Tree], LossSum | None]:
    """Grow one tree per output from summed histograms; return trees and loss.

    The training loss after the trees is summed only when ``loss`` is set.

    ``offsets`` (one per output) are added to every node value: the multi-class
    intercepts in the first round, zeros otherwise. Silos round gradients to
    multiples of ``2**-exponent`` (see ``histogram.gradient_exponent``).
    """
    roots = federation.start_round(exponent)
    n_trees = roots.n_nodes
    frontier = [(int(t), int(n)) for t, n in roots.nodes]
    builders = [_TreeBuilder(*roots.totals[i, :2]) for i in range(n_trees)]
    # The frontier's histograms stay where they arrived (the summed replies) or
    # were derived (one array of siblings per level): no copy into one array.
    blocks: list[_Block] = [(roots.sums, frontier)]
    rows = {k: float(roots.totals[i, 2]) for i, k in enumerate(frontier)}
    depth = 0
    while frontier and depth < p.max_depth:
        found: dict[tuple[int, int], SplitInfo | None] = {}
        where: dict[tuple[int, int], np.ndarray] = {}
        for sums, keys in blocks:
            totals = _node_totals(builders, rows, keys)
            found.update(zip(keys, find_splits(sums, totals, cuts, p), strict=True))
            where.update(zip(keys, sums, strict=True))
        splits: list[NodeSplit] = []
        build: list[tuple[int, int]] = []
        pairs: list[tuple[tuple[int, int], tuple[int, int], tuple[int, int]]] = []
        for t, node in sorted(found):  # breadth-first: node ids in order
            s = found[t, node]
            if s is None:
                continue
            left = builders[t].split(node, s)
            splits.append(NodeSplit(t, node, s.feature, s.bin, s.default_left, left))
            small = (t, left + 1) if s.right_hess < s.left_hess else (t, left)
            other = (t, left) if small[1] == left + 1 else (t, left + 1)
            build.append(small)
            pairs.append(((t, node), small, other))
        depth += 1
        if not splits or depth == p.max_depth:
            break  # children are leaves; silos route rows to them in finish_round
        built = federation.level(splits, build)
        index = built.index()
        siblings = np.empty((len(pairs), *built.sums.shape[1:]))
        for j, (parent, small, other) in enumerate(pairs):
            i = index[small]
            subtract(where[parent], built.sums[i], out=siblings[j])
            rows[small] = float(built.totals[i, 2])
            rows[other] = rows[parent] - rows[small]
        blocks = [
            (built.sums, [(int(t), int(n)) for t, n in built.nodes]),
            (siblings, [other for _, _, other in pairs]),
        ]
        frontier = build
    trees = [b.finish(p, float(offsets[t])) for t, b in enumerate(builders)]
    return trees, federation.finish_round(trees, loss)


@dataclass(frozen=True, slots=True)
class RoundResult:
    """What the coordinator learns from one round: train loss and metric."""

    round: int
    loss: LossSum
    metric: str
    value: float


def train(
    federation: Federation,
    cuts: Sequence[np.ndarray],
    params: GBDTParams,
    intercept: Intercept,
    *,
    n_rows: int,
    label_bound: float,
    feature_names: Sequence[str] | None = None,
    init_model: GBDTModel | None = None,
    callback: Callable[[GBDTModel, RoundResult], None] | None = None,
) -> GBDTModel:
    """Boost ``num_boost_round`` rounds (after ``init_model``'s, when resuming).

    The silos must have ``set_intercept`` done (and, when resuming, the model's
    trees replayed); ``n_rows`` is the federated row count and ``label_bound``
    the largest silo ``label_bound()``: with the trees they bound the gradients,
    which fixes each round's gradient grid. ``callback`` sees the model after
    every round, e.g. to checkpoint it.
    """
    objective = make_objective(params.objective, params.num_class)
    trees: list[Tree] = list(init_model.trees) if init_model else []
    info: list[int] = list(init_model.tree_info) if init_model else []
    start = init_model.n_rounds if init_model else 0
    model = GBDTModel(
        objective=params.objective,
        num_class=params.num_class if params.objective == "multi:softprob" else 0,
        num_feature=len(cuts),
        base_score=intercept.base_score,
        trees=tuple(trees),
        tree_info=tuple(info),
        cuts=tuple(cuts),
        feature_names=tuple(feature_names) if feature_names is not None else None,
    )
    margin_bound = abs(intercept.base_margin) + float(np.max(np.abs(intercept.offsets)))
    margin_bound += sum(float(np.max(np.abs(t.value))) for t in trees)
    for r in range(start, start + params.num_boost_round):
        offsets = intercept.offsets if r == 0 else np.zeros(params.n_outputs)
        bound = objective.gradient_bound(label_bound, margin_bound)
        exponent = gradient_exponent(n_rows, bound)
        new, loss = grow_round(
            federation, cuts, params.tree, offsets, exponent, callback is not None
        )
        margin_bound += sum(float(np.max(np.abs(t.value))) for t in new)
        trees.extend(new)
        info.extend(range(len(new)))
        model = GBDTModel(
            objective=model.objective,
            num_class=model.num_class,
            num_feature=model.num_feature,
            base_score=model.base_score,
            trees=tuple(trees),
            tree_info=tuple(info),
            cuts=model.cuts,
            feature_names=model.feature_names,
        )
        if callback is not None and loss is not None:
            value = objective.metric_value(loss.loss_sum, loss.n_samples)
            callback(model, RoundResult(r, loss, objective.metric, value))
    return model


def federated_cuts(data: Sequence[np.ndarray], max_bin: int) -> list[np.ndarray]:
    """Return cut points from per-silo sketches (each silo's float32 features)."""
    size = sketch_size(max_bin)
    return cut_points(merge_sketches([summarize(X, size) for X in data], size), max_bin)


def train_in_memory(
    silos: Sequence[tuple[Any, Any]],
    params: Mapping[str, Any] | GBDTParams,
    *,
    names: Sequence[str] | None = None,
    cuts: Sequence[np.ndarray] | None = None,
    backend: Backend = "auto",
    callback: Callable[[GBDTModel, RoundResult], None] | None = None,
) -> GBDTModel:
    """Train on silos ``[(X, y), ...]`` simulated in one process.

    Cut points come from merged per-silo quantile summaries unless ``cuts`` is
    given; the intercept comes from summed label statistics.
    """
    p = params if isinstance(params, GBDTParams) else GBDTParams.from_dict(params)
    objective = make_objective(p.objective, p.num_class)
    names = (
        list(names) if names is not None else [f"silo-{i}" for i in range(len(silos))]
    )
    if len(names) != len(silos):
        raise ValueError("names and silos differ in length")
    if not silos:
        raise ValueError("no silos to train on")
    data = [
        prepare_silo_data(
            name, X, y, objective, label=str(getattr(y, "name", None) or "label")
        )
        for name, (X, y) in zip(names, silos, strict=True)
    ]
    reference = data[0].feature_names
    for name, d in zip(names, data, strict=True):
        if len(d.feature_names) != len(reference):
            raise SiloDataError(
                name, f"has {len(d.feature_names)} features, expected {len(reference)}"
            )
        for got, want in zip(d.feature_names, reference, strict=True):
            if got != want:
                raise SiloDataError(
                    name, f"feature {got!r} where {want!r} was expected", column=got
                )
    if cuts is None:
        cuts = federated_cuts([d.X for d in data], p.max_bin)
    elif len(cuts) != len(reference):
        raise ValueError(f"{len(cuts)} cut arrays for {len(reference)} features")
    stats = np.sum([objective.label_stats(d.y) for d in data], axis=0)
    intercept = objective.intercept(stats, p.base_score)
    states = [
        SiloTreeState.create(n, d, cuts, objective, backend)
        for n, d in zip(names, data, strict=True)
    ]
    for s in states:
        s.set_intercept(intercept)
    default = tuple(f"f{j}" for j in range(len(reference)))
    named = None if reference == default else reference
    try:
        return train(
            InMemoryFederation(states),
            cuts,
            p,
            intercept,
            n_rows=objective.n_rows(stats),
            label_bound=max(s.label_bound() for s in states),
            feature_names=named,
            callback=callback,
        )
    finally:
        for s in states:
            s.free()
