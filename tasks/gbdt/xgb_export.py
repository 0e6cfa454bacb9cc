"""Write a boosted model as standard XGBoost JSON, read it back, tabulate trees.

What stock XGBoost needs (verified on 2.1 to 3.2, see docs/gbdt.md): nodes numbered
breadth-first with ``right = left + 1``; float arrays as float literals; tree
``id`` equal to its position; real covers in ``sum_hessian``; leaf values in
``split_conditions``; ``base_score`` as one shortest float32 string;
``boost_from_average`` "0". The cut points ride along in ``attributes`` so a
checkpointed model resumes exactly.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tasks.gbdt.model import GBDTModel, Tree, predict, predict_margin

__all__ = [
    "ExportCache",
    "dumps",
    "model_from_json",
    "model_to_json",
    "predict",
    "predict_margin",
    "save_model",
    "trees_dataframe",
]

#: Version written into the file: the oldest format whose fields we write.
FORMAT_VERSION = (2, 1, 0)
CUTS_ATTRIBUTE = "fedsilo_cuts"


def _floats(values: np.ndarray) -> list[float]:
    """Return float32 values as Python floats with the shortest exact decimals."""
    arr = np.asarray(values, dtype=np.float32)
    short = [float(str(v)) for v in arr]
    if not np.array_equal(np.array(short, np.float32), arr):
        return [float(v) for v in arr.astype(np.float64)]
    return short


def _shortest(value: np.float32 | float) -> str:
    return str(np.float32(value))


def _tree_json(tree: Tree, tree_id: int, num_feature: int) -> dict[str, Any]:
    n = tree.n_nodes
    leaf = tree.is_leaf
    conditions = np.where(leaf, tree.value, tree.threshold)
    return {
        "base_weights": _floats(tree.value),
        "categories": [],
        "categories_nodes": [],
        "categories_segments": [],
        "categories_sizes": [],
        "default_left": [int(v) for v in tree.default_left],
        "id": tree_id,
        "left_children": [int(v) for v in tree.left],
        "loss_changes": _floats(np.where(leaf, 0.0, tree.gain)),
        "parents": [int(v) for v in tree.parent],
        "right_children": [int(v) for v in tree.right],
        "split_conditions": _floats(conditions),
        "split_indices": [int(v) for v in np.where(leaf, 0, tree.feature)],
        "split_type": [0] * n,
        "sum_hessian": _floats(tree.cover),
        "tree_param": {
            "num_deleted": "0",
            "num_feature": str(num_feature),
            "num_nodes": str(n),
            "size_leaf_vector": "1",
        },
    }


def _objective_json(model: GBDTModel) -> dict[str, Any]:
    if model.objective == "multi:softprob":
        return {
            "name": model.objective,
            "softmax_multiclass_param": {"num_class": str(model.num_class)},
        }
    return {"name": model.objective, "reg_loss_param": {"scale_pos_weight": "1"}}


class ExportCache:
    """Each tree's JSON text and table rows, kept between a run's checkpoints.

    A run checkpoints a growing model every round; its trees never change, so
    each is written out once. Entries hold their tree (its id is not reused
    while cached) and are keyed by what the output depends on.
    """

    def __init__(self) -> None:
        self._text: dict[tuple[int, int, int], tuple[Tree, str]] = {}
        self._rows: dict[tuple[int, int, tuple[str, ...]], tuple[Tree, _Rows]] = {}

    def tree_text(self, tree: Tree, tree_id: int, num_feature: int) -> str:
        """Return the tree's XGBoost JSON text (compact separators)."""
        key = (id(tree), tree_id, num_feature)
        hit = self._text.get(key)
        if hit is None or hit[0] is not tree:
            text = json.dumps(_tree_json(tree, tree_id, num_feature), separators=SEP)
            hit = self._text[key] = (tree, text)
        return hit[1]

    def tree_rows(self, tree: Tree, tree_id: int, names: tuple[str, ...]) -> _Rows:
        """Return the tree's rows of ``trees_dataframe``, by column."""
        key = (id(tree), tree_id, names)
        hit = self._rows.get(key)
        if hit is None or hit[0] is not tree:
            hit = self._rows[key] = (tree, _tree_rows(tree, tree_id, names))
        return hit[1]


_Rows = dict[str, list[Any]]
SEP = (",", ":")
#: Stands for the trees in the JSON text until the cached tree texts go there.
_TREES = "fedsilo-trees-placeholder"


def model_to_json(model: GBDTModel) -> dict[str, Any]:
    """Return the model as an XGBoost JSON document (a dict)."""
    return _document(
        model, [_tree_json(t, i, model.num_feature) for i, t in enumerate(model.trees)]
    )


def _document(model: GBDTModel, trees: Any) -> dict[str, Any]:
    """Return the XGBoost JSON document with ``trees`` as its list of trees."""
    k = model.n_outputs
    cuts = [_floats(c) for c in model.cuts]
    names = list(model.feature_names) if model.feature_names is not None else []
    return {
        "learner": {
            "attributes": {CUTS_ATTRIBUTE: json.dumps(cuts, separators=(",", ":"))},
            "feature_names": names,
            "feature_types": ["float"] * len(names),
            "gradient_booster": {
                "model": {
                    "gbtree_model_param": {
                        "num_parallel_tree": "1",
                        "num_trees": str(len(model.trees)),
                    },
                    "iteration_indptr": list(range(0, len(model.trees) + 1, k)),
                    "tree_info": [int(v) for v in model.tree_info],
                    "trees": trees,
                },
                "name": "gbtree",
            },
            "learner_model_param": {
                "base_score": _shortest(model.base_score),
                "boost_from_average": "0",
                "num_class": str(model.num_class),
                "num_feature": str(model.num_feature),
                "num_target": "1",
            },
            "objective": _objective_json(model),
        },
        "version": list(FORMAT_VERSION),
    }


