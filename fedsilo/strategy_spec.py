"""What a spec says of its strategy: the common fields, and each kind's own.

``StrategySpec`` holds the fields every strategy has; each kind is a subclass
with its own fields, registered under its ``kind`` with
:func:`register_strategy_spec`. Validating (or constructing) a
``StrategySpec`` dispatches on ``kind`` to the registered subclass, so
``StrategySpec(kind="krum", byzantine=2)`` is a :class:`KrumSpec` and a spec
without ``kind`` is :class:`FedAvgSpec`. How a kind combines updates lives in
``tasks/averaging/strategies.py``, registered under the same kind.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    ModelWrapValidatorHandler,
    ValidationError,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import InitErrorDetails, PydanticCustomError, core_schema

from fedsilo.registry import Registry

DEFAULT_KIND = "fedavg"


class ServerOptimizerSpec(BaseModel):
    """An optimiser stepping on the round's pseudo-gradient (Reddi et al. 2021)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["fedavgm", "fedadagrad", "fedadam", "fedyogi"]
    learning_rate: float = Field(1.0, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    beta1: float = Field(0.9, ge=0.0, lt=1.0)
    beta2: float = Field(0.99, ge=0.0, lt=1.0)
    tau: float = Field(1e-3, gt=0.0)


class StrategySpec(BaseModel):
    """How updates are combined and which silos take part in a round.

    The fields here are every kind's; a kind's subclass adds its own. A
    subclass may set :attr:`sums_suffice` and override :meth:`silos_needed`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str = DEFAULT_KIND
    fraction: float = Field(1.0, gt=0.0, le=1.0)
    min_silos: int = Field(1, ge=1)
    deadline: float | None = Field(
        None, gt=0.0, description="seconds a round waits for local fits"
    )
    norm_bound: float | None = Field(
        None, gt=0.0, description="reject updates farther than this from the model"
    )
    server_optimizer: ServerOptimizerSpec | None = None

    #: Whether the weighted sum of the updates is all the strategy needs: only
    #: such a strategy works with secure aggregation and DP, which hide single
    #: updates from the coordinator.
    sums_suffice: ClassVar[bool] = False

    def __new__(cls, **data: Any) -> StrategySpec:
        """Make ``StrategySpec(kind=...)`` an instance of the kind's subclass."""
        target: type[StrategySpec] = cls
        if cls is StrategySpec and data.get("kind", DEFAULT_KIND) in _SPECS:
            target = _SPECS.get(data.get("kind", DEFAULT_KIND))
        return super().__new__(target)

    def silos_needed(self) -> int:
        """Return the fewest silos the strategy can work with."""
        return 1

    def describe(self) -> str:
        """Return the strategy as messages name it."""
        return f"strategy {self.kind!r}"

    @model_validator(mode="wrap")
    @classmethod
    def _dispatch(
        cls, data: Any, handler: ModelWrapValidatorHandler[StrategySpec]
    ) -> StrategySpec:
        """Validate a mapping as the subclass registered under its ``kind``."""
        if cls is not StrategySpec or not isinstance(data, Mapping):
            return handler(data)
        kind = data.get("kind", DEFAULT_KIND)
        if kind not in _SPECS:
            error = PydanticCustomError("unknown_kind", _SPECS.unknown(kind))
            raise ValidationError.from_exception_data(
                cls.__name__,
                [InitErrorDetails(type=error, loc=("kind",), input=kind)],
            )
        return _SPECS.get(kind).model_validate(data)

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        """Describe the base as any one of the registered kinds."""
        if cls is not StrategySpec:
            return handler(schema)
        kinds = [handler(_SPECS.get(k).__pydantic_core_schema__) for k in _SPECS]
        return {"anyOf": kinds, "title": "StrategySpec"}


Spec = TypeVar("Spec", bound=StrategySpec)
_SPECS: Registry[type[StrategySpec]] = Registry("strategy kind")


def register_strategy_spec(cls: type[Spec]) -> type[Spec]:
    """Register a :class:`StrategySpec` subclass under its ``kind`` field's default.

    Used as a class decorator; the subclass declares
    ``kind: Literal["name"] = "name"``.
    """
    kind = cls.model_fields["kind"].default
    if not isinstance(kind, str):
        raise TypeError(f"{cls.__name__}: give kind a string default")
    _SPECS.register(kind, cls)
    return cls


def strategy_kinds() -> list[str]:
    """Return the registered strategy kinds."""
    return _SPECS.kinds()


def own_fields(data: Mapping[str, Any]) -> dict[str, Any]:
    """Return a strategy mapping without the fields its kind does not have.

    Specs recorded before each kind had its own fields list every kind's (at
    no effect on the others); this reads them back.
    """
    kind = data.get("kind", DEFAULT_KIND)
    if kind not in _SPECS:
        return dict(data)
    fields = _SPECS.get(kind).model_fields
    return {key: value for key, value in data.items() if key in fields}


@register_strategy_spec
class FedAvgSpec(StrategySpec):
    """FedAvg: the average of the updates weighted by training rows."""

    kind: Literal["fedavg"] = "fedavg"
    sums_suffice: ClassVar[bool] = True


class _WeighingSpec(StrategySpec):
    """A robust kind that counts every update once unless told to weigh by rows.

    A silo reports its own training row count, so a weight taken from it is
    the silo's word: ``weighting: uniform`` (the default) ignores it;
    ``weighting: rows`` weighs each update by its silo's reported rows, at
    most ``max_rows`` when given.
    """

    weighting: Literal["uniform", "rows"] = Field(
        "uniform", description="uniform: each update once; rows: by reported rows"
    )
    max_rows: int | None = Field(
        None, ge=1, description="weighting rows: the most rows a silo's weight counts"
    )

    @model_validator(mode="after")
    def _cap_with_rows(self) -> _WeighingSpec:
        """Refuse a row cap that would have no effect."""
        if self.max_rows is not None and self.weighting != "rows":
            raise ValueError(
                "max_rows caps the rows an update is weighted by; give it with "
                "weighting: rows"
            )
        return self


@register_strategy_spec
class MedianSpec(_WeighingSpec):
    """The coordinate-wise median of the updates."""

    kind: Literal["median"] = "median"


@register_strategy_spec
class TrimmedMeanSpec(_WeighingSpec):
    """The coordinate-wise mean without the ``beta`` share of extremes each side."""

    kind: Literal["trimmed-mean"] = "trimmed-mean"
    beta: float = Field(0.1, ge=0.0, lt=0.5, description="trimmed-mean: cut share")


class _ByzantineSpec(StrategySpec):
    """Krum's family: tolerates ``byzantine`` faulty silos among ``2f + 3``."""

    byzantine: int = Field(1, ge=0, description="krum: silos assumed faulty (f)")

    def silos_needed(self) -> int:
        """Return ``2f + 3``: Krum scores by the ``n - f - 2`` nearest others."""
        return 2 * self.byzantine + 3

    def describe(self) -> str:
        """Return the strategy with the faults it tolerates."""
        return f"strategy {self.kind!r} tolerating byzantine={self.byzantine}"


@register_strategy_spec
class KrumSpec(_ByzantineSpec):
    """Krum: the update closest to its nearest others."""

    kind: Literal["krum"] = "krum"


@register_strategy_spec
class MultiKrumSpec(_ByzantineSpec, _WeighingSpec):
    """Multi-Krum: the mean of the ``multi_krum_m`` best Krum scores."""

    kind: Literal["multi-krum"] = "multi-krum"
    multi_krum_m: int | None = Field(None, ge=1, description="multi-krum: kept")
