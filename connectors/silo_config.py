"""A silo's own data config, held by its worker and never sent to the coordinator.

``fedsilo worker --silo NAME --data SILO_CONFIG`` reads a small YAML file at the
silo::

    train: /srv/silo/train.parquet           # path or fsspec URL, or SQL:
    test: {url: "postgresql+psycopg://fl:secret@db/clinic", table: fl_test}
    test_fraction: 0.2                        # used when test is omitted
    storage_options: {anon: false}            # for fsspec URLs

and keeps it in the worker process as a worker plugin. When the central spec
names the silo without a ``train`` source, ``tasks.silo.load_silo`` runs on that
worker and reads these sources there; paths, URLs and credentials stay at the
silo.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from distributed import WorkerPlugin
from pydantic import BaseModel, ConfigDict, Field

from fedsilo.errors import ClusterError, SpecError
from fedsilo.source_kinds import source_kind
from fedsilo.spec import DataSource, read_yaml, resolve_sources, validate_mapping

PLUGIN_NAME = "fedsilo-silo-config"


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


class SiloConfigPlugin(WorkerPlugin):
    """Holds a silo's config in its worker process (registered at worker start)."""

    name = PLUGIN_NAME

    def __init__(self, silo: str, config: SiloConfig) -> None:
        self.silo = silo
        self.config = config

    def __reduce__(self) -> Any:
        # The config must never leave the worker process, not even by accident.
        raise TypeError("a silo's config stays in its worker and is not pickled")


def worker_silo_config(silo: str) -> SiloConfig | None:
    """Return the config the current Dask worker holds for ``silo``, if any."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except ValueError:
        return None
    plugin = worker.plugins.get(PLUGIN_NAME)
    if not isinstance(plugin, SiloConfigPlugin) or plugin.silo != silo:
        return None
    return plugin.config


async def serve_silo_worker(
    scheduler: str,
    silo: str,
    config: SiloConfig,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    timeout: float = 60.0,
    on_ready: Callable[[str], None] | None = None,
) -> str:
    """Run a single-threaded Dask worker named ``silo`` until a signal or its end.

    The worker holds ``config`` as a plugin in this very process (no nanny: the
    config is never pickled to a child). Returns why it stopped: "signal" or
    "closed" (the scheduler went away or closed it).
    """
    from distributed import Worker

    worker = Worker(
        scheduler,
        name=silo,
        nthreads=1,
        host=host,
        port=port,
        dashboard_address=f"{host}:0",
        death_timeout=timeout,
        plugins=(SiloConfigPlugin(silo, config),),
    )
    try:
        await worker
    except (OSError, RuntimeError, TimeoutError, ValueError) as error:
        cause = error.__cause__ or error
        text = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
        raise ClusterError(
            f"silo {silo!r}: cannot join the Dask scheduler at {scheduler}: {text}"
        ) from None
    if on_ready is not None:
        on_ready(str(worker.address))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    stopped = asyncio.ensure_future(stop.wait())
    finished = asyncio.ensure_future(worker.finished())
    try:
        await asyncio.wait({stopped, finished}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        stopped.cancel()
        await worker.close(reason="fedsilo worker stopped")
    return "signal" if stop.is_set() else "closed"
