"""Prove the store equals the source, block by block, and write a report.

Each block is read back through a fresh store handle (never the writer's), compared
voxel for voxel with the source and with the checksum its marker recorded. Inside
`ingest` a verified block is marked, so a rerun of a finished ingest reads nothing
again; `ndingest verify` always re-reads everything.
"""
from __future__ import annotations

import logging
import time
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from . import markers
from .blocks import Box, BlockTask, Vec3, block_shape
from .downsample import factors
from .edits import Edit, made_after
from .errors import NdingestError, VerifyMismatch
from .ingest import children_box, level_block, reduce_children
from .plan import ChannelPlan, Plan
from .targets import Pending, Target

logger = logging.getLogger(__name__)

OK, OK_EARLIER = "ok", "ok (verified earlier)"
EDITED = "edited since ingest"  # a cutout POST to `ndingest serve` changed it: not a mismatch
REPORT_COLUMNS = ["channel", "t", "level", "block", "status", "detail", "voxels_differing",
                  "checksum_marker", "checksum_store"]


@dataclass(frozen=True)
class Mismatch:
    voxels: int
    first_zyx: tuple[int, int, int]


def compare_block(expected: np.ndarray, actual: np.ndarray) -> Mismatch | None:
    """None when equal in shape and every voxel; else how many voxels differ and the first.
    NaN equals NaN, since a float source may hold it."""
    if expected.shape != actual.shape:
        return Mismatch(voxels=max(expected.size, actual.size), first_zyx=(0, 0, 0))
    differ = expected != actual
    if expected.dtype.kind == "f":
        differ &= ~(np.isnan(expected) & np.isnan(actual))
    if not differ.any():
        return None
    first = tuple(int(i) for i in np.argwhere(differ)[0])
    return Mismatch(voxels=int(differ.sum()), first_zyx=first)  # type: ignore[arg-type]


def report_dir(plan: Plan) -> Path:
    return plan.state_dir / "_reports" / plan.spec.dataset.name / plan.spec.project.name


def _row(cp: ChannelPlan, task: BlockTask, level: int, box: Box, status: str = OK) -> dict:
    return {"channel": cp.name, "t": task.t, "level": level, "block": box.to_key(), "status": status,
            "detail": "", "voxels_differing": 0, "checksum_marker": "", "checksum_store": ""}


class _Inline(Executor):
    """Runs the call at once; the pool `verify_block` uses when it is given none."""

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future: Future = Future()
        future.set_result(fn(*args, **kwargs))
        return future


_INLINE = _Inline()


def verify_block(plan: Plan, cp: ChannelPlan, store: Target, task: BlockTask, box: Box, *, level: int = 0,
                 pool: Executor | None = None, edits: list[Edit] | None = None) -> dict:
    """One report row: `status` is "ok" or names what is wrong with this block (or that a
    POST edited it). Level 0 is compared with the source; level r with the level below,
    reduced again. The store is read while the source is, and the checksum (on `pool`)
    runs beside the compare."""
    return _verify_block(plan, cp, store, task, box, level=level, pool=pool, edits=edits)[0]


