"""Unit costs of the Prefect and Dask calls a fedsilo round is made of.

Inside one parent flow on Prefect's ephemeral API (fedsilo's settings applied),
with a LocalCluster of 4 single-threaded worker processes, it times:

- ``temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})`` enter/exit
  (the parent flow wraps every round call in it);
- an empty nested flow (a round flow that does nothing), heartbeat off;
- an empty Prefect task run called in the flow (like ``aggregate``/``checkpoint``);
- a wave of N empty Prefect tasks submitted to the thread pool and waited for
  (like the round's fit/evaluate tasks), N = 4 and 32;
- a wave of N pinned ``Client.submit`` round trips without Prefect;
- a wave of N Prefect tasks each doing one pinned ``Client.submit`` round trip
  (how the round's fit/evaluate tasks reached their workers before the
  direct requests below);
- a wave of N Prefect tasks each sending one request straight to a worker
  handler (what the round's tasks do, tasks/silo/rpc.py).

Run from the repository root::

    .venv/bin/python benchmarks/prefect_costs.py [--repeat 15]

Each figure is the median over ``--repeat`` calls, after 2 warm-up calls.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from fedsilo.prefect_env import apply_defaults, quiet_dask_logs

apply_defaults(quiet=True)

from distributed import Client, LocalCluster  # noqa: E402
from prefect import flow, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.settings import (  # noqa: E402
    PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
    temporary_settings,
)

OPTIONS: dict[str, Any] = {"cache_policy": NO_CACHE, "persist_result": False}
CLIENT: dict[str, Any] = {}


def _noop(*_: Any) -> int:
    return 0


@task(name="empty-task", **OPTIONS)
def empty_task(i: int) -> int:
    return i


@task(name="dask-roundtrip", **OPTIONS)
def dask_task(i: int, worker: str) -> int:
    client: Client = CLIENT["client"]
    future = client.submit(
        _noop, i, workers=[worker], allow_other_workers=False, pure=False
    )
    return int(future.result(timeout=60))


def _install_noop(dask_worker: Any) -> None:
    """Serve a do-nothing request on a worker (as tasks/silo/rpc.py serves one)."""

    def fedsilo_noop(i: int = 0) -> int:
        return i

    dask_worker.handlers["fedsilo_noop"] = fedsilo_noop


@task(name="rpc-roundtrip", **OPTIONS)
def rpc_task(i: int, worker: str) -> int:
    client: Client = CLIENT["client"]

    async def call() -> int:
        return int(await client.rpc(worker).fedsilo_noop(i=i))

    return int(client.sync(call))


@flow(name="empty-round", persist_result=False, validate_parameters=False)
def empty_round(i: int) -> int:
    return i


def timed(fn: Callable[[], Any], repeat: int) -> float:
    for _ in range(2):
        fn()
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


@flow(name="prefect-costs", persist_result=False)
def measure(repeat: int) -> dict[str, float]:
    client: Client = CLIENT["client"]
    workers = list(client.scheduler_info()["workers"])
    out: dict[str, float] = {}

    def settings() -> None:
        with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            pass

    out["temporary_settings"] = timed(settings, repeat)

    def nested() -> None:
        with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            empty_round(0)

    out["empty_nested_flow"] = timed(nested, repeat)
    out["empty_task_call"] = timed(lambda: empty_task(0), repeat)
    for n in (4, 32):
        pins = [workers[i % len(workers)] for i in range(n)]

        def wave_tasks(n: int = n) -> None:
            for f in [empty_task.submit(i) for i in range(n)]:
                f.result()

        def wave_dask(pins: list[str] = pins) -> None:
            futures = [
                client.submit(
                    _noop, i, workers=[w], allow_other_workers=False, pure=False
                )
                for i, w in enumerate(pins)
            ]
            client.gather(futures)

        def wave_both(pins: list[str] = pins) -> None:
            for f in [dask_task.submit(i, w) for i, w in enumerate(pins)]:
                f.result()

        out[f"wave_{n}_empty_tasks"] = timed(wave_tasks, repeat)
        out[f"wave_{n}_dask_submits"] = timed(wave_dask, repeat)
        out[f"wave_{n}_tasks_with_dask"] = timed(wave_both, repeat)

        def wave_rpc(pins: list[str] = pins) -> None:
            for f in [rpc_task.submit(i, w) for i, w in enumerate(pins)]:
                f.result()

        out[f"wave_{n}_tasks_with_rpc"] = timed(wave_rpc, repeat)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args(argv)
    quiet_dask_logs()
    with (
        LocalCluster(
            n_workers=4,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.WARNING,
        ) as cluster,
        Client(cluster) as client,
    ):
        CLIENT["client"] = client
        client.run(_install_noop)
        figures = measure(args.repeat)
    for name, seconds in figures.items():
        print(f"{name:<28} {seconds * 1000:8.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
