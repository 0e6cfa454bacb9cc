"""The federation spec: one pydantic model, loaded from YAML, unknown keys refused."""

from __future__ import annotations

import hashlib
import ipaddress
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.types import JsonValue

from fedsilo.errors import FedsiloError, SpecError
from fedsilo.model_kinds import model_kind, model_kinds
from fedsilo.source_kinds import DataSource as DataSource
from fedsilo.source_kinds import source_kind
from fedsilo.sources import (
    CREDENTIALS_BLOCK,
    SqlSource,
    find_credential,
    url_credential,
)
from fedsilo.strategy_spec import ServerOptimizerSpec as ServerOptimizerSpec
from fedsilo.strategy_spec import StrategySpec, own_fields

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _kinds_enum(schema: dict[str, JsonValue]) -> None:
    """List the registered model kinds in the JSON schema (the Prefect form)."""
    kinds: list[JsonValue] = [*model_kinds()]
    schema["enum"] = kinds


class ModelSpec(_Strict):
    """Which estimator every silo trains, and its constructor parameters."""

    kind: str = Field(
        "sgd-logistic",
        json_schema_extra=_kinds_enum,
        description="a registered model kind (fedsilo/model_kinds.py)",
    )
    params: dict[str, Any] = Field(default_factory=dict)
    trees_per_round: int = Field(1, ge=1, le=10_000)

    @field_validator("kind")
    @classmethod
    def _registered(cls, kind: str) -> str:
        model_kind(kind)
        return kind

    @model_validator(mode="after")
    def _xgboost_params(self) -> ModelSpec:
        if self.kind == "xgboost":
            from fedsilo.gbdt_params import GBDTParams

            try:
                GBDTParams.from_dict(self.params)
            except SpecError as error:
                raise ValueError(f"params: {error.reason}") from None
        elif self.trees_per_round != 1:
            raise ValueError("trees_per_round applies to kind 'xgboost' only")
        return self


class LocalSpec(_Strict):
    """Local training done by a silo in one round."""

    epochs: int = Field(1, ge=1, le=10_000)
    batch_size: int | None = Field(None, ge=1)
    proximal_mu: float = Field(
        0.0, ge=0.0, description="FedProx: pull toward the global model (0: FedAvg)"
    )


class PreprocessingSpec(_Strict):
    """Feature transforms fitted from federated statistics, never pooled rows."""

    scale: Literal["standard", "none"] = "standard"
    categorical: list[str] | Literal["auto"] = Field(
        default_factory=list,
        description="columns to one-hot encode with federated categories; "
        "'auto': every non-numeric feature (docs/statistics.md)",
    )


class StatisticsSpec(_Strict):
    """Federated statistics (``fedsilo stats``): bins and the disclosure threshold.

    ``min_count`` also decides which categories one-hot encoding may name.
    """

    min_count: int = Field(
        10, ge=1, description="cells counting fewer rows are withheld by the silo"
    )
    bins: int = Field(20, ge=2, le=1000, description="histogram bins per column")


#: Why a central spec refuses credentials, and where they belong instead.
_RECORDED = "the central spec is recorded in Prefect and in every checkpoint"
_AT_THE_SILO = (
    f"{_RECORDED}: give it at the silo, in its worker's environment (AWS_*, ...) "
    "or its own config (fedsilo worker --data SILO_CONFIG)"
)
_AT_THE_COORDINATOR = (
    f"{_RECORDED}: give the store's credentials in the coordinator's environment "
    "(AWS_*, ...) or a Prefect Secret block named by "
    f"storage_options.{CREDENTIALS_BLOCK}"
)