def _verify_block(plan: Plan, cp: ChannelPlan, store: Target, task: BlockTask, box: Box, *, level: int,
                  pool: Executor | None, children: np.ndarray | None = None,
                  edits: list[Edit] | None = None, reading: Pending | None = None) -> tuple[dict, np.ndarray | None]:
    """`verify_block`'s row, and the voxels the store holds (None if unreadable). A level
    r >= 1 block given `children` (its children box, read from the store by the caller)
    is expected to equal their reduction instead of reading them again. A block that
    differs where one of `edits` (cutout POSTs to `ndingest serve`) touched it is
    reported as edited, with when and by which key, not as a mismatch."""
    row = _row(cp, task, level, box)
    written = markers.task_dir(cp.markers_dir, markers.WRITTEN, level, task)
    marker = markers.read_marker(written, box)
    built_by_target = level > 0 and store.builds_levels  # a server's rebuild: no marker, no checksum
    if marker is None and not built_by_target:
        return {**row, "status": "not written", "detail": "no marker: the block was never written"}, None
    row["checksum_marker"] = marker["checksum"] if marker is not None else ""
    try:
        reading = reading or store.start_read(cp.ref(task.t), level, box)  # unless read ahead
        if children is None:
            expected = level_block(plan, cp, store, level=level, box=box, t=task.t)
        else:
            expected = reduce_children(plan, cp, children, level=level, box=box)
        stored = reading.wait()
    except NdingestError as exc:
        return {**row, "status": "unreadable", "detail": str(exc)}, None
    summing = (pool or _INLINE).submit(markers.checksum, stored)
    mismatch = compare_block(expected, stored)
    row["checksum_store"] = summing.result()
    checksum_differs = marker is not None and row["checksum_store"] != marker["checksum"]
    if (mismatch is not None or checksum_differs) and edits:
        since = _written_at(marker, markers.marker_path(written, box)) if marker is not None else \
            _written_at(markers.read_json(markers.levels_built_path(cp.markers_dir)),
                        markers.levels_built_path(cp.markers_dir), key="built_at")
        edit = next((e for e in made_after(edits, since) if e.touches(box, level=level, factors=factors(
            plan.spec.dataset.scaling_option), t=task.t if cp.spec.type == "timeseries" else None)), None)
        if edit is not None:
            when = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(edit.when))
            return {**row, "status": EDITED, "detail": f"changed by a cutout POST at {when} by key "
                                                       f"{edit.by or '(none: no keys, or a key without a name)'}"}, stored
    if mismatch is not None:
        z, y, x = mismatch.first_zyx
        first = (box.begin.x + x, box.begin.y + y, box.begin.z + z)
        return {**row, "status": "differs from source" if level == 0 else "differs from the level below",
                "voxels_differing": mismatch.voxels,
                "detail": f"{mismatch.voxels} voxels differ, first at x,y,z = {first}"}, stored
    if checksum_differs:
        return {**row, "status": "checksum differs from marker",
                "detail": f"marker {marker['checksum']}, store {row['checksum_store']}"}, stored
    return row, stored


def _written_at(record: dict | None, path: Path, *, key: str = "written_at") -> float | None:
    """When a block was written (or a server built the levels), as its record says; from
    the file's time for markers of versions that recorded none."""
    if record is not None and key in record:
        return float(record[key])
    return markers.written_at(path)


def _mark_verified(directory: Path, box: Box, row: dict) -> None:
    """A verified block's marker (made durable once for its task, by the caller)."""
    markers.write_marker(directory, box, {"checksum": row["checksum_store"], "verified_at": time.time()},
                         durable=False)


def _seal(directory: Path, task: BlockTask, marked: int) -> None:
    if not markers.seal_task(directory, task) and marked:  # sealing flushes the markers itself
        markers.flush_filesystem(directory)


def verify_task(plan: Plan, cp: ChannelPlan, task: BlockTask, *, level: int = 0, resume: bool,
                 store: Target | None = None, progress: Callable[[int, int], None] | None = None,
                 edits: list[Edit] | None = None) -> list[dict]:
    """Rows for every block of `task`; with `resume`, blocks verified before are skipped
    and newly verified ones are marked. `edits`: the channel's, if the caller read them
    already (one read per channel, not per task: a server's are a request)."""
    store = store or plan.store.reopened()  # a fresh reader, not the writer's handles
    directory = markers.task_dir(cp.markers_dir, markers.VERIFIED, level, task)
    done = markers.marked_in_task(directory, task) if resume else set()
    edits = store.edits(cp.channel_ref) if edits is None else edits
    rows, marked = [], 0
    todo = [box for box in task.blocks if box not in done]
    ahead: dict[Box, Pending] = {}
    checked = 0  # blocks of `todo` begun
    with ThreadPoolExecutor(1) as pool:  # per call: Luigi forks workers, and pools do not survive a fork
        for i, box in enumerate(task.blocks, start=1):
            if box in done:
                rows.append(_row(cp, task, level, box, OK_EARLIER))
            else:
                checked += 1
                read_ahead(store, cp, task, level, todo[checked:checked + store.max_in_flight], ahead)
                row = _verify_block(plan, cp, store, task, box, level=level, pool=pool, edits=edits,
                                    reading=ahead.pop(box, None))[0]
                rows.append(row)
                if resume and row["status"] in (OK, EDITED):
                    _mark_verified(directory, box, row)
                    marked += 1
            if progress:
                progress(i, len(task.blocks))
    if resume:
        _seal(directory, task, marked)
    return rows


