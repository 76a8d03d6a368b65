"""The write loop: read a block from the source, write it, and only then mark it.

Also the channel manifest, which remembers which source (size, mtime) and which block
plan the markers belong to, and a spot check of a few marked blocks against their
checksums, so a source that changed under a half-done ingest stops the run instead of
mixing two versions of the data.
"""
from __future__ import annotations

import logging
import os
import random
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from . import markers
from .blocks import Box, BlockTask, Vec3
from .downsample import child_box, factors, reduce_box
from .errors import SourceChanged, SpecError
from .plan import ChannelPlan, Plan
from .sources import value_range
from .targets import Pending, Target

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
SPOT_CHECKS = 3  # marked blocks per channel re-read from the source on every run (first, last, random)
COMMIT_SECONDS = 2.0  # a kill loses at most this much written-but-unmarked work per worker
Progress = Callable[[int, int], None]  # (blocks done in this task, blocks in this task)


def manifest_for(cp: ChannelPlan, plan: Plan) -> dict:
    return {
        "source": cp.source.fingerprint(),
        "block_chunks": list(cp.levels[0].block_chunks),  # a shard file's cuboid with sharding
        "extent": cp.extent.to_key(),
        "datatype": cp.datatype,
        "blocks_per_task": len(cp.tasks[0].blocks) if cp.tasks else 0,
    }


def _has_markers(cp: ChannelPlan) -> bool:
    """Any block marked yet (stops at the first marker found)."""
    written = cp.markers_dir / markers.WRITTEN
    return any(True for prefix in ("task", markers.LEGACY_TASK_PREFIX)
               for _ in written.glob(f"level*/{prefix}*/*{markers.SUFFIX}"))


def size_changed(plan: Plan, source: str, was: Vec3, now: Vec3) -> SourceChanged:
    """The error for a source whose size is no longer its dataset's. The size belongs to
    the dataset (its catalog row, every level's extent), so `--restart`, which rewrites a
    channel's voxels, cannot help; a new dataset (and project, whose name is unique) can."""
    return SourceChanged(
        f"{source}: size changed from x{was.x} y{was.y} z{was.z} to x{now.x} y{now.y} z{now.z} since dataset "
        f"{plan.spec.dataset.name} was written; a dataset keeps one size, so --restart cannot change it: ingest "
        f"it as a new dataset (new dataset.name, project.name and project.token in {plan.spec.path})"
    )


def check_manifest(cp: ChannelPlan, plan: Plan) -> dict:
    """Raise SourceChanged if blocks were written from another version of the source (a
    size change first: no restart mends that), or SpecError if they were cut another way;
    returns the current manifest."""
    current = manifest_for(cp, plan)
    stored = markers.read_json(cp.markers_dir / MANIFEST)
    if stored is None or stored == current or not _has_markers(cp):
        return current
    was = Box.from_key(stored["extent"]).shape
    if was != cp.extent.shape:
        raise size_changed(plan, cp.source.description, was, cp.extent.shape)
    old_files = {f["path"]: f for f in stored["source"]}
    for f in current["source"]:
        was = old_files.get(f["path"])
        if was is None or any(f.get(k) != v for k, v in was.items()):  # a field newer than the manifest: not a change
            change = "is new" if was is None else (
                f"size {was['size']} -> {f['size']}" if was["size"] != f["size"] else "modified since")
            raise SourceChanged(
                f"{f['path']}: source changed since blocks of channel {cp.name} were written ({change}); "
                f"rerun with --restart {cp.name} to ingest it again"
            )
    if len(old_files) != len(current["source"]):
        raise SourceChanged(
            f"{cp.source.description}: source files changed since blocks of channel {cp.name} were written; "
            f"rerun with --restart {cp.name}"
        )
    stored.setdefault("blocks_per_task", stored.get("blocks_per_shard"))  # its name in older manifests
    for key in ("block_chunks", "extent", "datatype", "blocks_per_task"):
        if stored.get(key) != current[key]:
            raise SpecError(
                f"{plan.spec.path}: channel {cp.name}: {key} is {current[key]!r}, but its blocks were "
                f"written with {stored.get(key)!r}; restore it or rerun with --restart {cp.name}"
            )
    return current