class SiloSpec(_Strict):
    """One silo: a name and, unless its own worker holds them, where its rows are.

    Without ``train`` the silo's worker reads the sources of its own silo config
    (``fedsilo worker --data SILO_CONFIG``): the central spec then names the
    silo only, and the coordinator never learns where its rows are.
    """

    name: str = Field(pattern=NAME_PATTERN)
    train: DataSource | None = None
    test: DataSource | None = None
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    storage_options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _sources(self) -> SiloSpec:
        if self.train is None and self.test is not None:
            raise ValueError(
                "test needs train (omit both to use the silo worker's own config)"
            )
        for field, source in (("train", self.train), ("test", self.test)):
            if source is not None and source_kind(source).password(source):
                raise ValueError(
                    f"{field}.url holds a password, and the central spec is recorded "
                    "in Prefect and in every checkpoint; keep credentials at the "
                    "silo (fedsilo worker --data SILO_CONFIG, or PGPASSWORD/.pgpass)"
                )
            carried = None if source is None else source_kind(source).credential(source)
            if carried is not None:
                raise ValueError(f"{field} holds {carried}; {_AT_THE_SILO}")
        return self

    @field_validator("storage_options")
    @classmethod
    def _no_silo_credentials(cls, options: dict[str, Any]) -> dict[str, Any]:
        if CREDENTIALS_BLOCK in options:
            raise ValueError(
                f"{CREDENTIALS_BLOCK!r} is for the checkpoint store (the top-level "
                f"storage_options); a silo's reading is not the coordinator's: "
                f"{_AT_THE_SILO.split(': ', 1)[1]}"
            )
        found = find_credential(options)
        if found is not None:
            raise ValueError(f"{found[0]!r} is {found[1]}; {_AT_THE_SILO}")
        return options


class TlsSpec(_Strict):
    """Mutual TLS for scheduler, workers and client: PEM files (see docs/tls.md).

    ``cert_file``/``key_file`` are the coordinator's; an embedded cluster uses
    them for its scheduler and workers too. Relative paths resolve against the
    spec file's directory.
    """

    ca_file: str = Field(min_length=1)
    cert_file: str = Field(min_length=1)
    key_file: str = Field(min_length=1)

    def resolved(self, base: Path) -> TlsSpec:
        """Return a copy whose relative paths are made absolute against ``base``."""
        paths = {
            field: str((base / Path(getattr(self, field)).expanduser()).resolve())
            for field in ("ca_file", "cert_file", "key_file")
        }
        return self.model_copy(update=paths)


class ClusterSpec(_Strict):
    """Where the silo workers are: null address means an embedded LocalCluster."""

    address: str | None = None
    timeout: float = Field(60.0, gt=0.0)
    silo_timeout: float = Field(600.0, gt=0.0)
    tls: TlsSpec | None = None
    workers: int | None = Field(
        None,
        ge=1,
        description="embedded cluster: host the silos on this many pool workers "
        "(contiguous blocks in spec order); null: one worker per silo",
    )
    insecure_plain_tcp: bool = Field(
        False,
        description="accept a plain tcp:// scheduler beyond loopback: neither "
        "encrypted nor authenticated",
    )

    @model_validator(mode="after")
    def _tls_address(self) -> ClusterSpec:
        if self.workers is not None and self.address is not None:
            raise ValueError(
                f"workers={self.workers} applies to an embedded cluster only; with "
                "an address each silo's worker is started at the silo and named "
                "after it (remove workers or address)"
            )
        plain = self.address is not None and not self.address.startswith("tls://")
        if self.tls is not None and plain:
            raise ValueError(
                f"address {self.address!r}: with tls set, give the scheduler's "
                "tls:// address"
            )
        if plain and not self.insecure_plain_tcp and not _loopback(self.address):
            raise ValueError(
                f"address {self.address!r}: plain TCP beyond loopback is neither "
                "encrypted nor authenticated; give tls (docs/tls.md) or set "
                "insecure_plain_tcp: true to accept that"
            )
        return self


def _loopback(address: str | None) -> bool:
    """Return whether a scheduler address's host is a loopback address."""
    location = (address or "").split("://", 1)[-1]
    host = location.rsplit(":", 1)[0] if location.count(":") == 1 else location
    host = host.strip("[]")
    if "]:" in location:  # [v6]:port
        host = location.split("]:", 1)[0].strip("[")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class AdaptiveClipSpec(_Strict):
    """Adaptive clipping (Andrew et al. 2021): the clip tracks a norm quantile."""

    target_quantile: float = Field(0.5, gt=0.0, lt=1.0)
    learning_rate: float = Field(0.2, ge=0.0)
    count_stddev: float = Field(
        ..., gt=0.0, description="noise on the clip votes; must exceed z/2"
    )


