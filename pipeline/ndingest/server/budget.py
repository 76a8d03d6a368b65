"""One memory budget per server process: each request that holds voxels takes its estimate
before it touches one, and gives it back once its answer is sent.

    budget = MemoryBudget(768 << 20, wait_seconds=30)
    with budget.lease(nbytes, what="xy slice of image"):   # 413, or wait, or 503
        ...

- A request larger than the whole budget can never run: `BodyTooLarge` (413) naming the limit
  and the estimate, at once.
- Otherwise it waits its turn: grants go in arrival order (a small request does not jump
  ahead of a big one that fits first), so a big one is not starved by a stream of small
  ones. After `wait_seconds` it gives up with `Busy` (503, `Retry-After`).

`Ledger` is the state machine (no threads, no clock), so its rules are unit-tested by
calling it; `MemoryBudget` adds a lock, a condition and the clock. Uncontended, a lease
is one lock taken twice: nothing a light request would notice.
"""
from __future__ import annotations

import contextlib
import itertools
import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Iterator, Mapping

import numpy as np

from ..errors import BodyTooLarge, Busy, SpecError

logger = logging.getLogger(__name__)

MiB = 1 << 20
DEFAULT_MEMORY_MIB = 1024  # serve --memory, NDINGEST_MEMORY
MIN_MEMORY_MIB = 64
WAIT_SECONDS = 30.0  # how long a request waits for its share before it is a 503
WAIT_ENV = "NDINGEST_MEMORY_WAIT"  # seconds; not a flag: the tests' way to a 503 without waiting 30 s
KEEP_FREED_SHARE = 8  # each of the two malloc arenas keeps at most budget / 8 of freed heap ...
KEEP_FREED_MAX = 256 * MiB  # ... and never more than this (what the light mix's speed needs)
ARENAS = 2  # malloc.few_arenas() in create_app

# What a route holds at once, in units of the voxels it reads or writes (see estimates below).
CUTOUT_FACTOR = 4  # GET: the read, its C-order copy, the encoder's buffer, the encoded body
POST_FACTOR = 4  # POST: the decoded array, the old labels read, np.where's result, tensorstore's copy
SLICE_PICTURE_COPIES = 3  # PNG: the picture, PIL's copy of it, the compressed PNG (at most as large)
SLICE_TILE_BYTES = 8 * MiB  # the bands' temporaries (slices.TILE_PIXELS x a few uint64 arrays)


@dataclass
class Ledger:
    """Who holds how much of `total` bytes, and who waits, in arrival order.

    `enqueue` -> ticket; `grant(ticket)` -> True once it is first in line and fits (it is then
    taken); `release(nbytes)` gives bytes back; `cancel(ticket)` drops a waiter that gives up."""

    total: int
    used: int = 0
    waiting: deque = field(default_factory=deque)  # (ticket, nbytes), oldest first
    _tickets: Iterator[int] = field(default_factory=itertools.count, repr=False)

    def enqueue(self, nbytes: int, what: str) -> int:
        if nbytes > self.total:
            raise BodyTooLarge(f"{what} needs about {nbytes >> 20} MiB ({nbytes} bytes), more than this server's "
                           f"memory budget of {self.total >> 20} MiB (serve --memory); ask for smaller boxes")
        ticket = next(self._tickets)
        self.waiting.append((ticket, nbytes))
        return ticket

    def grant(self, ticket: int) -> bool:
        if not self.waiting or self.waiting[0][0] != ticket:
            return False
        nbytes = self.waiting[0][1]
        if self.used + nbytes > self.total:
            return False
        self.waiting.popleft()
        self.used += nbytes
        return True

    def cancel(self, ticket: int) -> None:
        self.waiting = deque(w for w in self.waiting if w[0] != ticket)

    def release(self, nbytes: int) -> None:
        assert 0 <= nbytes <= self.used, (nbytes, self.used)
        self.used -= nbytes


