"""A plain-text progress line on stderr, and ETA arithmetic from finished runs' wall times."""

from __future__ import annotations

import sys
import time
from typing import Sequence, TextIO


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def eta_seconds(wall_times: Sequence[float], remaining: int, parallel: int) -> float | None:
    """Mean wall time of the finished runs x remaining runs / runs at once (None: no data yet)."""
    if remaining <= 0:
        return 0.0
    if not wall_times:
        return None
    return sum(wall_times) / len(wall_times) * remaining / max(parallel, 1)


class Progress:
    """"[12/40] done 10 failed 1 running 2 queued 27 ETA 3m05s". On a terminal the line is
    redrawn in place; otherwise (a log file) a line is written whenever the counts change."""

    def __init__(self, total: int, parallel: int, stream: TextIO | None = None):
        self.total, self.parallel = total, parallel
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.wall_times: list[float] = []
        self._last = ""
        self._started = time.monotonic()

    def line(self, done: int, failed: int, running: int) -> str:
        finished = done + failed
        queued = self.total - finished - running
        eta = eta_seconds(self.wall_times, self.total - finished, self.parallel)
        return (f"[{finished}/{self.total}] done {done} failed {failed} running {running} queued {queued} "
                f"ETA {format_duration(eta)}")

    def update(self, done: int, failed: int, running: int) -> None:
        text = self.line(done, failed, running)
        # a log file gets a line per finished run, a terminal every change
        key = text if self.tty else text.split("]")[0]
        if key == self._last:
            return
        self._last = key
        if self.tty:
            self.stream.write("\r" + text.ljust(79))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self._last:
            self.stream.write("\n")
        self.stream.write(f"finished in {format_duration(time.monotonic() - self._started)}\n")
        self.stream.flush()