class DPSpec(_Strict):
    """Client-level differential privacy (DP-FedAvg, McMahan et al. 2018)."""

    clip: float = Field(
        gt=0.0,
        description="L2 bound of each silo's update (xgboost: of each row's gradient)",
    )
    noise_multiplier: float = Field(gt=0.0)
    delta: float = Field(1e-5, gt=0.0, lt=1.0)
    epsilon_budget: float | None = Field(
        None, gt=0.0, description="stop before the run would spend more"
    )
    adaptive: AdaptiveClipSpec | None = None
    noise: Literal["central", "distributed"] = Field(
        "central",
        description="central: the coordinator noises the sum it decodes; "
        "distributed (secure aggregation only): each silo adds its share before "
        "masking, so the coordinator never decodes an un-noised sum (docs/privacy.md)",
    )

    @model_validator(mode="after")
    def _votes_fit(self) -> DPSpec:
        if self.adaptive and 2 * self.adaptive.count_stddev <= self.noise_multiplier:
            raise ValueError(
                "adaptive.count_stddev must exceed noise_multiplier / 2 "
                f"({self.noise_multiplier / 2:g})"
            )
        return self


class PrivacySpec(_Strict):
    """Secure aggregation and differential privacy of the model updates."""

    secure_aggregation: bool = False
    dp: DPSpec | None = None


class CompressionSpec(_Strict):
    """How silos compress their updates (docs/compression.md).

    ``float16``: the change from the global model cast to float16 (per-tensor
    power-of-two scale); ``int8``: unbiased 8-bit stochastic quantization.
    ``error_feedback`` keeps what compression lost at the silo and adds it to
    the next round's change.
    """

    kind: Literal["none", "float16", "int8"] = "none"
    error_feedback: bool = False

    @model_validator(mode="after")
    def _feedback_needs_loss(self) -> CompressionSpec:
        if self.error_feedback and self.kind == "none":
            raise ValueError("error_feedback needs kind 'float16' or 'int8'")
        return self


class MlflowSpec(_Strict):
    """Where a run is tracked in MLflow (docs/tracking.md)."""

    tracking_uri: str | None = Field(
        None,
        description="MLflow tracking URI; null: MLFLOW_TRACKING_URI, else "
        "MLflow's default",
    )
    experiment: str | None = Field(
        None, min_length=1, description="experiment name; null: the federation's"
    )

    @field_validator("tracking_uri")
    @classmethod
    def _no_password(cls, uri: str | None) -> str | None:
        from fedsilo.sources import url_password

        if uri is not None and url_password(uri):
            raise ValueError(
                "the URI holds a password, and the central spec is recorded in "
                "Prefect; give MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD "
                "(or MLFLOW_TRACKING_TOKEN) in the coordinator's environment"
            )
        return uri


class TrackingSpec(_Strict):
    """Experiment tracking. Without ``mlflow``, MLFLOW_TRACKING_URI turns it on.

    Tracking changes no model, so checkpoints do not record it.
    """

    mlflow: MlflowSpec | None = None


