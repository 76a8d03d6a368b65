"""`ndingest plan`: what an ingest will cost, before it runs; writes nothing to the store.

Counts are arithmetic on the plan `plan.load_plan` already made (its levels, tasks and
chunk grids), never an enumeration of chunks, so 10^5 blocks answer in about the time
`load_plan` takes. The free-space check and the time estimate are the only I/O: a few
level-0 blocks read from each source, and (for a store in a folder) each written once
into a temporary folder in the store's nearest existing parent, fsync'd, read back and
removed, whatever happens.

Not `plan.py`, which joins a spec with its sources; this module only reads that plan.
"""
from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .blocks import BlockTask, Box, Vec3, chunk_grid
from .errors import NdingestError
from .plan import ChannelPlan, LevelPlan, Plan
from .urls import is_url

MARKER_BYTES = 200  # a block's marker (or a task's seal) as JSON: box, checksum, range, time
SHARDING_ADVISED_BYTES = 100 * 2**30  # past this many bytes unsharded, a store is millions of files
SAMPLES = 3  # level-0 blocks timed per channel: the first, the middle and the last of the plan
SAMPLE_BYTES = 16 * 2**20  # at most this much of a sampled block is read (rates are per byte)
TEMP_PREFIX = ".ndingest-plan-"


@dataclass(frozen=True)
class LevelCount:
    """What one level of one channel costs: blocks, Luigi tasks, voxel bytes (not padded
    to chunks), files or objects (chunk files, or shard files with sharding) and markers;
    with `written`/`verified`, how many blocks the markers already show (None: no markers)."""

    level: int
    blocks: int
    tasks: int
    bytes: int
    files: int
    markers: int
    written: int | None = None
    verified: int | None = None

    @property
    def write_left(self) -> float:
        """Share of the level's blocks still to write (1.0 on a fresh store)."""
        return 1.0 if self.written is None or not self.blocks else (self.blocks - self.written) / self.blocks

    @property
    def verify_left(self) -> float:
        return 1.0 if self.verified is None or not self.blocks else (self.blocks - self.verified) / self.blocks

    def to_json(self) -> dict:
        out = {"level": self.level, "blocks": self.blocks, "tasks": self.tasks, "bytes": self.bytes,
               "files": self.files, "markers": self.markers}
        if self.written is not None:
            out.update(done=self.written, verified=self.verified)
        return out


def count_level(lv: LevelPlan, *, itemsize: int, time_points: int, sharded: bool,
                written_markers: bool = True) -> LevelCount:
    """Counts of one level, from its extent and chunk grid (pure; no per-chunk work).

    Files: one per chunk of the level's grid per time point (edge chunks clipped, still
    one file each), or with `sharded` one shard file per block (a block is one shard
    file's cuboid). Markers: a written and a verified marker per block, plus one seal
    per task and kind; `written_markers=False` (levels a server builds) has the verified
    ones only."""
    blocks = lv.total_blocks
    tasks = len(lv.tasks)
    files = blocks if sharded else chunk_grid(lv.extent.shape, lv.chunk).volume * time_points
    kinds = 2 if written_markers else 1
    return LevelCount(level=lv.level, blocks=blocks, tasks=tasks,
                      bytes=lv.extent.shape.volume * itemsize * time_points,
                      files=files, markers=kinds * (blocks + tasks))


@dataclass(frozen=True)
class ChannelCount:
    name: str
    datatype: str
    time_points: int
    levels: list[LevelCount]

    @property
    def bytes(self) -> int:
        return sum(lv.bytes for lv in self.levels)

    @property
    def markers(self) -> int:
        return sum(lv.markers for lv in self.levels)

    @property
    def has_markers(self) -> bool:
        return any(lv.written is not None for lv in self.levels)

    def to_json(self) -> dict:
        return {"levels": [lv.to_json() for lv in self.levels]}


def count_channel(cp: ChannelPlan, *, sharded: bool, server_builds_levels: bool = False,
                  status: dict | None = None) -> ChannelCount:
    """Every level of `cp`; `status` is `steps.channel_status`'s entry for it, when the
    store already holds its markers (a half-done ingest)."""
    levels = []
    for lv in cp.levels:
        count = count_level(lv, itemsize=cp.source.dtype.itemsize, time_points=cp.source.time_points,
                            sharded=sharded, written_markers=not (server_builds_levels and lv.level > 0))
        if status is not None:
            done = status["levels"][str(lv.level)]
            count = replace(count, written=done["done"], verified=done["verified"])
        levels.append(count)
    return ChannelCount(cp.name, cp.datatype, cp.source.time_points, levels)


