"""Error types with a reason; the CLI turns them into one line and exit code 2."""

from __future__ import annotations


class FedsiloError(Exception):
    """Base of every error a user can cause and fix."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SpecError(FedsiloError):
    """The federation spec is malformed or inconsistent."""


class SiloDataError(FedsiloError):
    """A silo's data cannot be read or does not match the federation."""

    def __init__(self, silo: str, reason: str, column: str | None = None) -> None:
        where = f"silo {silo!r}" + (f", column {column!r}" if column else "")
        super().__init__(f"{where}: {reason}")
        self.silo = silo
        self.column = column


class InconsistentUpdatesError(FedsiloError):
    """Silo updates cannot be aggregated together (shapes, names, weights)."""


class EmptyAggregationError(InconsistentUpdatesError):
    """Nothing to aggregate: no updates or a zero total weight."""


class CheckpointError(FedsiloError):
    """A checkpoint cannot be written or read back."""


class ClusterError(FedsiloError):
    """The Dask cluster cannot serve the federation (missing silo worker, ...)."""


class SiloFailedError(FedsiloError):
    """A silo's task failed or its worker disappeared during a round."""

    def __init__(self, silo: str, reason: str) -> None:
        super().__init__(f"silo {silo!r}: {reason}")
        self.silo = silo
        self.detail = reason  # without the "silo 'x': " prefix


class SiloLateError(SiloFailedError):
    """A silo missed the round's deadline; its late result is discarded."""


class RegistryError(FedsiloError, ValueError):
    """A kind is registered twice, or looked up without being registered.

    A ``ValueError`` too, so that a spec validator raising it names the field.
    """
