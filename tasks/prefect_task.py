"""Prefect's ``task`` decorator as every fedsilo task uses it.

A fedsilo task's arguments are run state (links, clusters, arrays) and its
result lives only in the coordinator's memory, so a task neither caches nor
stores its result.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ParamSpec, TypeVar

from prefect import Task, task
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
