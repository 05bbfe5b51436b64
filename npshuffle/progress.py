"""The progress bar of ``npshuffle predict`` and ``npshuffle train`` (stderr; no dependencies)."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable

BAR_WIDTH = 24


class Progress:
    """A progress bar over ``total`` items (images) on ``stream`` (default stderr).

    On a terminal the line is redrawn in place (at most 5 times a second, and once more at the
    end), and only when there is more than one item. Elsewhere (a log file) a new line is written
    at each quarter of the total, or, with ``log=False``, nothing.

    The line: ``label``, the bar, the count, :meth:`update`'s keyword arguments (``loss="0.42"``),
    the rate, the time spent and left, and ``status()`` in parentheses when it says something
    (what the model runs on: it may change during the run).
    """

    def __init__(self, total: int, label: str = "", *, stream=None, log: bool = True,
                 status: Callable[[], str] | None = None):
        self.total, self.label, self.stream = total, label, stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.enabled = (self.tty and total > 1) or (log and not self.tty)
        self.status = status
        self.start = self.last = time.monotonic()
        self.done = 0
        self.next_log = 0.25
        self.open_line = False  # a terminal line drawn and not ended yet

    def update(self, n: int = 1, **stats: str) -> None:
        self.done += n
        if not self.enabled:
            return
        now = time.monotonic()
        finished = self.done >= self.total
        if self.tty:
            if now - self.last < 0.2 and not finished:
                return
        elif self.done / self.total < self.next_log and not finished:
            return
        else:
            self.next_log = math.floor(self.done / self.total * 4 + 1) / 4
        self.last = now
        text = self.line(now - self.start, stats)
        if self.tty:
            self.stream.write("\r" + text + "\033[K" + ("\n" if finished else ""))
            self.open_line = not finished
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def line(self, elapsed: float, stats: dict[str, str]) -> str:
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        filled = int(BAR_WIDTH * min(self.done, self.total) / self.total)
        parts = [self.label] if self.label else []
        parts.append(f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {self.done}/{self.total}")
        parts += [f"{k} {v}" for k, v in stats.items()]
        parts.append(f"{rate:.0f} img/s")
        parts.append(f"{clock(elapsed)}<{clock(eta)}")
        status = self.status() if self.status else ""
        if status:
            parts.append(f"({status})")
        return " ".join(parts)

    def close(self) -> None:
        """End a line left open on the terminal (a run stopped before the last item)."""
        if self.open_line:
            self.stream.write("\n")
            self.stream.flush()
            self.open_line = False


def clock(seconds: float) -> str:
    """``m:ss``, or ``h:mm:ss`` from an hour on."""
    seconds = int(seconds)
    if seconds < 3600:
        return f"{seconds // 60}:{seconds % 60:02d}"
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
