"""A channel's write locks, shared by `ndingest ingest` and `serve`: ingests of a channel
run together, `serve`'s writes run together, the two never at once, and a delete runs alone.

Three flock files in the channel's markers folder (`markers.channel_dir`), so every
process on the store agrees where they are; the kernel drops a lock with its process:

    ingest.lock   an ingest holds it shared for its whole run (`ingest_holding`): any
                  number of ingests (`--workers`, runs sharing a luigid) at once
    write.lock    `serve` holds it shared around each write (`ChannelGate.writing`: a
                  POST, a setPropagate, one block of a level rebuild); a delete holds it
                  exclusively (`ChannelGate.deleting`), so it waits for writes under way
    probe.lock    serialises the check "does an ingest hold ingest.lock" (a non-blocking
                  exclusive try), so two writers checking at once never fail each other
    ingest.holder names the job holding ingest.lock, for the 409 that refuses a write

A writer takes write.lock then checks ingest.lock; an ingest takes ingest.lock then waits
for write.lock to be free once. Each takes its own lock before it looks at the other's, so
at least one of two that start together sees the other: the writer answers 409, the
ingest waits for writes under way to end. A delete renames the folder these files live
in, so whoever waited on them checks that the file at the path is still the one it
locked (`_same_file`) before it goes on: a writer then answers 409 (the channel is gone),
an ingest locks the new files.
"""
from __future__ import annotations

import fcntl
import logging
import os
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from .errors import ChannelGone, StateConflict
from .markers import atomic_write
from .runlock import open_lock

logger = logging.getLogger(__name__)

INGEST, WRITE, PROBE, HOLDER = "ingest.lock", "write.lock", "probe.lock", "ingest.holder"
LOCK_FILES = (INGEST, WRITE, PROBE, HOLDER)  # what a channel's markers folder holds for these locks


def _same_file(fd: int, path: Path) -> bool:
    """Whether `path` still names the file `fd` has open (not renamed away by a delete)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def holder(folder: Path) -> str:
    """Who holds the channel's ingest lock, as it wrote itself down."""
    try:
        return (folder / HOLDER).read_text(errors="replace").strip() or "an ingest"
    except OSError:
        return "an ingest"


# --- the ingest's side -------------------------------------------------------------------------
def _hold_shared(folder: Path, job: str) -> int:
    """An fd holding ingest.lock of `folder` shared, taken again should a delete rename
    the folder while we waited; writes under way in `serve` have ended when it returns."""
    path = folder / INGEST
    while True:
        fd = open_lock(path)
        fcntl.flock(fd, fcntl.LOCK_SH)  # waits only while a delete holds it
        if _same_file(fd, path):
            break
        os.close(fd)
    try:
        if holder(folder) != job:  # written once: a rerun of the same job touches nothing
            atomic_write(folder / HOLDER, job.encode(), durable=False)
        write = open_lock(folder / WRITE)
        try:
            fcntl.flock(write, fcntl.LOCK_EX)  # writes that began before we held ingest.lock end first
        finally:
            os.close(write)
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextmanager
def ingest_holding(folders: Iterable[Path], *, job: str) -> Iterator[None]:
    """Hold each channel folder's ingest lock shared for the block: `serve` refuses writes
    and deletes of those channels (409 naming `job`) meanwhile; other ingests share it."""
    with ExitStack() as stack:
        for folder in sorted(set(folders)):
            stack.callback(os.close, _hold_shared(folder, job))
        yield


# --- serve's side ------------------------------------------------------------------------------
class ChannelGate:
    """`serve`'s view of one channel's locks: open it once (a POST, a level rebuild), take
    `writing()` around each write, or `deleting()` once. `channel` names it in messages."""

    def __init__(self, folder: Path, channel: str):
        self.folder, self.channel = folder, channel
        self._fds: dict[str, int] = {}
        try:
            for name in (WRITE, INGEST, PROBE):
                self._fds[name] = open_lock(folder / name)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}

    def __enter__(self) -> ChannelGate:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _take_ingest_lock(self, *, doing: str, keep: bool) -> None:
        """ingest.lock exclusively, at once, or 409 naming the ingest that holds it; let go
        again before the probe is (`keep` False: only a check), so a writer checking next
        never finds it held by a mere check."""
        probe, ingest = self._fds[PROBE], self._fds[INGEST]
        fcntl.flock(probe, fcntl.LOCK_EX)  # held for a few system calls by whoever checks
        try:
            fcntl.flock(ingest, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if not keep:
                fcntl.flock(ingest, fcntl.LOCK_UN)
        except BlockingIOError:
            raise StateConflict(f"channel {self.channel!r} is in use by {holder(self.folder)}; "
                                f"{doing} when that has finished") from None
        finally:
            fcntl.flock(probe, fcntl.LOCK_UN)

    def _check_here(self) -> None:
        if not _same_file(self._fds[WRITE], self.folder / WRITE):
            raise ChannelGone(f"channel {self.channel!r} was deleted meanwhile")

    @contextmanager
    def writing(self, *, doing: str = "write to it") -> Iterator[None]:
        """One write of `serve`: write.lock shared (other writes go on; a delete waits for
        it), refused (409) while an ingest or a delete holds the channel."""
        write = self._fds[WRITE]
        fcntl.flock(write, fcntl.LOCK_SH)
        try:
            self._check_here()
            self._take_ingest_lock(doing=doing, keep=False)  # only a check: writers share the channel
            yield
        finally:
            fcntl.flock(write, fcntl.LOCK_UN)

    @contextmanager
    def deleting(self) -> Iterator[None]:
        """The channel to itself: no ingest (409 naming it), no write under way (waits for
        those, and refuses new ones); inside, rename the folder away before letting go."""
        self._take_ingest_lock(doing="delete it", keep=True)
        try:
            atomic_write(self.folder / HOLDER, f"a delete of the channel (pid {os.getpid()})".encode(),
                         durable=False)
            fcntl.flock(self._fds[WRITE], fcntl.LOCK_EX)
            self._check_here()
            yield
        finally:  # ingest.lock first: a write that waited on write.lock then finds the channel gone, not busy
            fcntl.flock(self._fds[INGEST], fcntl.LOCK_UN)
            fcntl.flock(self._fds[WRITE], fcntl.LOCK_UN)
