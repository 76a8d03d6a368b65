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


@contextmanager
def run_lock(path: Path) -> Iterator[None]:
    """One local-scheduler run per store and spec: an flock the kernel drops with the process."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StoreError(f"{path}: cannot create lock: {exc.strerror}") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            raise AlreadyRunning(f"already running on this store and spec (pid {holder}); lock {path}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)