def needed_bytes(channels: list[ChannelCount]) -> int:
    """Voxel bytes of every level and channel (chunks are raw, so padding aside that is
    the store's size) plus `MARKER_BYTES` per marker."""
    return sum(ch.bytes + ch.markers * MARKER_BYTES for ch in channels)


def left_bytes(channels: list[ChannelCount]) -> int:
    """What is still to be written: `needed_bytes` of the blocks without a written marker
    (verified markers too, as verify has yet to write them)."""
    total = 0.0
    for ch in channels:
        for lv in ch.levels:
            total += lv.bytes * lv.write_left + lv.markers * MARKER_BYTES * (lv.write_left + lv.verify_left) / 2
    return round(total)


def nearest_existing(path: Path) -> Path:
    """`path` itself if it exists, else its closest existing parent (where it will be made)."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def local_store_path(plan: Plan) -> Path | None:
    """The store's folder, or None for a store in a bucket or behind a server."""
    if plan.spec.store.url is not None or is_url(plan.spec.store.path) or plan.spec.store.path is None:
        return None
    return Path(plan.spec.store.path)


def free_bytes(plan: Plan) -> int | None:
    """Free space on the file system the store will live on; None where there is none to
    measure (a bucket, a server)."""
    store = local_store_path(plan)
    return None if store is None else shutil.disk_usage(nearest_existing(store)).free


@dataclass(frozen=True)
class Sample:
    """One level-0 block, timed: read from the source; for a store in a folder also written
    into the temporary folder (fsync'd) and read back (None when not measured)."""

    bytes: int
    read_seconds: float
    write_seconds: float | None = None
    readback_seconds: float | None = None

    def rates(self) -> tuple[float, float, float]:
        """Seconds per byte: source read, store write, store read. Unmeasured store I/O
        (a bucket, a server) is taken as fast as the source read."""
        n = max(self.bytes, 1)
        read = self.read_seconds / n
        write = read if self.write_seconds is None else self.write_seconds / n
        back = read if self.readback_seconds is None else self.readback_seconds / n
        return read, write, back


