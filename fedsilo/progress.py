"""A run's progress on the console: a bar on a terminal, plain lines otherwise.

:class:`RoundProgress` is a round listener (``tasks.run_state.listening``):
after each round it redraws one bar line in place (carriage return) when its
stream is a terminal, and prints one line per round when it is not (a log
file, cron's mail, a notebook).
"""

from __future__ import annotations

import shutil
import sys
from typing import Any, TextIO

#: Characters of the bar itself.
BAR_WIDTH = 20


def round_line(result: Any, total: int, left: str = "") -> str:
    """Return the progress line of a round (``RoundResult``) of ``total``.

    ``left`` (the time left, on a terminal's bar) follows the round number, so
    that a narrow terminal cuts the metrics rather than it.
    """
    metrics = " ".join(f"{k} {v:.4f}" for k, v in sorted(result.metrics.items()))
    return (
        f"round {result.round:>4}/{total}{left}  silos {len(result.silos)}/"
        f"{len(result.selected)}  {metrics}  {result.seconds:.2f}s"
    )


class RoundProgress:
    """Show each finished round of a run on ``stream`` (a round listener).

    Parameters
    ----------
    stream : TextIO, optional
        Where to write; standard output by default.
    bar : bool, optional
        Draw a bar updated in place; by default when ``stream`` is a terminal.
    """

    def __init__(self, stream: TextIO | None = None, *, bar: bool | None = None):
        self.stream = stream if stream is not None else sys.stdout
        self.bar = self._is_terminal() if bar is None else bar
        self._open = False  # a bar line was drawn and not yet ended
        self._seconds: list[float] = []

    def _is_terminal(self) -> bool:
        try:
            return bool(self.stream.isatty())
        except (AttributeError, ValueError):  # no isatty, or a closed stream
            return False

    def __call__(self, result: Any, run: Any) -> None:
        """Show a finished round (``RoundResult``) of ``run`` (run_state's ``Run``)."""
        total = run.spec.rounds
        if not self.bar:
            print(round_line(result, total), file=self.stream, flush=True)
            return
        self._seconds.append(result.seconds)
        line = self._bar_line(result, total)
        self.stream.write(f"\r{line}\x1b[K")
        self.stream.flush()
        self._open = True

    def _bar_line(self, result: Any, total: int) -> str:
        """Return the bar, the round's line and the time left, cut to the width."""
        done = min(max(result.round, 0), total)
        filled = BAR_WIDTH * done // total if total else BAR_WIDTH
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        left = total - done
        mean = sum(self._seconds) / len(self._seconds)
        eta = f"  ~{_duration(left * mean)} left" if left else ""
        line = f"[{bar}] {round_line(result, total, eta)}"
        columns = shutil.get_terminal_size(fallback=(80, 24)).columns
        return line[: max(columns - 1, BAR_WIDTH + 2)]

    def close(self) -> None:
        """End the bar's line, so what is printed next starts on a line of its own."""
        if self._open:
            self.stream.write("\n")
            self.stream.flush()
            self._open = False


def _duration(seconds: float) -> str:
    """Return seconds as ``42s``, ``3m05s`` or ``2h07m``."""
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
