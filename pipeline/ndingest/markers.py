"""Per-block markers: proof that a block's voxels are durably in the store.

Layout, under the store it describes (for a server, `[store] url`, under
`.ndingest/<host_port_path>/` beside the spec instead of STORE: `Plan.state_dir`)::

    STORE/_markers/DATASET/PROJECT/
        inspect.json                             what Inspect read from the sources
        ingest.lock                              held by a local-scheduler run
        _failures/TASK.json                      why a task failed, for the CLI
    STORE/_markers/DATASET/PROJECT/CHANNEL/
        manifest.json                            source fingerprint + block plan
        written/level{r}/task{NNNNN}/{x0-x1_y0-y1_z0-z1}.json
        written/level{r}/task{NNNNN}.done       every block of the task is marked
        verified/level{r}/task{NNNNN}/{x0-x1_y0-y1_z0-z1}.json
        verified/level{r}/task{NNNNN}.done
        levels_built.json                        a server built levels >= 1 (none are written)

One folder per task, so a task costs one listing; once all its blocks are marked, the
writer seals it with a `.done` file naming its blocks, so a finished task costs one small
read (Luigi calls `complete()` for every task while it schedules, and 10^5 blocks are
10^3 tasks).
Writing is I/O; deciding what is left (`pending_blocks`) is a pure function.
"""
from __future__ import annotations

import ctypes
import functools
import json
import logging
import os
import shutil
import tempfile
import zlib
from pathlib import Path
from typing import Iterable

import numpy as np

from .blocks import Box, BlockTask
from .errors import StoreError
from .kvpath import KvPath

# Where markers live: a folder, or a prefix in an object store (a KvPath: writes there are
# atomic and durable when they return, so nothing is flushed and no temp file is made).
Place = Path | KvPath

logger = logging.getLogger(__name__)

WRITTEN, VERIFIED = "written", "verified"
SUFFIX = ".json"
LEVELS_BUILT = "levels_built.json"
LEGACY_TASK_PREFIX = "shard"  # task folders' name in stores written before they were called tasks


def checksum(array: np.ndarray) -> str:
    """crc32 of the voxels in (z, y, x) C order, the one byte order every reader agrees on."""
    return f"crc32:{zlib.crc32(np.ascontiguousarray(array).data) & 0xFFFFFFFF:08x}"


def project_dir(store: Path, dataset: str, project: str) -> Path:
    """Markers of one dataset/project: inspect.json, ingest.lock, _failures/, channels."""
    return store / "_markers" / dataset / project


def channel_dir(store: Path, dataset: str, project: str, channel: str) -> Path:
    return project_dir(store, dataset, project) / channel


def task_dir(channel_markers: Place, kind: str, level: int, task: BlockTask) -> Place:
    """One task's markers. A folder written before tasks had this name (`shard{N}`, before
    "shard" came to mean a precomputed shard file) is used where it exists and the new one
    does not, so a store's markers keep counting across the upgrade (a bucket never had one)."""
    here = channel_markers / kind / f"level{level}" / f"task{task.index:05d}"
    if isinstance(here, Path) and not here.exists():
        legacy = here.with_name(f"{LEGACY_TASK_PREFIX}{task.index:05d}")
        if legacy.exists() or sealed_path(legacy).exists():
            return legacy
    return here


def marked_boxes(directory: Path) -> set[Box]:
    """The boxes marked in one task folder, from one listing."""
    try:
        names = listdir(directory)
    except FileNotFoundError:
        return set()
    return {Box.from_key(n[: -len(SUFFIX)]) for n in names if n.endswith(SUFFIX)}


def listdir(directory: Place) -> list[str]:
    """The names in a folder (or under a prefix); FileNotFoundError if there is none."""
    return directory.names() if isinstance(directory, KvPath) else os.listdir(directory)


def pending_blocks(task: BlockTask, marked: set[Box]) -> list[Box]:
    """Blocks left to do, in plan order; a marker exists only after its data."""
    return [box for box in task.blocks if box not in marked]


def sealed_path(directory: Path) -> Path:
    return directory.parent / f"{directory.name}.done"


@functools.lru_cache(maxsize=8192)
def plan_signature(task: BlockTask) -> str:
    """crc32 of the task's block keys: which blocks a seal stands for. A source whose size
    changed cuts task N into other blocks, and the old seal must not count them. Kept per
    task, since `status` asks it of each task once per kind of marker."""
    keys = "\n".join(box.to_key() for box in task.blocks)
    return f"crc32:{zlib.crc32(keys.encode()) & 0xFFFFFFFF:08x}"


def _sealed_for(directory: Path, task: BlockTask) -> bool:
    """The task's seal exists and was written for these very blocks (one small read)."""
    seal = read_json(sealed_path(directory))
    return seal is not None and seal.get("plan") == plan_signature(task)