def dumps(model: GBDTModel, cache: ExportCache | None = None) -> str:
    """Return the model as XGBoost JSON text (trees from ``cache`` when given)."""
    cache = cache if cache is not None else ExportCache()
    text = json.dumps(_document(model, _TREES), separators=SEP)
    trees = ",".join(
        cache.tree_text(t, i, model.num_feature) for i, t in enumerate(model.trees)
    )
    # Unescaped quotes around the key: this cannot occur inside a JSON string.
    marker = f'"trees":{json.dumps(_TREES)}'
    head, found, tail = text.partition(marker)
    if not found:  # pragma: no cover - _document always writes it
        raise RuntimeError("the trees placeholder is missing from the document")
    return f'{head}"trees":[{trees}]{tail}'


def save_model(model: GBDTModel, path: str | Path) -> None:
    """Write the model as an XGBoost JSON file (load with ``xgboost.Booster``)."""
    Path(path).write_text(dumps(model))


def _tree_from_json(t: dict[str, Any], cuts: Sequence[np.ndarray]) -> Tree:
    left = np.array(t["left_children"], np.int32)
    leaf = left < 0
    feature = np.where(leaf, 0, np.array(t["split_indices"], np.int32)).astype(np.int32)
    conditions = np.array(t["split_conditions"], np.float32)
    threshold = np.where(leaf, np.float32(0.0), conditions).astype(np.float32)
    split_bin = np.full(left.shape[0], -1, np.int32)
    for i in np.flatnonzero(~leaf):
        c = cuts[feature[i]]
        k = int(np.searchsorted(c, threshold[i]))
        if k >= c.size or c[k] != threshold[i]:
            raise ValueError(f"threshold {threshold[i]} is not a cut point")
        split_bin[i] = k
    return Tree(
        left=left,
        right=np.array(t["right_children"], np.int32),
        parent=np.array(t["parents"], np.int32),
        feature=feature,
        split_bin=split_bin,
        threshold=threshold,
        default_left=np.array(t["default_left"], bool),
        value=np.array(t["base_weights"], np.float32),
        gain=np.array(t["loss_changes"], np.float32),
        cover=np.array(t["sum_hessian"], np.float32),
    )


def model_from_json(doc: dict[str, Any] | str) -> GBDTModel:
    """Read back a model written by ``model_to_json`` (cut points included)."""
    if isinstance(doc, str):
        doc = json.loads(doc)
    assert isinstance(doc, dict)
    learner = doc["learner"]
    raw_cuts = learner.get("attributes", {}).get(CUTS_ATTRIBUTE)
    if raw_cuts is None:
        raise ValueError("not a fedsilo model: the cut points are missing")
    cuts = tuple(np.array(c, np.float32) for c in json.loads(raw_cuts))
    booster = learner["gradient_booster"]["model"]
    param = learner["learner_model_param"]
    names = learner.get("feature_names") or None
    return GBDTModel(
        objective=learner["objective"]["name"],
        num_class=int(param["num_class"]),
        num_feature=int(param["num_feature"]),
        base_score=np.float32(param["base_score"]),
        trees=tuple(_tree_from_json(t, cuts) for t in booster["trees"]),
        tree_info=tuple(int(v) for v in booster["tree_info"]),
        cuts=cuts,
        feature_names=tuple(names) if names else None,
    )


_COLUMNS = (
    "Tree",
    "Node",
    "ID",
    "Feature",
    "Split",
    "Yes",
    "No",
    "Missing",
    "Gain",
    "Cover",
    "Category",
)


def _tree_rows(tree: Tree, i: int, names: tuple[str, ...]) -> _Rows:
    """Return one tree's rows of ``trees_dataframe``, by column."""
    rows: _Rows = {c: [] for c in _COLUMNS}
    for n in range(tree.n_nodes):
        leaf = bool(tree.left[n] < 0)
        rows["Tree"].append(i)
        rows["Node"].append(n)
        rows["ID"].append(f"{i}-{n}")
        rows["Feature"].append("Leaf" if leaf else names[tree.feature[n]])
        rows["Split"].append(np.nan if leaf else float(tree.threshold[n]))
        yes, no = f"{i}-{tree.left[n]}", f"{i}-{tree.right[n]}"
        rows["Yes"].append(np.nan if leaf else yes)
        rows["No"].append(np.nan if leaf else no)
        rows["Missing"].append(
            np.nan if leaf else (yes if tree.default_left[n] else no)
        )
        rows["Gain"].append(float(tree.value[n] if leaf else tree.gain[n]))
        rows["Cover"].append(float(tree.cover[n]))
        rows["Category"].append(np.nan)
    return rows


def trees_dataframe(model: GBDTModel, cache: ExportCache | None = None) -> pd.DataFrame:
    """Return the table ``xgboost.Booster.trees_to_dataframe()`` gives.

    Columns: Tree, Node, ID, Feature, Split, Yes, No, Missing, Gain, Cover,
    Category; for a leaf, Feature is "Leaf" and Gain holds the leaf value.
    Rows of trees come from ``cache`` when given.
    """
    cache = cache if cache is not None else ExportCache()
    names = model.feature_names or tuple(f"f{j}" for j in range(model.num_feature))
    parts = [cache.tree_rows(t, i, tuple(names)) for i, t in enumerate(model.trees)]
    frame = pd.DataFrame(
        {c: list(itertools.chain.from_iterable(p[c] for p in parts)) for c in _COLUMNS}
    )
    return frame.astype({"Tree": "int64", "Node": "int64", "Category": "float64"})
