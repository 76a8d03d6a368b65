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
from .blocks import Box, Shard
from .errors import NdingestError, VerifyMismatch
from .ingest import level_block
from .plan import ChannelPlan, Plan
from .targets import LocalStore

logger = logging.getLogger(__name__)

OK, OK_EARLIER = "ok", "ok (verified earlier)"
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
    return plan.store.path / "_reports" / plan.spec.dataset.name / plan.spec.project.name


def _row(cp: ChannelPlan, shard: Shard, level: int, box: Box, status: str = OK) -> dict:
    return {"channel": cp.name, "t": shard.t, "level": level, "block": box.to_key(), "status": status,
            "detail": "", "voxels_differing": 0, "checksum_marker": "", "checksum_store": ""}


class _Inline(Executor):
    """Runs the call at once; the pool `verify_block` uses when it is given none."""

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future: Future = Future()
        future.set_result(fn(*args, **kwargs))
        return future


_INLINE = _Inline()


def verify_block(plan: Plan, cp: ChannelPlan, store: LocalStore, shard: Shard, box: Box, *, level: int = 0,
                 pool: Executor | None = None) -> dict:
    """One report row: `status` is "ok" or names what is wrong with this block. Level 0 is
    compared with the source; level r with the level below, reduced again. The store is
    read while the source is, and the checksum (on `pool`) runs beside the compare."""
    row = _row(cp, shard, level, box)
    marker = markers.read_marker(markers.shard_dir(cp.markers_dir, markers.WRITTEN, level, shard), box)
    if marker is None:
        return {**row, "status": "not written", "detail": "no marker: the block was never written"}
    row["checksum_marker"] = marker["checksum"]
    try:
        reading = store.start_read(cp.ref(shard.t), level, box)
        expected = level_block(plan, cp, store, level=level, box=box, t=shard.t)
        stored = reading.wait()
    except NdingestError as exc:
        return {**row, "status": "unreadable", "detail": str(exc)}
    summing = (pool or _INLINE).submit(markers.checksum, stored)
    mismatch = compare_block(expected, stored)
    row["checksum_store"] = summing.result()
    if mismatch is not None:
        z, y, x = mismatch.first_zyx
        first = (box.begin.x + x, box.begin.y + y, box.begin.z + z)
        return {**row, "status": "differs from source" if level == 0 else "differs from the level below",
                "voxels_differing": mismatch.voxels,
                "detail": f"{mismatch.voxels} voxels differ, first at x,y,z = {first}"}
    if row["checksum_store"] != marker["checksum"]:
        return {**row, "status": "checksum differs from marker",
                "detail": f"marker {marker['checksum']}, store {row['checksum_store']}"}
    return row


def verify_shard(plan: Plan, cp: ChannelPlan, shard: Shard, *, level: int = 0, resume: bool,
                 store: LocalStore | None = None, progress: Callable[[int, int], None] | None = None) -> list[dict]:
    """Rows for every block of `shard`; with `resume`, blocks verified before are skipped
    and newly verified ones are marked."""
    store = store or LocalStore(plan.store.path)  # a fresh reader, not the writer's handles
    directory = markers.shard_dir(cp.markers_dir, markers.VERIFIED, level, shard)
    done = markers.marked_in_shard(directory, shard) if resume else set()
    rows, marked = [], 0
    with ThreadPoolExecutor(1) as pool:  # per call: Luigi forks workers, and pools do not survive a fork
        for i, box in enumerate(shard.blocks, start=1):
            if box in done:
                rows.append(_row(cp, shard, level, box, OK_EARLIER))
            else:
                row = verify_block(plan, cp, store, shard, box, level=level, pool=pool)
                rows.append(row)
                if resume and row["status"] == OK:  # made durable below, once for the shard
                    markers.write_marker(directory, box, {"checksum": row["checksum_store"],
                                                          "verified_at": time.time()}, durable=False)
                    marked += 1
            if progress:
                progress(i, len(shard.blocks))
    if resume and not markers.seal_shard(directory, shard) and marked:  # sealing flushes the markers itself
        markers.flush_filesystem(directory)
    return rows


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
    bad = [r for r in rows if r["status"] not in (OK, OK_EARLIER)]
    if bad:
        named = "; ".join(f"{r['channel']} t{r['t']} level{r['level']} {r['block']}: {r['status']}" for r in bad[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise VerifyMismatch(f"verify failed for {len(bad)} of {len(rows)} blocks: {named}{more} (report: {report})")


def verify_plan(plan: Plan, *, resume: bool, progress: Callable[[int], None] | None = None) -> tuple[list[dict], Path]:
    """Verify every block of every channel; writes the report, then raises on a mismatch."""
    rows: list[dict] = []
    store = LocalStore(plan.store.path)  # a fresh reader, not the writer's handles
    for cp in plan.channels.values():
        for lv in cp.levels:
            for shard in lv.shards:
                before = len(rows)
                rows += verify_shard(plan, cp, shard, level=lv.level, resume=resume, store=store)
                if progress:
                    progress(len(rows) - before)
    report = write_report(plan, rows)
    raise_on_mismatch(rows, report)
    return rows, report