def spot_check_blocks(cp: ChannelPlan, rng: random.Random, count: int = SPOT_CHECKS) -> list[tuple[BlockTask, Box]]:
    """Which marked level-0 blocks to re-read: the first and last of the plan, then random
    ones (a new draw each run, so reruns cover more of the source). At most `count`
    tasks are looked at, each with one stat or listing."""
    tasks = cp.tasks
    if not tasks:
        return []
    picks = [tasks[0], tasks[-1]] + [rng.choice(tasks) for _ in range(max(0, count - 2))]
    chosen: dict[Box, BlockTask] = {}
    for i, task in enumerate(picks[:count]):
        directory = markers.task_dir(cp.markers_dir, markers.WRITTEN, 0, task)
        in_task = markers.marked_in_task(directory, task)
        marked = [box for box in task.blocks if box in in_task]  # plan order
        if marked:
            box = marked[0] if i == 0 else marked[-1] if i == 1 else rng.choice(marked)
            chosen.setdefault(box, task)
    return [(task, box) for box, task in chosen.items()]


def spot_check_source(plan: Plan, cp: ChannelPlan, rng: random.Random | None = None) -> int:
    """Raise SourceChanged if a few marked blocks, read again from the source, no longer
    match the checksum recorded when they were written. Size and mtime (the manifest)
    miss a change that keeps both; this catches it in the blocks it reads, at the cost of
    `SPOT_CHECKS` block reads per channel and run. `ndingest verify` reads every block."""
    checked = 0
    for task, box in spot_check_blocks(cp, rng or random.Random()):
        record = markers.read_marker(markers.task_dir(cp.markers_dir, markers.WRITTEN, 0, task), box)
        if record is None or "checksum" not in record:
            continue
        now = markers.checksum(level_block(plan, cp, plan.store, level=0, box=box, t=task.t))
        if now != record["checksum"]:
            raise SourceChanged(
                f"{cp.source.description}: content changed since blocks of channel {cp.name} were written "
                f"(block {box.to_key()} t={task.t} now reads {now}, written as {record['checksum']}); "
                f"rerun with --restart {cp.name} to ingest it again"
            )
        checked += 1
    if checked:
        logger.debug("%s: %d marked block(s) read again from the source match their checksums", cp.name, checked)
    return checked


def ensure_manifest(cp: ChannelPlan, plan: Plan) -> None:
    current = check_manifest(cp, plan)
    if markers.read_json(cp.markers_dir / MANIFEST) != current:
        markers.write_json(cp.markers_dir / MANIFEST, current)


@dataclass
class TaskResult:
    written: int
    skipped: int
    bytes: int
    seconds: float


def level_block(plan: Plan, cp: ChannelPlan, store: Target, *, level: int, box: Box, t: int) -> np.ndarray:
    """What `box` of `level` must hold, (z, y, x): the source at level 0, else the level
    below (read from `store`) reduced, each level from the one below."""
    if level == 0:
        return cp.source.read(box.shift(-plan.spec.dataset.offset_xyz), t)
    return reduce_children(plan, cp, store.read(cp.ref(t), level - 1, children_box(plan, cp, level, box)),
                           level=level, box=box)


def children_box(plan: Plan, cp: ChannelPlan, level: int, box: Box) -> Box:
    """The level-(level-1) voxels that build `box` of `level`, clipped to that level."""
    return child_box(box, factors(plan.spec.dataset.scaling_option)).intersect(cp.levels[level - 1].extent)


def reduce_children(plan: Plan, cp: ChannelPlan, children: np.ndarray, *, level: int, box: Box) -> np.ndarray:
    """`box` of `level` from `children`, the (z, y, x) voxels of its `children_box`."""
    return reduce_box(children, box, cp.levels[level - 1].extent, factors(plan.spec.dataset.scaling_option),
                      channel_type=cp.spec.type)


