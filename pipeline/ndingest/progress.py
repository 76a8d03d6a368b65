"""Progress, on a terminal and off it: tqdm bars, or plain lines for cron mails, pipes and
luigid logs.

On a terminal the CLI draws tqdm bars. Anywhere else a bar is either silent (tqdm's
`disable=None`) or a stream of carriage returns, so instead each channel gets one plain
line, without `\\r` or escape sequences, each time it passes another 5 % of its blocks
and at least once a minute::

    2026-11-27 02:10:05 image write+verify: 130/480 blocks (27 %), 3.1 MB/s, ETA 0:00:41

Deciding when to print and what the line says is pure (`Ticker`, `progress_line`: the
clock is passed in); the bars below print them. `ProgressMonitor` counts the markers in
a thread of its own, so it sees every worker's blocks, whichever process wrote them.
"""
from __future__ import annotations

import logging
import math
import shutil
import sys
import threading
import time
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


def bar_size() -> dict:
    """The terminal's size for tqdm; 100x24 where it reports 0x0 (tqdm would hide the bar)."""
    size = shutil.get_terminal_size((100, 24))
    return {"ncols": size.columns or 100, "nrows": size.lines or 24}


def emit(line: str | None, stream) -> None:
    """Print a progress line with the wall-clock time in front, at once (pipes buffer)."""
    if line is not None:
        print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}", file=stream, flush=True)


class PlainBar:
    """A stand-in for a tqdm bar off a terminal: the same `n`, `total`, `update`, `close`,
    printing a `progress.Ticker`'s lines to `stream`."""

    def __init__(self, total: int, *, label: str, unit: str, bytes_per_unit: float, stream,
                 clock=time.monotonic, initial: int = 0):
        self.total, self.n, self.stream, self.clock = total, initial, stream, clock
        self.ticker = Ticker(label, total, now=clock(), done=initial, unit=unit, bytes_per_unit=bytes_per_unit)

    def update(self, k: int = 1) -> None:
        self.n += k
        emit(self.ticker.update(self.n, self.clock()), self.stream)

    def close(self) -> None:
        emit(self.ticker.finish(self.n, self.clock()), self.stream)

    def __enter__(self) -> "PlainBar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def voxel_bytes(plan) -> float:
    """Bytes per voxel of the channels a window-range scan reads (their mean, by volume)."""
    scanned = [cp.source for cp in plan.channels.values() if cp.spec.window_range is None] or \
        [cp.source for cp in plan.channels.values()]
    voxels = sum(s.size_xyz.volume * s.time_points for s in scanned)
    return sum(s.size_xyz.volume * s.time_points * s.dtype.itemsize for s in scanned) / max(voxels, 1)


def block_bytes(cp) -> float:
    """Mean bytes of one of the channel's blocks (every level and time point)."""
    voxels = sum(lv.extent.shape.volume for lv in cp.levels) * cp.source.time_points
    return voxels * cp.source.dtype.itemsize / max(cp.total_blocks, 1)


class ProgressMonitor:
    """A terminal bar (rate, ETA) fed from the markers, so it counts every worker's blocks.
    Off a terminal, plain lines on stdout per channel instead ."""

    def __init__(self, plan, interval: float = 1.0):
        self.plan, self.interval = plan, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _counts(self) -> tuple[int, int]:
        from .steps import channel_status

        status = channel_status(self.plan)
        return sum(s["done"] + s["verified"] for s in status.values()), sum(2 * s["total"] for s in status.values())

    def _run(self) -> None:
        from tqdm import tqdm

        if not on_terminal():
            return self._run_plain()
        done, total = self._counts()
        with tqdm(total=total, initial=done, unit="block", desc="write+verify", disable=None, **bar_size()) as bar:
            while not self._stop.wait(self.interval):
                now, _ = self._counts()
                bar.update(now - bar.n)
            bar.update(self._counts()[0] - bar.n)

    def _run_plain(self) -> None:
        """Per channel, a line at each 5 % of its writes and verifies, and at least once a minute."""
        from .steps import channel_status

        def counts() -> dict[str, int]:
            return {name: s["done"] + s["verified"] for name, s in channel_status(self.plan).items()}

        start = counts()
        tickers = {name: Ticker(f"{name} write+verify", 2 * cp.total_blocks, now=time.monotonic(), done=start[name],
                                bytes_per_unit=block_bytes(cp))
                   for name, cp in self.plan.channels.items()}
        while not self._stop.wait(self.interval):
            for name, done in counts().items():
                emit(tickers[name].update(done, time.monotonic()), sys.stdout)
        for name, done in counts().items():
            emit(tickers[name].finish(done, time.monotonic()), sys.stdout)

    def __enter__(self) -> "ProgressMonitor":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def scan_bar(voxels: int, *, bytes_per_voxel: float = 1.0, stream=None, initial: int = 0, leave: bool = False):
    """A terminal bar (rate, ETA) for a window-range scan of `voxels`, `initial` of them
    already read; off a terminal, plain lines on `stream` (by default stderr: `inspect`'s
    stdout holds its table or JSON). `leave` keeps the finished bar on screen."""
    from tqdm import tqdm

    if voxels and not on_terminal():
        return PlainBar(voxels, label="scan", unit="voxels", bytes_per_unit=bytes_per_voxel,
                        stream=stream or sys.stderr, initial=initial)
    return tqdm(total=voxels, initial=initial, unit="vox", unit_scale=True, desc="scan",
                disable=None if voxels else True, leave=leave, **bar_size())


def verify_bar(plan):
    """`ndingest verify`'s progress: one tqdm bar on a terminal, else plain lines per channel."""
    from tqdm import tqdm

    if on_terminal():
        total = sum(cp.total_blocks for cp in plan.channels.values())
        return tqdm(total=total, unit="block", desc="verify", disable=None, **bar_size())
    return ChannelBars(plan, "verify", sys.stdout)


class ChannelBars:
    """Plain progress per channel for a count that runs through the channels in plan order
    (as `verify_plan` does), each channel's clock starting with its first block."""

    def __init__(self, plan, what: str, stream):
        self.channels, self.what, self.stream = list(plan.channels.values()), what, stream
        self.index, self.bar = 0, None

    def update(self, n: int) -> None:
        while n > 0 and self.index < len(self.channels):
            cp = self.channels[self.index]
            if self.bar is None:
                self.bar = PlainBar(cp.total_blocks, label=f"{cp.name} {self.what}", unit="blocks",
                                    bytes_per_unit=block_bytes(cp), stream=self.stream)
            k = min(n, self.bar.total - self.bar.n)
            self.bar.update(k)
            n -= k
            if self.bar.n >= self.bar.total:
                self.bar.close()
                self.index, self.bar = self.index + 1, None

    def __enter__(self) -> "ChannelBars":
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()
