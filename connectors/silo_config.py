"""A silo's own data config, held by its worker and never sent to the coordinator.

``fedsilo worker --silo NAME --data SILO_CONFIG`` reads a small YAML file at the
silo::

    train: /srv/silo/train.parquet           # path or fsspec URL, or SQL:
    test: {url: "postgresql+psycopg://fl:secret@db/clinic", table: fl_test}
    test_fraction: 0.2                        # used when test is omitted
    storage_options: {anon: false}            # for fsspec URLs

and keeps it in the worker process, in its silo runtime
(``tasks.silo.runtime``). When the central spec names the silo without a
``train`` source, the silo's ``load`` operation reads these sources there;
paths, URLs and credentials stay at the silo.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from fedsilo.errors import SpecError
from fedsilo.source_kinds import source_kind
from fedsilo.spec import DataSource, read_yaml, resolve_sources, validate_mapping


class SiloConfigError(SpecError):
    """A silo config file is missing, malformed or names a missing file."""


class SiloConfig(BaseModel):
    """Where one silo's rows are, as the silo itself knows it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    train: DataSource
    test: DataSource | None = None
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    storage_options: dict[str, Any] = Field(default_factory=dict)

    def locations(self) -> list[str]:
        """Return every path or URL (raw and masked) the config names."""
        out = []
        for source in (self.train, self.test):
            if source is not None:
                out += source_kind(source).private_texts(source)
        return out


def parse_silo_config(
    data: Any, source: str = "<silo config>", base: Path | None = None
) -> SiloConfig:
    """Validate a mapping as a silo config; relative paths resolve against ``base``."""
    config = validate_mapping(SiloConfig, data, source, SiloConfigError)
    return config if base is None else resolve_sources(config, base)


def load_silo_config(path: str | Path, *, check_files: bool = True) -> SiloConfig:
    """Read a silo config; errors name the file and the field.

    With ``check_files``, local train/test files must exist now (URLs and SQL
    sources are checked when the federation reads them).
    """
    path = Path(path)
    data = read_yaml(path, SiloConfigError, "silo config")
    config = parse_silo_config(data, source=str(path), base=path.parent.resolve())
    if check_files:
        for field, location in (("train", config.train), ("test", config.test)):
            local = isinstance(location, str) and "://" not in location
            if local and not Path(str(location)).exists():
                raise SiloConfigError(f"{path}: {field}: no such file {location}")
    return config