class FederationSpec(_Strict):
    """A whole federation: task, model, strategy, silos, cluster and store."""

    name: str = Field(pattern=NAME_PATTERN)
    task: Literal["classification", "regression"]
    target: str = Field(min_length=1)
    rounds: int = Field(ge=1, le=100_000)
    seed: int = 0
    model: ModelSpec = Field(default_factory=ModelSpec)
    strategy: SerializeAsAny[StrategySpec] = Field(default_factory=StrategySpec)
    local: LocalSpec = Field(default_factory=LocalSpec)
    preprocessing: PreprocessingSpec = Field(default_factory=PreprocessingSpec)
    statistics: StatisticsSpec = Field(default_factory=StatisticsSpec)
    silos: list[SiloSpec] = Field(min_length=1)
    cluster: ClusterSpec = Field(default_factory=ClusterSpec)
    checkpoints: str = "./checkpoints"
    storage_options: dict[str, Any] = Field(default_factory=dict)
    privacy: PrivacySpec = Field(default_factory=PrivacySpec)
    compression: CompressionSpec = Field(default_factory=CompressionSpec)
    classes: list[StrictBool | StrictInt | StrictFloat | StrictStr] | None = Field(
        None,
        min_length=2,
        description="classification: every class of the model; without it a "
        "label only one silo holds is refused",
    )
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)

    @field_validator("checkpoints")
    @classmethod
    def _no_url_credentials(cls, checkpoints: str) -> str:
        carried = url_credential(checkpoints)
        if carried is not None:
            raise ValueError(f"the URL holds {carried}; {_AT_THE_COORDINATOR}")
        return checkpoints

    @field_validator("storage_options")
    @classmethod
    def _no_store_credentials(cls, options: dict[str, Any]) -> dict[str, Any]:
        found = find_credential(options, allowed=frozenset({CREDENTIALS_BLOCK}))
        if found is not None:
            raise ValueError(f"{found[0]!r} is {found[1]}; {_AT_THE_COORDINATOR}")
        block = options.get(CREDENTIALS_BLOCK)
        if CREDENTIALS_BLOCK in options and not (isinstance(block, str) and block):
            raise ValueError(
                f"{CREDENTIALS_BLOCK!r} names a Prefect Secret block: give its name"
            )
        return options

    @model_validator(mode="after")
    def _declared_classes(self) -> FederationSpec:
        """Refuse classes a classification spec cannot use as declared."""
        if self.classes is None:
            return self
        if self.task != "classification":
            raise ValueError("classes applies to task 'classification'")
        if self.model.kind == "xgboost":
            raise ValueError(
                "classes: kind 'xgboost' takes its classes 0..num_class-1 from "
                "model.params.objective; leave classes out"
            )
        if len({type(c) is str for c in self.classes}) > 1:
            raise ValueError("classes mixes strings and numbers")
        if len(set(self.classes)) < len(self.classes):
            raise ValueError("classes lists a class twice")
        return self

    @model_validator(mode="after")
    def _consistent(self) -> FederationSpec:
        names = [s.name for s in self.silos]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"silo names must be unique, repeated: {dupes}")
        serves = model_kind(self.model.kind).task
        if serves is not None and serves != self.task:
            role = "regressor" if serves == "regression" else "classifier"
            raise ValueError(f"model {self.model.kind!r} is a {role}")
        if self.privacy.secure_aggregation or self.privacy.dp:
            if not self.strategy.sums_suffice:
                raise ValueError(
                    f"strategy.kind {self.strategy.kind!r} needs each silo's update; "
                    "with secure aggregation or DP the coordinator sees only sums "
                    "(use fedavg)"
                )
            if self.strategy.norm_bound is not None:
                raise ValueError(
                    "strategy.norm_bound checks single updates, which secure "
                    "aggregation and DP hide; DP clipping bounds them instead"
                )
        needed = self.strategy.silos_needed()
        if len(self.silos) < needed:
            raise ValueError(
                f"{self.strategy.describe()} needs at least {needed} silos, "
                f"the spec lists {len(self.silos)}"
            )
        if self.privacy.secure_aggregation and len(self.silos) < 2:
            raise ValueError("secure aggregation needs at least two silos")
        dp = self.privacy.dp
        if dp and dp.noise == "distributed" and not self.privacy.secure_aggregation:
            raise ValueError(
                "privacy.dp.noise 'distributed' needs privacy.secure_aggregation: "
                "unmasked, each silo's update would reach the coordinator with "
                "only its share of the noise"
            )
        if self.local.proximal_mu > 0:
            refusal = proximal_refusal(self.model.kind, self.model.params)
            if refusal is not None:
                raise ValueError(refusal)
        categorical = self.preprocessing.categorical
        if isinstance(categorical, list) and self.target in categorical:
            raise ValueError(
                f"preprocessing.categorical lists the target {self.target!r}"
            )
        if self.model.kind == "xgboost" and categorical:
            raise ValueError(
                "preprocessing.categorical is not available for kind 'xgboost' yet"
            )
        if self.model.kind == "xgboost":
            self._check_boosting_privacy()
            if self.strategy.kind != "fedavg" or self.strategy.server_optimizer:
                raise ValueError(
                    "kind 'xgboost' sums histograms; strategy.kind and "
                    "server_optimizer do not apply"
                )
            objective = self.model.params.get("objective", "reg:squarederror")
            wanted = "regression" if objective.startswith("reg:") else "classification"
            if wanted != self.task:
                raise ValueError(
                    f"model.params.objective {objective!r} needs task {wanted!r}"
                )
            self._check_boosting_rounds()
        self._check_compression()
        if self.strategy.min_silos > len(self.silos):
            raise ValueError(
                f"strategy.min_silos={self.strategy.min_silos} exceeds the "
                f"{len(self.silos)} silos listed"
            )
        return self

    def _check_boosting_rounds(self) -> None:
        """Every tree uses every silo; num_boost_round must match the rounds."""
        total = self.rounds * self.model.trees_per_round
        given = self.model.params.get("num_boost_round")
        if given is not None and given != total:
            raise ValueError(
                f"model.params.num_boost_round={given} disagrees with rounds x "
                f"model.trees_per_round = {total}; leave it out"
            )
        if self.strategy.fraction != 1.0:
            raise ValueError(
                "strategy.fraction must be 1.0 for model kind 'xgboost': every tree "
                "is grown from the histograms of every silo"
            )

    def _check_boosting_privacy(self) -> None:
        """Refuse privacy options kind 'xgboost' does not support (docs/gbdt.md)."""
        dp = self.privacy.dp
        if dp is None:
            return
        if dp.adaptive is not None:
            raise ValueError(
                "privacy.dp.adaptive is for FedAvg updates; kind 'xgboost' clips "
                "each row's gradient to privacy.dp.clip (a fixed bound)"
            )
        if dp.noise != "central":
            raise ValueError(
                "privacy.dp.noise 'distributed' is for FedAvg updates; kind "
                "'xgboost' noises the summed histograms at the coordinator"
            )
        objective = self.model.params.get("objective", "reg:squarederror")
        if objective.startswith("reg:") and self.model.params.get("base_score") is None:
            raise ValueError(
                "privacy.dp with a regression objective needs model.params."
                "base_score: the label mean would be released without a bound"
            )

    def _check_compression(self) -> None:
        kind = self.compression.kind
        if kind == "none":
            return
        if self.model.kind == "xgboost":
            raise ValueError(
                f"compression.kind {kind!r}: kind 'xgboost' exchanges histograms "
                "per tree level, not parameter updates; use compression.kind 'none'"
            )
        if self.privacy.secure_aggregation:
            raise ValueError(
                f"compression.kind {kind!r}: secure aggregation already encodes "
                "updates in fixed point over a ring, so masked values cannot "
                "be compressed; use one or the other"
            )
        if self.privacy.dp is not None:
            raise ValueError(
                f"compression.kind {kind!r}: with DP the silo clips its change to "
                "privacy.dp.clip, and compression error (or a residual added back) "
                "would break that bound; use one or the other"
            )

    def public_dict(self) -> dict[str, Any]:
        """Return the spec without storage options (they may hold credentials).

        Tracking is left out too: it changes no model, so a run resumed with
        another tracking server is the same run.
        """
        data = self.model_dump(mode="json")
        data.pop("storage_options", None)
        data.pop("tracking", None)
        for silo, spec in zip(data["silos"], self.silos, strict=True):
            silo.pop("storage_options", None)
            for side in ("train", "test"):
                source = getattr(spec, side)
                if source is not None:
                    silo[side] = source_kind(source).public(source)
        return data

    def public_json(self) -> str:
        """Return :meth:`public_dict` as JSON: what checkpoints may record."""
        return json.dumps(self.public_dict(), sort_keys=True)

    def spec_hash(self) -> str:
        """Return a stable short hash of the spec (credentials excluded)."""
        return hashlib.sha256(self.public_json().encode()).hexdigest()[:16]


