"""Prefect's ``task`` and ``flow`` decorators as every fedsilo task and flow uses them.

A fedsilo task's arguments are run state (links, clusters, arrays) and every
result lives only in the coordinator's memory, so a task neither caches nor
stores its result, and a flow does not store its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ParamSpec, TypeVar

from prefect import Flow, Task, flow, task
from prefect.cache_policies import NO_CACHE

P = ParamSpec("P")
R = TypeVar("R")


def uncached_task(
    name: str, run_name: str | None = None
) -> Callable[[Callable[P, R]], Task[P, R]]:
    """Return a decorator making a Prefect task ``name`` (runs named ``run_name``)."""
    return task(
        name=name, task_run_name=run_name, cache_policy=NO_CACHE, persist_result=False
    )


def unstored_flow(
    name: str, run_name: str, *, validate_parameters: bool = True
) -> Callable[[Callable[P, R]], Flow[P, R]]:
    """Return a decorator making a Prefect flow ``name`` (runs named ``run_name``)."""
    return flow(
        name=name,
        flow_run_name=run_name,
        persist_result=False,
        validate_parameters=validate_parameters,
    )
