"""Round trips of one boosting exchange's messages, without the silo work.

On a LocalCluster of 2 single-threaded worker processes (the pool workers of
job B), a handler like ``fedsilo_gbdt_exchange`` that does no work is called
on both workers at once from the coordinator's thread, as ``SiloCalls``
does, and answers with histograms of a level. Timed, median of ``--repeat``
round trips after a warm-up, rounds of all variants alternating:

- arguments: nothing; a level's 16 splits and 16 node ids as Dask
  ``to_serialize`` of the tuple (Dask serializes its items one by one); the
  same tuple as one pickle (what fedsilo sends);
- replies: histograms of 1 and of 8 nodes (30 features, 257 bins: 0.12 and
  0.99 MB a worker) as fedsilo sends them;
- the same over each worker's channel (``tasks/silo/channel.py``, the
  ``channel`` transport): a socket of its own, served in a thread.

Run from the repository root::

    .venv/bin/python benchmarks/exchange_costs.py [--repeat 300] [--rounds 4]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import pickle
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from distributed import Client, LocalCluster
from distributed.protocol import to_serialize

import tasks.boosting.messages  # noqa: F401 - registers the boosting messages
from fedsilo.prefect_env import quiet_dask_logs
from tasks.gbdt.histogram import NodeHistograms
from tasks.gbdt.silo_state import NodeSplit
from tasks.silo.channel import Channel, listen, new_token

HANDLER = "fedsilo_bench_exchange"


def _install(dask_worker: Any) -> None:
    made: dict[int, NodeHistograms] = {}

    def handler(nodes: int = 0, args: Any = None, pickled: bytes = b"") -> Any:
        if pickled:
            pickle.loads(pickled)
        if not nodes:
            return {"sizes": []}
        if nodes not in made:
            made[nodes] = NodeHistograms(
                np.zeros((nodes, 2), np.int64),
                np.zeros((nodes, 30, 257, 2)),
                np.zeros((nodes, 3)),
            )
        return {"sizes": [1], "replies": to_serialize([made[nodes]])}

    dask_worker.handlers[HANDLER] = handler


_MADE: dict[int, NodeHistograms] = {}


def _reply(nodes: int = 0, args: Any = None) -> dict[str, Any]:
    if not nodes:
        return {"sizes": []}
    if nodes not in _MADE:
        sums = np.zeros((nodes, 30, 257, 2))
        ids = np.zeros((nodes, 2), np.int64)
        _MADE[nodes] = NodeHistograms(ids, sums, np.zeros((nodes, 3)))
    return {"sizes": [1], "replies": [_MADE[nodes]]}


def _open_channel(token: bytes) -> tuple[str, int]:
    return listen("127.0.0.1", token, _reply)


def _over_channels(channels: list[Channel], message: dict) -> list[Any]:
    for channel in channels:
        channel.send(10.0, **message)
    deadline = time.monotonic() + 10
    return [c.receive(deadline, lambda: None) for c in channels]


async def _both(client: Client, addresses: list[str], message: dict) -> list[Any]:
    calls = [getattr(client.rpc(a), HANDLER)(**message) for a in addresses]
    return list(await asyncio.gather(*calls))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    quiet_dask_logs()
    splits = [NodeSplit(0, i, 3, 100, False, 2 * i + 1) for i in range(16)]
    nodes = [(0, 2 * i + 1) for i in range(16)]
    variants: dict[str, dict[str, Any]] = {
        "empty request and reply": {},
        "16 splits, Dask to_serialize(tuple)": {"args": to_serialize((splits, nodes))},
        "16 splits, one pickle": {"pickled": pickle.dumps((splits, nodes), protocol=5)},
        "reply: 1 node (0.12 MB a worker)": {"nodes": 1},
        "reply: 8 nodes (0.99 MB a worker)": {"nodes": 8},
    }
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        client.run(_install)
        addresses = list(client.scheduler_info()["workers"])
        channels = []
        for address in addresses:
            token = new_token()
            endpoint = client.run(_open_channel, token, workers=[address])[address]
            channels.append(Channel.connect(address, tuple(endpoint), token))
        over_channel: dict[str, dict[str, Any]] = {
            "channel: empty request and reply": {},
            "channel: 16 splits": {"args": (splits, nodes)},
            "channel: reply 1 node": {"nodes": 1},
            "channel: reply 8 nodes": {"nodes": 8},
        }
        calls: dict[str, Callable[[], Any]] = {
            **{
                name: functools.partial(client.sync, _both, client, addresses, message)
                for name, message in variants.items()
            },
            **{
                name: functools.partial(_over_channels, channels, message)
                for name, message in over_channel.items()
            },
        }
        seen: dict[str, list[float]] = {name: [] for name in calls}
        for _ in range(args.rounds):
            for name, call in calls.items():
                call()
                times = []
                for _ in range(args.repeat):
                    started = time.perf_counter()
                    call()
                    times.append(time.perf_counter() - started)
                seen[name].append(statistics.median(times) * 1e3)
        for channel in channels:
            channel.close()
    print(f"round trip to 2 workers at once, ms (median of {args.repeat}; rounds)")
    for name, values in seen.items():
        rounds = ", ".join(f"{v:.2f}" for v in values)
        print(f"{name:40} {statistics.median(values):6.2f}  [{rounds}]")


if __name__ == "__main__":
    main()
