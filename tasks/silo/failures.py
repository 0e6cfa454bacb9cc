"""A silo's failure, named: what the coordinator makes of an error or a timeout."""

from __future__ import annotations

from distributed import Future

from fedsilo.errors import FedsiloError, SiloFailedError, SiloLateError
from tasks.protocol.codec import RemoteError


def wait_silo(
    silo: str, future: Future, timeout: float, deadline: float | None = None
) -> object:
    """Return a silo task's result; failures name the silo.

    Past ``deadline`` seconds the silo is late: its task is cancelled and
    whatever it sends afterwards is never read.
    """
    wait = timeout if deadline is None else min(timeout, deadline)
    try:
        return future.result(timeout=wait)
    except FedsiloError:
        raise
    except Exception as error:
        if isinstance(error, TimeoutError):
            future.cancel()
        raise silo_failure(silo, error, timeout, deadline) from error


def silo_failure(
    silo: str, error: Exception, timeout: float, deadline: float | None = None
) -> SiloFailedError:
    """Name the silo whose call raised ``error``; a timeout is late or lost.

    A ``TimeoutError`` is :class:`SiloLateError` when the deadline was the
    shorter wait, else no reply within the silo timeout.
    """
    if isinstance(error, TimeoutError):
        if deadline is not None and deadline <= timeout:
            return SiloLateError(silo, f"missed the {deadline:g}s deadline")
        return SiloFailedError(silo, f"no reply within {timeout:g}s")
    return failure_of(silo, error)


def failure_of(silo: str, error: BaseException) -> SiloFailedError:
    """Name the silo whose call raised ``error`` (here or at the silo)."""
    if isinstance(error, RemoteError):
        kind, text = error.kind, error.message
        prefix = f"silo {silo!r}: "
        if text.startswith(prefix):  # a fedsilo error that named the silo
            return SiloFailedError(silo, text.splitlines()[0].removeprefix(prefix))
    else:
        kind, text = type(error).__name__, str(error)
    first = text.splitlines()[0] if text else ""
    return SiloFailedError(silo, f"{kind}: {first}")
