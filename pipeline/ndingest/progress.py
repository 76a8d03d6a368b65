"""Progress off a terminal: plain lines for cron mails, pipes and luigid logs.

On a terminal the CLI draws tqdm bars. Anywhere else a bar is either silent (tqdm's
`disable=None`) or a stream of carriage returns, so instead each channel gets one plain
line, without `\\r` or escape sequences, each time it passes another 5 % of its blocks
and at least once a minute::

    2026-11-27 02:10:05 image write+verify: 130/480 blocks (27 %), 3.1 MB/s, ETA 0:00:41

Deciding when to print and what the line says are pure (the clock is passed in); `cli`
prints them.
"""
from __future__ import annotations

import logging
import math
import sys
from typing import TextIO

logger = logging.getLogger(__name__)

STEP_PERCENT = 5
EVERY_SECONDS = 60.0


def format_duration(seconds: float | None) -> str:
    """`H:MM:SS`, or `?` while the rate is not known yet."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    h, rest = divmod(int(round(seconds)), 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}"


def progress_line(label: str, done: int, *, total: int, unit: str, mb_per_s: float, eta_seconds: float | None) -> str:
    """One plain progress line: done/total, percent, throughput and time left."""
    percent = 100 * done // total if total else 100
    return (f"{label}: {done}/{total} {unit} ({percent} %), {mb_per_s:.1f} MB/s, "
            f"ETA {format_duration(eta_seconds)}")


class Ticker:
    """The progress of one channel (or scan): which updates deserve a line.

    A line is due when `done` passes another `step` percent of `total`, or `every`
    seconds after the last line; rate and ETA count only what this run did (a resumed
    run starts at its markers' count)."""

    def __init__(self, label: str, total: int, *, now: float, done: int = 0, unit: str = "blocks",
                 bytes_per_unit: float = 0.0, step: int = STEP_PERCENT, every: float = EVERY_SECONDS):
        self.label, self.total, self.unit = label, total, unit
        self.bytes_per_unit, self.step, self.every = bytes_per_unit, step, every
        self.start_done, self.start_time = done, now
        self.done, self.printed_done = done, done
        self.last_step, self.last_time = self._step(done), now

    def _step(self, done: int) -> int:
        return 100 * done // self.total // self.step if self.total else 0

    def line(self, now: float) -> str:
        elapsed = max(now - self.start_time, 1e-9)
        rate = (self.done - self.start_done) / elapsed  # units per second
        left = self.total - self.done
        eta = 0.0 if left <= 0 else (left / rate if rate > 0 else None)
        return progress_line(self.label, self.done, total=self.total, unit=self.unit,
                             mb_per_s=rate * self.bytes_per_unit / 1e6, eta_seconds=eta)

    def update(self, done: int, now: float) -> str | None:
        """The line to print for `done` at time `now`, or None when none is due."""
        self.done = done
        step = self._step(done)
        if step > self.last_step or now - self.last_time >= self.every:
            self.last_step, self.last_time, self.printed_done = step, now, done
            return self.line(now)
        return None

    def finish(self, done: int, now: float) -> str | None:
        """The closing line, unless the last one printed (or the start, when nothing moved)
        already said as much."""
        self.done = done
        if done == self.printed_done:
            return None
        self.last_time, self.printed_done = now, done
        return self.line(now)


def on_terminal(stream: TextIO | None = None) -> bool:
    """Whether tqdm would draw a bar on `stream` (stderr by default)."""
    stream = stream or sys.stderr
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