def marked_in_task(directory: Path, task: BlockTask) -> set[Box]:
    """The blocks of `task` marked in `directory`: all of them if it is sealed for this
    task's blocks, else those its listing holds. What every reader of markers asks."""
    if _sealed_for(directory, task):
        return set(task.blocks)
    return set(task.blocks) & marked_boxes(directory)


def task_complete(directory: Path, task: BlockTask) -> bool:
    """Every block of `task` is marked in `directory` (reads only)."""
    return not pending_blocks(task, marked_in_task(directory, task))


def seal_task(directory: Path, task: BlockTask) -> bool:
    """Write the task's `.done` if every block is marked; True if it is sealed.

    Its markers are flushed first, whoever wrote them (a run killed before its own flush
    leaves them in the page cache only), so a seal never outlives the markers it stands
    for. A task sealed for these blocks is left as it is; a seal of another plan's
    blocks (written before a spec or source change) is replaced once these are marked."""
    if _sealed_for(directory, task):
        return True
    if pending_blocks(task, marked_boxes(directory)):
        return False
    flush_filesystem(directory)
    write_json(sealed_path(directory), {"blocks": len(task.blocks), "plan": plan_signature(task)})
    return True


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Write `data` to `path` all or nothing: temp file, fsync, rename, fsync the folder.

    `durable=False` leaves out both fsyncs, for callers that write many files and then
    make them durable at once with `flush_filesystem`. An object store's PUT is both."""
    if isinstance(path, KvPath):
        path.write_bytes(data)
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                if durable:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        if durable:
            _fsync_dir(path.parent)
    except OSError as exc:
        raise StoreError(f"{path}: cannot write: {exc.strerror or exc}") from exc


def _syncfs():
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.syncfs
    except (OSError, AttributeError):
        return None


_SYNCFS = _syncfs()


def flush_filesystem(path: Path) -> None:
    """Make everything written on `path`'s file system durable, with one syncfs(2).

    One call per batch of blocks replaces an fsync per chunk file and per marker, which
    cost most of an ingest's time on disks with slow flushes (DESIGN.md, pitfalls).
    Where syncfs is missing (not Linux), os.sync() does the same for every file system.
    An object store has nothing to flush: a PUT is durable when it returns."""
    if isinstance(path, KvPath):
        return
    if _SYNCFS is None:
        os.sync()
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise StoreError(f"{path}: cannot open to flush: {exc.strerror or exc}") from exc
    try:
        if _SYNCFS(fd) != 0:
            err = ctypes.get_errno()
            raise StoreError(f"{path}: cannot flush to disk: {os.strerror(err)}")
    finally:
        os.close(fd)


def write_json(path: Path, record: dict, *, durable: bool = True) -> None:
    atomic_write(path, json.dumps(record, sort_keys=True).encode(), durable=durable)


def write_marker(directory: Path, box: Box, record: dict, *, durable: bool = True) -> None:
    write_json(marker_path(directory, box), {"box": box.to_key(), **record}, durable=durable)


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise StoreError(f"{path}: unreadable marker: {exc}") from exc


def read_marker(directory: Path, box: Box) -> dict | None:
    return read_json(marker_path(directory, box))


def written_at(path: Path) -> float | None:
    """When a marker (or record) was written, from its file; None if there is none. What
    `verify` compares an edit's time with: a POST before it was written over excuses nothing."""
    if isinstance(path, KvPath):
        return None  # an object's time is not kept by the kvstore: records carry their own
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StoreError(f"{path}: unreadable marker: {exc.strerror or exc}") from exc


def marker_path(directory: Path, box: Box) -> Path:
    return directory / f"{box.to_key()}{SUFFIX}"


def levels_built_path(channel_markers: Path) -> Path:
    """Where a channel's markers note that a server built its levels >= 1 (it writes no
    marker for them), so `status` counts them without asking the server."""
    return channel_markers / LEVELS_BUILT


def count_marked(channel_markers: Path, kind: str, level: int, tasks: Iterable[BlockTask]) -> int:
    """Blocks of `tasks` that carry a `kind` marker (a stat per sealed task, else a listing)."""
    return sum(len(marked_in_task(task_dir(channel_markers, kind, level, s), s)) for s in tasks)


def drop(channel_markers: Path, kind: str | None = None) -> None:
    """Forget markers: one kind, or everything the channel has (for --restart)."""
    target = channel_markers / kind if kind else channel_markers
    if isinstance(target, KvPath):
        target.remove_tree()
        return
    try:
        shutil.rmtree(target)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise StoreError(f"{target}: cannot remove markers: {exc.strerror}") from exc
