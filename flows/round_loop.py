"""The parent flow's loop over its round flows, shared by every model kind."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

from fedsilo.tasks import run_state
from fedsilo.tasks.run_state import RoundResult


class RoundsRun(run_state.RunView, Protocol):
    """A run whose rounds the loop records."""

    history: list[RoundResult]


Run = TypeVar("Run", bound=RoundsRun)


def run_rounds(
    state: Run,
    rounds: range,
    round_flow: Callable[[str, int], RoundResult],
    budget_stop: Callable[[Run, int], str | None],
    logger: Any,
) -> str | None:
    """Run ``round_flow`` for each round, tell the listeners; return why it stopped.

    The round flows skip Prefect's heartbeats, whose thread join costs up to a
    second a round (the parent keeps its own unless nothing could watch it,
    see ``prefect_env.unwatched_heartbeats_off``). The settings are entered
    once for all rounds: each entry copies the whole settings model (~50 ms).
    """
    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        for round_number in rounds:
            stopped = budget_stop(state, round_number)
            if stopped:
                logger.warning(stopped)
                return stopped
            result = round_flow(state.run_id, round_number)
            state.history.append(result)
            for listener in list(run_state.listeners):
                listener(result, state)
    return None
