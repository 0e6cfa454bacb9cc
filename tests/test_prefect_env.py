"""Prefect settings fedsilo chooses for the runs it starts itself."""

from __future__ import annotations

from prefect.settings import (
    PREFECT_API_URL,
    PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
    temporary_settings,
)

from fedsilo.prefect_env import unwatched_heartbeats_off


def test_heartbeats_are_off_when_only_the_ephemeral_api_could_see_them() -> None:
    with temporary_settings(
        restore_defaults={PREFECT_API_URL},
        updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 60},
    ):
        with unwatched_heartbeats_off():
            assert PREFECT_FLOWS_HEARTBEAT_FREQUENCY.value() is None
        assert PREFECT_FLOWS_HEARTBEAT_FREQUENCY.value() == 60


def test_heartbeats_stay_on_for_a_server() -> None:
    with temporary_settings(
        updates={
            PREFECT_API_URL: "http://127.0.0.1:4200/api",
            PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 60,
        }
    ):
        with unwatched_heartbeats_off():
            assert PREFECT_FLOWS_HEARTBEAT_FREQUENCY.value() == 60