def read_ahead(store: Target, cp: ChannelPlan, task: BlockTask, level: int, upcoming: list[Box],
               started: dict[Box, Pending]) -> None:
    """Start reading the next `store.max_in_flight - 1` blocks while this one is checked: a
    server answers several GETs at once, and one at a time leaves it idle between them
    (a local store reads one block ahead of none, as before)."""
    for box in upcoming[: store.max_in_flight - 1]:
        if box not in started:
            started[box] = store.start_read(cp.ref(task.t), level, box)


def nested_children(plan: Plan, cp: ChannelPlan) -> dict[Box, list[Box]] | None:
    """Each level-1 block's level-0 blocks, when those tile its children box exactly (the
    block grids nest: true unless an offset or a block size is odd on a halved axis);
    None when some level-0 block would feed two level-1 blocks."""
    lv0, lv1 = cp.levels[0], cp.levels[1]
    f = factors(plan.spec.dataset.scaling_option)
    size1 = block_shape(lv1.chunk, plan.spec.ingest.block_chunks)
    origin = lv1.extent.begin
    parents = {b.begin: b for s in lv1.tasks if s.t == 0 for b in s.blocks}
    children: dict[Box, list[Box]] = {b: [] for b in parents.values()}
    for s in lv0.tasks:
        if s.t != 0:
            continue
        for b in s.blocks:
            image = Vec3(*(v // fa for v, fa in zip(b.begin, f)))
            parent = parents.get(Vec3(*(o + (v - o) // n * n for v, o, n in zip(image, origin, size1))))
            if parent is None or not children_box(plan, cp, 1, parent).contains(b):
                return None
            children[parent].append(b)
    if any(sum(b.shape.volume for b in kids) != children_box(plan, cp, 1, parent).shape.volume
           for parent, kids in children.items()):
        return None
    return children


def verify_levels_0_and_1(plan: Plan, cp: ChannelPlan, children: dict[Box, list[Box]], *, resume: bool,
                          store: Target, progress: Callable[[int], None] | None = None,
                          edits: list[Edit] | None = None) -> list[dict]:
    """Levels 0 and 1 in one pass over level 0: each level-1 block after its level-0
    blocks, each of those read once from the store, compared with the source, and put in
    place in the children the level-1 block is then checked against (built from the very
    voxels just verified). Without it verify reads level 0 twice, its costliest part of a
    pyramid. Rows in `verify_task`'s order, level 0 first."""
    lv0, lv1 = cp.levels[0], cp.levels[1]
    task_of = {(s.t, b): s for s in lv0.tasks for b in s.blocks}
    edits = store.edits(cp.channel_ref) if edits is None else edits
    done: dict[tuple[int, int], set[Box]] = {}
    marked: dict[tuple[int, int], int] = {}
    rows: dict[tuple[int, int, Box], dict] = {}

    def directory(level: int, task: BlockTask):
        return markers.task_dir(cp.markers_dir, markers.VERIFIED, level, task)

    def earlier(level: int, task: BlockTask, box: Box) -> bool:
        if not resume:
            return False
        if (level, task.index) not in done:
            done[(level, task.index)] = markers.marked_in_task(directory(level, task), task)
        return box in done[(level, task.index)]

    def record(level: int, task: BlockTask, box: Box, row: dict) -> None:
        rows[(level, task.index, box)] = row
        if resume and row["status"] in (OK, EDITED):
            _mark_verified(directory(level, task), box, row)
            marked[(level, task.index)] = marked.get((level, task.index), 0) + 1
        if progress:
            progress(1)

    with ThreadPoolExecutor(1) as pool:  # per call: Luigi forks workers, and pools do not survive a fork
        for s1 in lv1.tasks:
            for box1 in s1.blocks:
                parent_earlier = earlier(1, s1, box1)
                have = children_box(plan, cp, 1, box1)
                complete = not parent_earlier  # the children can still be put together
                voxels: np.ndarray | None = None
                for box0 in children[box1]:
                    s0 = task_of[(s1.t, box0)]
                    if earlier(0, s0, box0):
                        record(0, s0, box0, _row(cp, s0, 0, box0, OK_EARLIER))
                        stored = _read_or_none(store, cp, s0.t, box0) if complete else None
                    else:
                        row, stored = _verify_block(plan, cp, store, s0, box0, level=0, pool=pool, edits=edits)
                        record(0, s0, box0, row)
                    if complete and stored is None:
                        complete, voxels = False, None
                    if complete:
                        if voxels is None:
                            voxels = np.empty(have.shape[::-1], dtype=stored.dtype)
                        voxels[box0.shift(-have.begin).to_zyx_slices()] = stored
                    del stored
                if parent_earlier:
                    record(1, s1, box1, _row(cp, s1, 1, box1, OK_EARLIER))
                else:
                    record(1, s1, box1, _verify_block(plan, cp, store, s1, box1, level=1, pool=pool, edits=edits,
                                                      children=voxels if complete else None)[0])
                del voxels
    if resume:
        for lv in (lv0, lv1):
            for s in lv.tasks:
                _seal(directory(lv.level, s), s, marked.get((lv.level, s.index), 0))
    return [rows[(lv.level, s.index, b)] for lv in (lv0, lv1) for s in lv.tasks for b in s.blocks]


def _read_or_none(store: Target, cp: ChannelPlan, t: int, box: Box) -> np.ndarray | None:
    """A block verified earlier, read for the level above it; None if it cannot be read
    (the level above then reads its children itself, and reports what fails)."""
    try:
        return store.read(cp.ref(t), 0, box)
    except NdingestError:
        return None


def write_report(plan: Plan, rows: list[dict]) -> Path:
    """verify.csv and verify.json (one row per block) in the store's report folder."""
    import pandas as pd

    frame = pd.DataFrame(rows, columns=REPORT_COLUMNS)
    frame["checked_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    directory = report_dir(plan)
    csv_path = directory / "verify.csv"
    markers.atomic_write(csv_path, frame.to_csv(index=False).encode())
    markers.atomic_write(directory / "verify.json", frame.to_json(orient="records", indent=1).encode())
    return csv_path


def raise_on_mismatch(rows: list[dict], report: Path) -> None:
    bad = [r for r in rows if r["status"] not in (OK, OK_EARLIER, EDITED)]
    if bad:
        named = "; ".join(f"{r['channel']} t{r['t']} level{r['level']} {r['block']}: {r['status']}" for r in bad[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise VerifyMismatch(f"verify failed for {len(bad)} of {len(rows)} blocks: {named}{more} (report: {report})")


def verify_plan(plan: Plan, *, resume: bool, progress: Callable[[int], None] | None = None) -> tuple[list[dict], Path]:
    """Verify every block of every channel; writes the report, then raises on a mismatch."""
    rows: list[dict] = []
    store = plan.store.reopened()  # a fresh reader, not the writer's handles
    for cp in plan.channels.values():
        edits = store.edits(cp.channel_ref)
        children = nested_children(plan, cp) if len(cp.levels) > 1 else None
        if children is not None:
            rows += verify_levels_0_and_1(plan, cp, children, resume=resume, store=store, progress=progress,
                                          edits=edits)
        for lv in cp.levels[2 if children is not None else 0:]:
            for task in lv.tasks:
                before = len(rows)
                rows += verify_task(plan, cp, task, level=lv.level, resume=resume, store=store, edits=edits)
                if progress:
                    progress(len(rows) - before)
    report = write_report(plan, rows)
    raise_on_mismatch(rows, report)
    return rows, report
