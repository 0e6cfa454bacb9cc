"""Boosting parameters under XGBoost's names, validated into one frozen object.

Part of the spec: ``model.params`` of kind ``xgboost`` is checked here when
the spec is parsed, before any silo or cluster is touched.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fedsilo.errors import SpecError

#: The most bins a feature may have (bins are stored as uint16).
MAX_BINS = 65_536
OBJECTIVES = ("binary:logistic", "reg:squarederror", "multi:softprob")
ALIASES = {
    "learning_rate": "eta",
    "lambda": "reg_lambda",
    "alpha": "reg_alpha",
    "min_split_loss": "gamma",
}
#: Accepted for compatibility with XGBoost parameter sets; they change nothing.
IGNORED = frozenset({"nthread", "n_jobs", "seed", "random_state", "verbosity"})
#: Accepted only with the value this learner implements.
FIXED = {"tree_method": "hist", "grow_policy": "depthwise", "booster": "gbtree"}
_FLOATS = ("eta", "reg_lambda", "reg_alpha", "gamma", "min_child_weight")
_INTS = ("max_depth", "max_bin", "num_class", "num_boost_round")


@dataclass(frozen=True, slots=True)
class TreeParams:
    """Regularisation of one tree (XGBoost's names without aliases)."""

    eta: float = 0.3
    max_depth: int = 6
    reg_lambda: float = 1.0
    reg_alpha: float = 0.0
    gamma: float = 0.0
    min_child_weight: float = 1.0


@dataclass(frozen=True, slots=True)
class GBDTParams:
    """Everything that shapes a federated boosted model."""

    objective: str = "reg:squarederror"
    num_class: int = 0
    num_boost_round: int = 10
    max_bin: int = 256
    base_score: float | None = None
    tree: TreeParams = field(default_factory=TreeParams)

    @property
    def n_outputs(self) -> int:
        """Return the number of trees grown per round."""
        return self.num_class if self.objective == "multi:softprob" else 1

    @classmethod
    def from_dict(cls, params: Mapping[str, Any]) -> GBDTParams:
        """Validate XGBoost-style parameters; raise SpecError naming the fault."""
        values: dict[str, Any] = {}
        for key, value in params.items():
            name = ALIASES.get(key, key)
            if name in values and values[name] != value:
                raise SpecError(
                    f"parameter {name!r} is given twice with different values"
                )
            values[name] = value
        for key in IGNORED:
            values.pop(key, None)
        for key, wanted in FIXED.items():
            if key in values and values.pop(key) != wanted:
                raise SpecError(f"parameter {key!r} must be {wanted!r} (or left out)")
        known = {"objective", "base_score", *(_FLOATS), *(_INTS)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SpecError(f"unknown GBDT parameter(s): {', '.join(unknown)}")
        for key in _INTS:
            if key in values:
                v = values[key]
                if isinstance(v, bool) or not isinstance(v, int):
                    raise SpecError(f"parameter {key!r} must be an integer, got {v!r}")
        for key in (*_FLOATS, "base_score"):
            v = values.get(key)
            if v is not None and (
                isinstance(v, bool) or not isinstance(v, int | float)
            ):
                raise SpecError(f"parameter {key!r} must be a number, got {v!r}")
        tree_keys = {
            "eta",
            "max_depth",
            "reg_lambda",
            "reg_alpha",
            "gamma",
            "min_child_weight",
        }
        tree = TreeParams(**{k: v for k, v in values.items() if k in tree_keys})
        top = ("objective", "num_class", "num_boost_round", "max_bin", "base_score")
        p = cls(**{k: values[k] for k in top if k in values}, tree=tree)
        p.check()
        return p

    def check(self) -> None:
        """Raise SpecError when a value is out of range."""
        t = self.tree
        if self.objective not in OBJECTIVES:
            raise SpecError(
                f"objective {self.objective!r} is not supported; use one of "
                + ", ".join(OBJECTIVES)
            )
        if self.objective == "multi:softprob" and self.num_class < 2:
            raise SpecError("multi:softprob needs num_class >= 2")
        if self.objective != "multi:softprob" and self.num_class not in (0, 1):
            raise SpecError(
                f"num_class is only for multi:softprob, got {self.num_class}"
            )
        if not 2 <= self.max_bin <= MAX_BINS:
            raise SpecError(f"max_bin must be in [2, {MAX_BINS}], got {self.max_bin}")
        if self.num_boost_round < 1:
            raise SpecError("num_boost_round must be at least 1")
        if t.max_depth < 1:
            raise SpecError("max_depth must be at least 1 (depthwise growth)")
        if not t.eta > 0:
            raise SpecError("eta (learning_rate) must be positive")
        for name in ("reg_lambda", "reg_alpha", "gamma", "min_child_weight"):
            if not getattr(t, name) >= 0:
                raise SpecError(f"{name} must be non-negative")
