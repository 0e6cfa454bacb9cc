"""Summarise a ``py-spy record --idle --threads --subprocesses -f raw`` profile.

Run from the repository root::

    .venv/bin/python benchmarks/pyspy_top.py PROFILE [--thread MainThread]
        [--top 40] [--match fedsilo/ --match prefect/]

Prints (1) samples per process and thread, split into busy and idle (a sample
is idle when its innermost frame is a wait: lock, select, sleep, ...), and
(2) for one thread of the profiled (first) process, the frames with the largest
inclusive share of its samples. With ``--idle`` every sample is a tick of wall
time, so for the coordinator's MainThread, which runs the flows, an inclusive
share is the share of the recorded wall time spent inside that frame.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter, defaultdict

IDLE_LEAVES = (
    "wait (threading.py",
    "Condition.wait",
    "Event.wait",
    "select (selectors.py",
    "_run_once (asyncio/base_events.py",
    "sleep",
    "poll (",
    "accept (",
    "_recv (",
    "recv_bytes",
    "read (",
    "_worker (concurrent/futures/thread.py",
    "get (queue.py",
    "_wait_for_tstate_lock",
    "acquire",
    # Python frames that block in C (no inner frame is sampled while they wait):
    "main (multiprocessing/resource_tracker.py",  # reading its pipe
    "heartbeat_loop (prefect/flow_engine.py",  # time.sleep(1) between beats
)
_FRAME = re.compile(r"^(?P<name>.+) \((?P<where>[^()]*)\)$")


def _split_stack(stack: str) -> list[str]:
    """Split on ';' but keep a quoted process command line (it may hold ';')."""
    parts: list[str] = []
    for piece in stack.split(";"):
        if parts and parts[-1].startswith("process ") and not parts[-1].endswith('"'):
            parts[-1] += ";" + piece
        else:
            parts.append(piece)
    return parts


def parse(path: str) -> list[tuple[str, str, list[str], int]]:
    """Return (process, thread, frames outermost first, count) per line."""
    out = []
    with open(path) as handle:
        for line in handle:
            line = line.rstrip("\n")
            if not line:
                continue
            stack, _, count = line.rpartition(" ")
            parts = _split_stack(stack)
            processes = [p for p in parts if p.startswith("process ")]
            threads = [p for p in parts if p.startswith("thread ")]
            frames = [p for p in parts if not p.startswith(("process ", "thread "))]
            process = processes[-1] if processes else "?"
            thread = threads[-1] if threads else "?"
            out.append((process, thread, frames, int(count)))
    return out


def root_process(path: str) -> str:
    """Return the label of the profiled (outermost) process."""
    with open(path) as handle:
        first = _split_stack(handle.readline().rpartition(" ")[0])[0]
    # Without --subprocesses py-spy writes no process labels at all.
    return first if first.startswith("process ") else "?"


def short_process(process: str) -> str:
    """Return 'pid command' of a py-spy process label, shortened."""
    match = re.match(r'process (\d+):"(.*)"', process)
    if not match:
        return process
    pid, command = match.groups()
    for key in (
        "uvicorn",
        "spawn_main",
        "forkserver",
        "round_overhead",
        "fedavg_job_a",
    ):
        if key in command:
            return f"{pid} {key}"
    return f"{pid} {command[:60]}"


def thread_name(thread: str) -> str:
    """Return a thread's name without its id."""
    return thread.split(": ", 1)[-1]


def is_idle(frames: list[str]) -> bool:
    """Whether a sample's innermost frame is waiting (a heuristic: a frame that
    calls into C and blocks there looks busy unless it is listed above)."""
    return not frames or any(
        frames[-1].startswith(i) or i in frames[-1] for i in IDLE_LEAVES
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile")
    parser.add_argument("--thread", default="MainThread")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument(
        "--match", action="append", default=[], help="only frames containing this"
    )
    args = parser.parse_args(argv)
    rows = parse(args.profile)
    if not rows:
        print("empty profile")
        return 1
    main_process = root_process(args.profile)

    busy: Counter[tuple[str, str]] = Counter()
    total: Counter[tuple[str, str]] = Counter()
    for process, thread, frames, count in rows:
        key = (short_process(process), thread_name(thread))
        total[key] += count
        if not is_idle(frames):
            busy[key] += count
    print(f"{'process':<28} {'thread':<34} {'samples':>8} {'busy':>7}")
    by_process: defaultdict[str, int] = defaultdict(int)
    for key, count in sorted(total.items(), key=lambda kv: -busy[kv[0]]):
        by_process[key[0]] += busy[key]
        if busy[key] or count == max(total.values()):
            print(f"{key[0]:<28} {key[1][:34]:<34} {count:>8} {busy[key]:>7}")
    print(
        "busy samples per process:",
        dict(sorted(by_process.items(), key=lambda kv: -kv[1])),
    )

    inclusive: Counter[str] = Counter()
    n = 0
    for process, thread, frames, count in rows:
        if process != main_process or thread_name(thread) != args.thread:
            continue
        n += count
        for frame in set(frames):
            if not args.match or any(m in frame for m in args.match):
                inclusive[frame] += count
    print(
        f"\n{args.thread} of {short_process(main_process)}: {n} samples; "
        "inclusive share of its (wall) time"
    )
    for frame, count in inclusive.most_common(args.top):
        print(f"{100 * count / n:6.1f}%  {frame}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