class MemoryBudget:
    """A process's budget for requests' voxels (thread-safe; async routes take it in a
    worker thread, so the event loop never blocks)."""

    def __init__(self, total_bytes: int, *, wait_seconds: float = WAIT_SECONDS):
        self.ledger = Ledger(total_bytes)
        self.wait_seconds = wait_seconds
        self._changed = threading.Condition(threading.Lock())

    @property
    def total(self) -> int:
        return self.ledger.total

    def take(self, nbytes: int, what: str) -> None:
        """Take `nbytes`, waiting in line up to `wait_seconds`; BodyTooLarge or Busy otherwise."""
        deadline = time.monotonic() + self.wait_seconds
        with self._changed:
            ticket = self.ledger.enqueue(nbytes, what)
            while not self.ledger.grant(ticket):
                left = deadline - time.monotonic()
                if left <= 0:
                    self.ledger.cancel(ticket)
                    self._changed.notify_all()  # the next in line may fit now
                    raise Busy(f"{what} waited {self.wait_seconds:g} s for {nbytes >> 20} MiB of this server's "
                               f"memory budget ({self.total >> 20} MiB, all in use); try again",
                               retry_after=max(1, math.ceil(self.wait_seconds)))
                self._changed.wait(left)
            if self.ledger.waiting:
                self._changed.notify_all()  # the next in line may fit too

    def give_back(self, nbytes: int) -> None:
        with self._changed:
            self.ledger.release(nbytes)
            self._changed.notify_all()

    @contextlib.contextmanager
    def lease(self, nbytes: int, what: str) -> Iterator["Lease"]:
        """`nbytes` taken for the block, given back when it ends unless `keep()` hands them
        to the caller's answer (which then gives them back once it is sent)."""
        self.take(nbytes, what)
        lease = Lease(self, nbytes)
        try:
            yield lease
        finally:
            if not lease.kept:
                lease.release()


class Lease:
    """Bytes taken from a budget; `release` gives them back once, however often it is called."""

    __slots__ = ("budget", "nbytes", "kept", "_released")

    def __init__(self, budget: MemoryBudget, nbytes: int):
        self.budget, self.nbytes, self.kept, self._released = budget, nbytes, False, False

    def keep(self) -> "Lease":
        self.kept = True
        return self

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.budget.give_back(self.nbytes)


def keep_freed_bytes(memory_bytes: int) -> int:
    """What each malloc arena may keep of freed heap: part of the budget, not beside it."""
    return min(KEEP_FREED_MAX, memory_bytes // KEEP_FREED_SHARE)


def request_bytes(memory_bytes: int) -> int:
    """The requests' share of `serve --memory`: the whole less what malloc keeps freed."""
    return memory_bytes - ARENAS * keep_freed_bytes(memory_bytes)


def memory_from_env(env: Mapping[str, str]) -> int:
    """NDINGEST_MEMORY (MiB), DEFAULT_MEMORY_MIB when unset; SpecError naming it otherwise."""
    text = env.get("NDINGEST_MEMORY") or str(DEFAULT_MEMORY_MIB)
    if not text.strip().isdigit():
        raise SpecError(f"NDINGEST_MEMORY={text!r} is not a whole number of MiB")
    return int(text)


def wait_from_env(env: Mapping[str, str]) -> float:
    try:
        return float(env.get(WAIT_ENV) or WAIT_SECONDS)
    except ValueError:
        raise SpecError(f"{WAIT_ENV}={env.get(WAIT_ENV)!r} is not a number of seconds") from None


# --- estimates -------------------------------------------------------------------------------
def cutout_estimate(voxels: int, itemsize: int) -> int:
    return voxels * itemsize * CUTOUT_FACTOR


def post_estimate(shape: tuple[int, ...], datatype: str, body_bytes: int | None) -> int:
    """The body as it arrives (its Content-Length; without one, as many bytes as its voxels)
    plus what decoding and writing hold."""
    voxel_bytes = math.prod(shape) * np.dtype(datatype).itemsize
    return (voxel_bytes if body_bytes is None else body_bytes) + voxel_bytes * POST_FACTOR


def slice_estimate(pixels: int, itemsize: int, *, pixel_bytes: int) -> int:
    """The plane as read, the picture (1 byte a pixel for images, 3 for labels) and its
    copies, and the tiles' temporaries: never a whole-plane float64/uint64 temporary."""
    return pixels * (itemsize + SLICE_PICTURE_COPIES * pixel_bytes) + SLICE_TILE_BYTES