def block_facts(voxels: np.ndarray, level: int) -> dict:
    """What a block's marker records about its voxels: the checksum, and at level 0 its
    value range, from which the channel's window range is reduced once every block is
    written (so no pass over the source is needed just for it)."""
    facts = {"checksum": markers.checksum(voxels)}
    if level == 0:
        found = value_range(voxels)
        facts["range"] = list(found) if found is not None else None
    return facts


def block_ranges(plan: Plan, cp: ChannelPlan) -> Iterator[tuple[float, float] | None]:
    """The value range of every level-0 block of `cp`, as its marker recorded it; a block
    marked by a version that recorded none is read back from the store instead."""
    for task in cp.tasks:
        directory = markers.task_dir(cp.markers_dir, markers.WRITTEN, 0, task)
        for box in task.blocks:
            record = markers.read_marker(directory, box) or {}
            if "range" in record:
                yield tuple(record["range"]) if record["range"] is not None else None
            else:
                yield value_range(plan.store.read(cp.ref(task.t), 0, box))


def write_task(plan: Plan, cp: ChannelPlan, task: BlockTask, *, level: int = 0,
                progress: Progress | None = None, commit_seconds: float = COMMIT_SECONDS) -> TaskResult:
    """Write every unmarked block of `task` at `level`, each marked once durable.

    Up to `store.max_in_flight` writes are under way while the next block is read (one for
    tensorstore, a few POSTs for a server), so memory is a few blocks per worker whatever
    the volume's size. Blocks are committed in batches (every `commit_seconds` and at the
    end): wait for the batch's writes, flush the store, write the batch's markers, flush
    again. So a marker never outlives its data (a server answers a POST once its voxels
    are flushed), a kill costs at most one batch of rework, and the disk sees two flushes
    per batch instead of one per chunk file and marker.
    """
    ensure_manifest(cp, plan)
    directory = markers.task_dir(cp.markers_dir, markers.WRITTEN, level, task)
    todo = markers.pending_blocks(task, markers.marked_in_task(directory, task))
    ref = cp.ref(task.t)
    started, nbytes = time.monotonic(), 0
    skipped = len(task.blocks) - len(todo)
    batch: list[tuple[Box, dict, Future]] = []
    last_commit = started
    in_flight: deque[Pending] = deque()  # writes the store finishes while the next block is read

    def commit() -> None:
        while in_flight:
            in_flight.popleft().wait()
        plan.store.flush()
        now = time.time()  # what `verify` compares edits with: a POST before it excuses nothing
        for box, record, facts in batch:
            markers.write_marker(directory, box, {**record, **facts.result(), "written_at": now}, durable=False)
        markers.flush_filesystem(directory)
        batch.clear()

    with ThreadPoolExecutor(1) as pool:  # checksums beside the reads; per call, as Luigi forks workers
        for i, box in enumerate(todo, start=1):
            voxels = level_block(plan, cp, plan.store, level=level, box=box, t=task.t)
            while len(in_flight) >= plan.store.max_in_flight:
                in_flight.popleft().wait()
            if batch:
                batch[-1][2].result()  # one checksum at a time, so blocks never pile up in memory
            in_flight.append(plan.store.start_write(ref, level, box, voxels))
            batch.append((box, {"t": task.t, "level": level, "dtype": voxels.dtype.name, "pid": os.getpid()},
                          pool.submit(block_facts, voxels, level)))
            nbytes += voxels.nbytes
            if time.monotonic() - last_commit >= commit_seconds:
                commit()
                last_commit = time.monotonic()
            if progress:
                progress(skipped + i, len(task.blocks))
        if batch:
            commit()
    markers.seal_task(directory, task)
    return TaskResult(len(todo), skipped, nbytes, time.monotonic() - started)