def resolve_source(
    location: str | SqlSource | None, base: Path
) -> str | SqlSource | None:
    """Make a relative path (or SQLite file in a URL) absolute, relative to ``base``."""
    if location is None:
        return None
    resolved: str | SqlSource = source_kind(location).resolve(location, base)
    return resolved


def format_errors(source: str, error: ValidationError) -> str:
    """Return a validation error as one line naming the source and field paths."""
    parts = []
    for item in error.errors():
        loc = ".".join(str(p) for p in item["loc"]) or "(top level)"
        msg = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            msg = "unknown key"
        parts.append(f"{loc}: {msg}")
    return f"{source}: " + "; ".join(parts)


Model = TypeVar("Model", bound=BaseModel)


def validate_mapping(
    model: type[Model], data: Any, source: str, error: type[FedsiloError]
) -> Model:
    """Validate a top-level mapping as ``model``; a problem is one ``error``."""
    if not isinstance(data, dict):
        raise error(f"{source}: expected a mapping at the top level")
    try:
        return model.model_validate(data)
    except ValidationError as problem:
        raise error(format_errors(source, problem)) from None


def resolve_sources(holder: Model, base: Path) -> Model:
    """Return ``holder`` with its ``train`` and ``test`` resolved against ``base``."""
    return holder.model_copy(
        update={
            field: resolve_source(getattr(holder, field), base)
            for field in ("train", "test")
        }
    )