def sample_blocks(tasks: list[BlockTask], count: int = SAMPLES) -> list[tuple[BlockTask, Box]]:
    """The first block of the plan, one in the middle and the last (fewer if they repeat)."""
    if not tasks:
        return []
    middle = tasks[len(tasks) // 2]
    picks = [(tasks[0], tasks[0].blocks[0]), (middle, middle.blocks[len(middle.blocks) // 2]),
             (tasks[-1], tasks[-1].blocks[-1])]
    out: list[tuple[BlockTask, Box]] = []
    for task, box in picks[:count]:
        if all((task.t, box) != (t.t, b) for t, b in out):
            out.append((task, box))
    return out


def sample_box(box: Box, *, itemsize: int, max_bytes: int = SAMPLE_BYTES) -> Box:
    """`box`, or its corner of at most `max_bytes` (z cut first, then y, then x), so a
    huge block is sampled in bounded memory; rates are per byte, so a part prices the whole."""
    shape = list(box.shape)
    for axis in (2, 1, 0):
        others = itemsize * max(1, shape[0] * shape[1] * shape[2] // max(shape[axis], 1))
        shape[axis] = max(1, min(shape[axis], max_bytes // others))
    return Box.from_shape(box.begin, Vec3(*shape))


def timed_write(folder: Path, voxels: np.ndarray) -> tuple[float, float]:
    """Seconds to write `voxels` as one file in `folder` and fsync it (as the pipeline
    makes a batch durable), then to read it back with the page cache dropped for it."""
    path = folder / "block"
    data = np.ascontiguousarray(voxels).data
    started = time.perf_counter()
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    written = time.perf_counter() - started
    with open(path, "rb") as f:
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        started = time.perf_counter()
        f.read()
        back = time.perf_counter() - started
    path.unlink()
    return written, back


def time_samples(plan: Plan, cp: ChannelPlan, *, scratch: Path | None, count: int = SAMPLES) -> list[Sample]:
    """Time `count` level-0 blocks of `cp`: each read from the source as the writer reads
    it, and written into `scratch` (None: the store is no folder, reads only)."""
    from .ingest import level_block

    out = []
    for task, block in sample_blocks(cp.tasks, count):
        box = sample_box(block, itemsize=cp.source.dtype.itemsize)
        started = time.perf_counter()
        voxels = level_block(plan, cp, plan.store, level=0, box=box, t=task.t)
        read = time.perf_counter() - started
        write = back = None
        if scratch is not None:
            write, back = timed_write(scratch, voxels)
        out.append(Sample(voxels.nbytes, read, write, back))
    return out


def channel_seconds(ch: ChannelCount, sample: Sample) -> float:
    """Seconds the blocks left of one channel take at one sample's rates.

    Level 0, per byte: the writer reads the source and writes the store; verify reads the
    source again and the store once. Level r >= 1: its writer reads the level below from
    the store (all of the level below's bytes: 4 or 8 of its voxels per voxel) and writes;
    verify reads the block back and the level below again. Each part is scaled by the
    share of blocks not yet written or not yet verified."""
    read, write, back = sample.rates()
    seconds, below = 0.0, 0
    for lv in ch.levels:
        if lv.level == 0:
            writing = lv.bytes * (read + write)
            verifying = lv.bytes * (read + back)
        else:
            writing = below * back + lv.bytes * write
            verifying = below * back + lv.bytes * back
        seconds += writing * lv.write_left + verifying * lv.verify_left
        below = lv.bytes
    return seconds


@dataclass(frozen=True)
class Estimate:
    median: float
    min: float
    max: float
    samples: int
    store_timed: bool

    def to_json(self) -> dict:
        return {"median": round(self.median, 3), "min": round(self.min, 3), "max": round(self.max, 3)}


def estimate(channels: list[ChannelCount], samples: dict[str, list[Sample]], *, store_timed: bool) -> Estimate:
    """Median, min and max over the samples of the whole run's seconds (pure): sample i
    of every channel prices that channel's blocks left, and their sum is estimate i."""
    rounds = max((len(s) for s in samples.values()), default=0)
    totals = []
    for i in range(rounds):
        totals.append(sum(channel_seconds(ch, samples[ch.name][min(i, len(samples[ch.name]) - 1)])
                          for ch in channels if samples.get(ch.name)))
    if not totals:
        return Estimate(0.0, 0.0, 0.0, 0, store_timed)
    return Estimate(statistics.median(totals), min(totals), max(totals), rounds, store_timed)


def is_left(channels: list[ChannelCount]) -> bool:
    return any(lv.write_left > 0 or lv.verify_left > 0 for ch in channels for lv in ch.levels)


def recommendations(*, needed: int, sharded: bool, can_shard: bool) -> list[str]:
    if needed > SHARDING_ADVISED_BYTES and not sharded and can_shard:
        return [f"{human_bytes(needed)} unsharded: set `[store] sharding = true` (one shard file per block; "
                f"past about 100 GiB a store is millions of chunk files)"]
    return []


@dataclass(frozen=True)
class PlanReport:
    """Everything `ndingest plan` says; `to_json` is its `--json`."""

    store: str
    store_exists: bool
    sharded: bool
    channels: list[ChannelCount]
    free_bytes: int | None
    free_where: str | None
    needed_bytes: int
    left_bytes: int
    estimate: Estimate
    recommendations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    unwritable: str | None = None  # why the store's folder (or its nearest parent) cannot be written

    @property
    def fits(self) -> bool:
        """What is left to write fits in the free space (unknown free space: True), and the
        folder it goes to can be written."""
        return self.unwritable is None and (self.free_bytes is None or self.left_bytes <= self.free_bytes)

    def to_json(self) -> dict:
        return {"channels": {ch.name: ch.to_json() for ch in self.channels},
                "free_bytes": self.free_bytes, "needed_bytes": self.needed_bytes,
                "estimate_seconds": self.estimate.to_json(),
                "left_bytes": self.left_bytes, "fits": self.fits, "sharding": self.sharded,
                "recommendations": self.recommendations}


def plan_report(plan: Plan, *, timing: bool = True, samples: int = SAMPLES) -> PlanReport:
    """Count, check the free space and time a few blocks; nothing is left in the store or
    beside it (the scratch folder is removed even on error)."""
    from .steps import channel_status

    sharded = plan.spec.store.sharding
    store = local_store_path(plan)
    has_markers = plan.markers_dir.exists()
    status = channel_status(plan) if has_markers else {}
    channels = [count_channel(cp, sharded=sharded, server_builds_levels=plan.store.builds_levels,
                              status=status.get(name))
                for name, cp in plan.channels.items()]
    needed, left = needed_bytes(channels), left_bytes(channels)
    notes = []
    timed: dict[str, list[Sample]] = {}
    unwritable = None
    if timing and is_left(channels):
        if store is None:
            notes.append("store I/O not timed (a bucket or a server): estimated from the source reads alone")
            timed = {cp.name: time_samples(plan, cp, scratch=None, count=samples) for cp in plan.channels.values()}
        else:
            timed, unwritable = timed_in_scratch(plan, nearest_existing(store), count=samples)
    return PlanReport(
        store=str(store) if store is not None else str(plan.spec.store.url or plan.spec.store.path),
        store_exists=store.exists() if store is not None else has_markers,
        sharded=sharded, channels=channels,
        free_bytes=free_bytes(plan), free_where=str(nearest_existing(store)) if store is not None else None,
        needed_bytes=needed, left_bytes=left,
        estimate=estimate(channels, timed, store_timed=store is not None and unwritable is None),
        recommendations=recommendations(needed=needed, sharded=sharded, can_shard=plan.spec.store.url is None),
        notes=notes, unwritable=unwritable)


def timed_in_scratch(plan: Plan, parent: Path, *, count: int) -> tuple[dict[str, list[Sample]], str | None]:
    """Every channel's samples, written into a temporary folder in `parent` that is removed
    after, even on error. A `parent` that cannot be written is no error here (the ingest
    would stop there with exit 7): the samples are then reads only, and the reason is
    returned beside them."""
    def sample_all(scratch: Path | None) -> dict[str, list[Sample]]:
        return {cp.name: time_samples(plan, cp, scratch=scratch, count=count) for cp in plan.channels.values()}

    scratch = None
    try:
        scratch = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=parent))
        return sample_all(scratch), None
    except OSError as exc:
        if isinstance(exc, NdingestError):  # a source that cannot be read: its own exit code
            raise
        reason = f"cannot write in {parent}: {exc.strerror or exc}"
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    return sample_all(None), reason


def human_bytes(n: float) -> str:
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def human_seconds(s: float) -> str:
    if s < 10:
        return f"{s:.2f} s"
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{s / 60:.1f} min"
    if s < 48 * 3600:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} days"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return [line(header), "-|-".join("-" * w for w in widths), *(line(r) for r in rows)]


def channel_lines(ch: ChannelCount) -> list[str]:
    """One channel's table: a row per level, and a total row when there are several."""
    header = ["level", "blocks", "tasks", "bytes", "files", "markers"] + (["written", "verified"]
                                                                           if ch.has_markers else [])

    def row(name: str, lvs: list[LevelCount]) -> list[str]:
        cells = [name, f"{sum(l.blocks for l in lvs):,}", f"{sum(l.tasks for l in lvs):,}",
                 human_bytes(sum(l.bytes for l in lvs)), f"{sum(l.files for l in lvs):,}",
                 f"{sum(l.markers for l in lvs):,}"]
        if ch.has_markers:
            cells += [f"{sum(l.written or 0 for l in lvs):,}", f"{sum(l.verified or 0 for l in lvs):,}"]
        return cells

    rows = [row(str(lv.level), [lv]) for lv in ch.levels] + ([row("all", ch.levels)] if len(ch.levels) > 1 else [])
    points = f", {ch.time_points} time points" if ch.time_points > 1 else ""
    return [f"{ch.name} ({ch.datatype}{points}):", *_table(header, rows)]


def report_lines(report: PlanReport) -> list[str]:
    """`ndingest plan`'s text (stdout); warnings are `warning_lines`."""
    out = []
    for ch in report.channels:
        out += channel_lines(ch) + [""]
    kind = "shard files, one per block" if report.sharded else "chunk files, one per chunk"
    out.append(f"store: {report.store} ({'exists' if report.store_exists else 'not made yet'}; files are {kind})")
    needed = f"needed {human_bytes(report.needed_bytes)}"
    if report.left_bytes != report.needed_bytes:
        needed += f", {human_bytes(report.left_bytes)} of it left to write"
    if report.free_bytes is None:
        out.append(f"free space: unknown (not a local folder); {needed}")
    else:
        verdict = "fits" if report.fits else "DOES NOT FIT"
        out.append(f"free space: {human_bytes(report.free_bytes)} in {report.free_where}; {needed}: {verdict}")
    est = report.estimate
    what = "what is left" if any(ch.has_markers for ch in report.channels) else "the ingest"
    if est.samples == 0:
        out.append(f"estimate for {what}: nothing to do")
    else:
        how = (f"{est.samples} timed block read(s) per channel and writes into a temporary folder beside the store"
               if est.store_timed else f"{est.samples} timed block read(s) per channel; store I/O not timed")
        out.append(f"estimate for {what}: {human_seconds(est.median)} (min {human_seconds(est.min)}, "
                   f"max {human_seconds(est.max)}; from {how})")
    out += [f"recommended: {r}" for r in report.recommendations]
    return out


def warning_lines(report: PlanReport) -> list[str]:
    """For stderr: what would stop the ingest (the free space), and estimate caveats."""
    out = list(report.notes)
    if report.unwritable is not None:
        out.append(f"warning: {report.unwritable}: the ingest would stop with exit 7")
    elif not report.fits:
        out.append(f"warning: {human_bytes(report.left_bytes)} to write but {human_bytes(report.free_bytes or 0)} "
                   f"free in {report.free_where}: the ingest would stop with exit 7 (disk full)")
    return out
