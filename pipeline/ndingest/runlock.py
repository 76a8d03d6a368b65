"""One local-scheduler run per store and spec (exit 6 for a second one).

An flock on a file in the store's markers, not Luigi's process lock, which is keyed on
one host's command line; the kernel drops it with the process, so a crash leaves no
stale lock. Runs that share a luigid (`--scheduler-url`) share the work instead.
"""
from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import AlreadyRunning, StoreError


def open_lock(path: Path) -> int:
    """An fd of the lock file `path` (made, with its folder, when missing); StoreError naming it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StoreError(f"{path}: cannot open lock file: {exc.strerror or exc}") from exc


def try_lock(path: Path) -> int | None:
    """An fd holding the exclusive flock on `path` (close it to let go), or None while
    another process or thread holds it. The kernel drops it with the process."""
    fd = open_lock(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


@contextmanager
def held_lock(path: Path) -> Iterator[None]:
    """The exclusive flock on `path` for the block, waiting for it: a short check-and-write
    that threads and processes take in turn (the kernel drops it with the process)."""
    fd = open_lock(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@contextmanager
def run_lock(path: Path) -> Iterator[None]:
    """One local-scheduler run per store and spec: an flock the kernel drops with the process."""
    fd = try_lock(path)
    if fd is None:
        try:
            holder = path.read_text(errors="replace").strip() or "another process"
        except OSError:
            holder = "another process"
        raise AlreadyRunning(f"already running on this store and spec (pid {holder}); lock {path}")
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)


@contextmanager
def catalog_lock(catalog, name: str) -> Iterator[None]:
    """One local-scheduler run per store and spec where the store has no folder to lock
    (an object store): a PostgreSQL advisory lock in its catalog, which the server drops
    with the process's session; beside a SQLite catalog file, an flock as `run_lock`."""
    try:
        held = catalog.try_lock(name)
    except NotImplementedError:
        with run_lock(Path(f"{catalog.url.database}.lock")):
            yield
        return
    if held is None:
        raise AlreadyRunning(f"already running on this store and spec (its lock is held in catalog {catalog.where})")
    try:
        yield
    finally:
        held.release()