def parse_spec(
    data: Any, source: str = "<spec>", base: Path | None = None
) -> FederationSpec:
    """Validate a mapping as a spec; relative silo paths resolve against ``base``."""
    spec = validate_mapping(FederationSpec, data, source, SpecError)
    if base is None:
        return spec
    silos = [resolve_sources(s, base) for s in spec.silos]
    cluster = spec.cluster
    if cluster.tls is not None:
        cluster = cluster.model_copy(update={"tls": cluster.tls.resolved(base)})
    return spec.model_copy(update={"silos": silos, "cluster": cluster})


def parse_recorded_spec(data: Any, source: str) -> FederationSpec:
    """Validate a spec a checkpoint recorded (:meth:`FederationSpec.public_dict`).

    Specs recorded before each strategy kind had its own fields list every
    kind's; those the recorded kind lacks had no effect and are dropped.
    """
    if isinstance(data, dict) and isinstance(data.get("strategy"), dict):
        data = {**data, "strategy": own_fields(data["strategy"])}
    return parse_spec(data, source=source)


def read_yaml(path: Path, error: type[FedsiloError], what: str) -> Any:
    """Read a YAML file; a missing file or bad YAML is one ``error`` naming it."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise error(f"{path}: no such {what} file") from None
    except OSError as problem:
        raise error(f"{path}: cannot read: {problem.strerror}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as problem:
        mark = getattr(problem, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        detail = getattr(problem, "problem", None) or str(problem)
        raise error(f"{path}:{where}: invalid YAML: {detail}") from None


def load_spec(path: str | Path) -> FederationSpec:
    """Read a YAML spec; errors name the file and the field path."""
    path = Path(path)
    data = read_yaml(path, SpecError, "spec")
    return parse_spec(data, source=str(path), base=path.parent.resolve())


def with_changes(spec: FederationSpec, source: str, **changes: Any) -> FederationSpec:
    """Return ``spec`` with top-level fields replaced, validated like a spec file.

    ``model_copy`` would skip validation: ``--rounds 0`` or a ``--rounds`` that
    disagrees with ``num_boost_round`` must fail as clearly as in the YAML.
    """
    changes = {k: v for k, v in changes.items() if v is not None}
    if not changes:
        return spec
    try:
        return FederationSpec.model_validate({**spec.model_dump(), **changes})
    except ValidationError as error:
        raise SpecError(format_errors(source, error)) from None


def proximal_refusal(kind: str, model_params: Mapping[str, Any]) -> str | None:
    """Return why FedProx's proximal step cannot train this model, or None if it can.

    The model kind decides (``fedsilo/model_kinds.py``); see docs/strategies.md
    for the models and the reasons.
    """
    return model_kind(kind).proximal_refusal(model_params)
