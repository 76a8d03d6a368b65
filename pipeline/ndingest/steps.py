"""What each pipeline step does, as plain functions over a `Plan` (tasks only call these).

Order: inspect -> create dataset -> create project (+token) -> create channels -> write
tasks -> verify. `preflight` runs every check that needs no write, so bad input stops
the run before anything lands in the store.
"""
from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import catalog, markers
from .blocks import Vec3
from .channellock import LOCK_FILES
from .edits import read_edits
from .errors import SpecError
from .ingest import block_ranges, check_manifest, ensure_manifest, size_changed, spot_check_source
from .inspection import SourceSummary, summarize
from .plan import Plan
from .sources import merge_ranges
from .kvpath import KvPath
from .targets import VolumeRef, precomputed_info

logger = logging.getLogger(__name__)


def inspect_path(plan: Plan) -> Path:
    return plan.markers_dir / "inspect.json"


def _given_window(spec) -> list[float] | None:
    """The spec's window range as JSON stores it (a list), so cached and current compare equal."""
    return list(spec.window_range) if spec.window_range is not None else None


def cached_summaries(plan: Plan) -> dict[str, SourceSummary] | None:
    """The summaries Inspect wrote, if they still describe the sources as they are."""
    stored = markers.read_json(inspect_path(plan))
    if stored is None:
        return None
    out = {}
    for name, cp in plan.channels.items():
        entry = stored.get(name)
        if entry is None or entry["source"] != cp.source.fingerprint() or entry["window_given"] != _given_window(cp.spec):
            return None
        out[name] = SourceSummary.from_json(entry["summary"])
    return out


def lock_path(plan: Plan) -> Path:
    """The run lock of a local-scheduler run (`runlock`)."""
    return plan.markers_dir / "ingest.lock"


def failures_dir(plan: Plan) -> Path:
    """Why tasks failed, one JSON file each, for the process that started the run."""
    return plan.markers_dir / "_failures"


def _known_windows(plan: Plan) -> dict[str, tuple[float, float]]:
    """Window ranges known without reading a voxel: given in the spec, or recorded."""
    cached = cached_summaries(plan) or {}
    known = {name: s.window_range for name, s in cached.items() if s.window_range is not None}
    return {**known, **{name: cp.spec.window_range for name, cp in plan.channels.items()
                        if cp.spec.window_range is not None}}


def scan_voxels(plan: Plan) -> int:
    """Voxels `inspect SPEC` still has to read for window ranges (0 once an ingest has
    recorded them, or all are given)."""
    known = _known_windows(plan)
    return sum(cp.source.size_xyz.volume * cp.source.time_points
               for name, cp in plan.channels.items() if name not in known)


def inspect_plan(plan: Plan, *, scan: bool, progress: Callable[[int], None] | None = None,
                 ) -> dict[str, SourceSummary]:
    """Summaries of every channel's source, from headers. With `scan`, window ranges not
    known yet are read from the voxels (`inspect SPEC`); without, they stay None until the
    ingest has written every block (the pipeline's Inspect: it reads no voxel, so the
    source is read twice in all, by the writes and by verify)."""
    cached = cached_summaries(plan)
    if cached is not None and not (scan and any(s.window_range is None for s in cached.values())):
        return cached
    known = _known_windows(plan)
    return {name: summarize(cp.source, window=known.get(name), scan=scan, progress=progress)
            for name, cp in plan.channels.items()}


def record_inspection(plan: Plan, summaries: dict[str, SourceSummary]) -> None:
    check_catalog(plan, summaries)
    markers.write_json(inspect_path(plan), {
        name: {"summary": s.to_json(), "source": plan.channels[name].source.fingerprint(),
               "window_given": _given_window(plan.channels[name].spec)}
        for name, s in summaries.items()
    })


def record_windows(plan: Plan) -> dict[str, tuple[float, float]]:
    """Reduce each channel's window range not known yet from its level-0 blocks' markers
    (every block is written by now) into the catalog and `inspect.json`; returns them."""
    stored = markers.read_json(inspect_path(plan)) or {}
    found = {}
    for name, cp in plan.channels.items():
        entry = stored.get(name)
        if entry is None or entry["summary"]["window_range"] is not None:
            continue
        found[name] = merge_ranges(block_ranges(plan, cp))
        plan.catalog.set_window(plan.spec.project.name, name, found[name])
        entry["summary"]["window_range"] = list(found[name])
    if found:
        markers.write_json(inspect_path(plan), stored)
    return found


@dataclass(frozen=True)
class CatalogEntries:
    """This spec's catalog rows by what they are (the tutorial's steps 3 to 5)."""

    dataset: catalog.Row
    project: list[catalog.Row]  # the project and its token: ndstore reaches a project through a token
    channels: list[catalog.Row]

    @property
    def all(self) -> list[catalog.Row]:
        return [self.dataset, *self.project, *self.channels]


def catalog_entries(plan: Plan, summaries: dict[str, SourceSummary] | None) -> CatalogEntries:
    """A channel whose window range is not known yet (no summaries, or not scanned) gets
    (0, 0), and its row does not compare windows."""
    spec, first = plan.spec, next(iter(plan.channels))
    channels = []
    for name, cp in plan.channels.items():
        summary = summaries.get(name) if summaries else None
        window = summary.window_range if summary else None
        row = catalog.channel_row(cp.spec, project=spec.project.name, datatype=cp.datatype, time_range=cp.time_range,
                                  window=window if window is not None else (0.0, 0.0), default=name == first)
        channels.append(row if window is not None else
                        catalog.Row(row.table, row.key, row.values, row.kind, row.ignore + ("startwindow", "endwindow")))
    return CatalogEntries(
        dataset=catalog.dataset_row(spec.dataset, size_xyz=plan.size, levels=plan.scaling_levels),
        project=catalog.project_rows(spec.project, dataset=spec.dataset.name),
        channels=channels,
    )


def check_catalog(plan: Plan, summaries: dict[str, SourceSummary] | None) -> None:
    """Raise CatalogConflict if the catalog holds any entry of this spec with other values
    (window ranges compared only where known)."""
    _check(plan, catalog_entries(plan, summaries).all)


def _check(plan: Plan, rows: list[catalog.Row]) -> None:
    plan.catalog.check_rows(rows)


def check_dataset_size(plan: Plan) -> None:
    """SourceChanged if the catalog holds this dataset with another size than the sources
    have now (exit 3 naming both sizes, not a catalog conflict: the source changed)."""
    row = plan.catalog.find_dataset(plan.spec.dataset.name)
    if row is None:
        return
    was = Vec3(row["ximagesize"], row["yimagesize"], row["zimagesize"])
    if was != plan.size:
        sources = ", ".join(cp.source.description for cp in plan.channels.values())
        raise size_changed(plan, sources, was, plan.size)


def preflight(plan: Plan, *, skip_channel: str | None = None) -> None:
    """Every check that writes nothing: sources unchanged since their blocks were written
    (size and mtime of every file, and a few marked blocks re-read), and no catalog
    conflict; for a server, first that it accepts our key. `skip_channel` is about to be
    restarted, so it is exempt from the source checks, but not from its dataset's size."""
    plan.catalog.check_access()
    check_dataset_size(plan)
    for cp in plan.channels.values():
        if cp.name != skip_channel:
            check_manifest(cp, plan)
            spot_check_source(plan, cp)
    summaries = cached_summaries(plan)
    entries = catalog_entries(plan, summaries)
    rows = [entries.dataset, *entries.project,
            *(r for r in entries.channels if r.values["channel_name"] != skip_channel)]
    _check(plan, rows)


def in_catalog(plan: Plan, rows: list[catalog.Row]) -> bool:
    """Every row is stored with these values (a task's `complete()`)."""
    return plan.catalog.rows_present(rows)


def add_to_catalog(plan: Plan, rows: list[catalog.Row]) -> None:
    plan.catalog.ensure_rows(rows)


def channels_ready(plan: Plan) -> bool:
    summaries = cached_summaries(plan)
    if summaries is None or not in_catalog(plan, catalog_entries(plan, summaries).channels):
        return False
    return all(plan.store.info(ref) is not None for cp in plan.channels.values() for ref in cp.refs)


def create_channels(plan: Plan) -> None:
    """Channel rows, each channel's precomputed volume(s), and its manifest. A server makes
    a channel's volumes with its row; `create_volume` then checks they are these."""
    summaries = inspect_plan(plan, scan=False)
    add_to_catalog(plan, catalog_entries(plan, summaries).channels)
    for cp in plan.channels.values():
        info = precomputed_info(datatype=cp.datatype, channel_type=cp.spec.type, scales=plan.scales)
        for ref in cp.refs:
            plan.store.create_volume(ref, info)
        ensure_manifest(cp, plan)


def catalog_window(plan: Plan, channel: str) -> tuple[float, float]:
    """The window range the catalog holds for `channel` (set by ingest); a channel not
    ingested yet is a usage error (exit 2), as `slice` and `view` need one."""
    row = plan.catalog.find_channel(plan.spec.project.name, channel)
    if row is None:
        raise SpecError(f"{plan.catalog.where}: channel {channel} is not in the catalog; run ingest first")
    return (row["startwindow"], row["endwindow"])


def _propagate(plan: Plan, channels: list[str], state: int) -> None:
    for name in channels:
        plan.catalog.set_propagate(plan.spec.project.name, name, state)


def mark_propagating(plan: Plan, channel: str) -> None:
    """ndstore's propagate 1: building the hierarchy is under way."""
    _propagate(plan, [channel], catalog.PROPAGATE_UNDER_WAY)


def _stale_by_edits(row: dict | None, cp) -> bool:
    """A channel a cutout POST to `ndingest serve` made stale (propagate 0, with edit
    records): its levels wait for the server's setPropagate/1/."""
    return row is not None and row["propagate"] == catalog.PROPAGATE_NOT and bool(read_edits(cp.markers_dir))


def mark_propagated(plan: Plan) -> None:
    """ndstore's propagate 2, set only once verify passed for every level; except for a
    channel stale by edits (`_stale_by_edits`), where saying 2 would be a lie."""
    stale = [name for name, cp in plan.channels.items()
             if _stale_by_edits(plan.catalog.find_channel(plan.spec.project.name, name), cp)]
    for name in stale:
        logger.warning("channel %s was edited through `ndingest serve`: its levels stay stale (propagate 0) "
                       "until the server's setPropagate/1/ rebuilds them", name)
    _propagate(plan, [name for name in plan.channels if name not in stale], catalog.PROPAGATE_DONE)


def all_propagated(plan: Plan) -> bool:
    """Every channel built (2), or stale by edits (see `mark_propagated`)."""
    for name, cp in plan.channels.items():
        row = plan.catalog.find_channel(plan.spec.project.name, name)
        if row is None or (row["propagate"] != catalog.PROPAGATE_DONE and not _stale_by_edits(row, cp)):
            return False
    return True


def levels_built(plan: Plan, channel: str) -> bool:
    """The target built `channel`'s levels >= 1 from level 0 (a server's getPropagate 2);
    only for targets that build them (`builds_levels`)."""
    return (plan.catalog.find_channel(plan.spec.project.name, channel) or {}).get("propagate") == \
        catalog.PROPAGATE_DONE


def build_levels(plan: Plan, channel: str) -> None:
    """Have the server build `channel`'s levels >= 1 from the level 0 just written, wait
    until they are (`remote.RestCatalog.build_levels`), and note it beside the markers."""
    plan.catalog.build_levels(channel)  # type: ignore[attr-defined]
    markers.write_json(markers.levels_built_path(plan.channel(channel).markers_dir), {"built_at": time.time()})


def channel_status(plan: Plan) -> dict[str, dict]:
    """Blocks done/total per channel (every level), from the markers alone; levels a server
    builds itself have none, and count as done once it said they were built (and every
    level-0 block is written)."""
    out = {}
    for name, cp in plan.channels.items():
        built = plan.store.builds_levels and markers.levels_built_path(cp.markers_dir).exists() and all(
            markers.task_complete(markers.task_dir(cp.markers_dir, markers.WRITTEN, 0, s), s) for s in cp.tasks)
        levels = {
            str(lv.level): {
                "done": lv.total_blocks if lv.level > 0 and built else
                markers.count_marked(cp.markers_dir, markers.WRITTEN, lv.level, lv.tasks),
                "verified": markers.count_marked(cp.markers_dir, markers.VERIFIED, lv.level, lv.tasks),
                "total": lv.total_blocks,
            }
            for lv in cp.levels
        }
        out[name] = {
            "done": sum(lv["done"] for lv in levels.values()),
            "total": cp.total_blocks,
            "verified": sum(lv["verified"] for lv in levels.values()),
            "levels": levels,
            "tasks": sum(len(lv.tasks) for lv in cp.levels),
            "time_points": cp.source.time_points,
            "datatype": cp.datatype,
            "volume": plan.store.location(VolumeRef(cp.dataset, cp.project, cp.name)),  # t{t}/ below it
        }
    return out


def new_folders(plan: Plan) -> list[Path]:
    """The folders on the way to the project's markers that do not exist yet, outermost
    first: what a run that fails early may remove again."""
    if isinstance(plan.markers_dir, KvPath):  # an object store has no folders: only the prefix's objects
        return [] if plan.markers_dir.exists() else [plan.markers_dir]
    chain = [plan.markers_dir, *plan.markers_dir.parents]
    missing = [p for p in chain if not p.exists()]
    return missing[::-1]


def forget_failed_start(plan: Plan, created: list[Path]) -> None:
    """After a run that failed before Inspect finished (a source refused at its first read),
    remove what it made for its own bookkeeping (the lock, failure records), so a refused
    source leaves the store as it was. Only a chain of folders holding nothing else is
    removed: anything another run wrote in between stays."""
    if not created:
        return
    bookkeeping = {path.name for path in (lock_path(plan), failures_dir(plan))}
    try:
        if {name for name in set(markers.listdir(plan.markers_dir)) - bookkeeping
                if not _holds_only_channel_locks(plan, name)}:
            return
        for outer, inner in zip(created, created[1:]):
            if markers.listdir(outer) != [inner.name]:
                return
    except FileNotFoundError:
        return
    if isinstance(created[0], KvPath):
        created[0].remove_tree()
    else:
        shutil.rmtree(created[0], ignore_errors=True)


def _holds_only_channel_locks(plan: Plan, name: str) -> bool:
    """Whether markers entry `name` is a channel's folder holding only its lock files
    (`channellock`, which the run took before it failed)."""
    if name not in plan.channels or isinstance(plan.markers_dir, KvPath):
        return False
    try:
        return set(markers.listdir(plan.markers_dir / name)) <= set(LOCK_FILES)
    except (FileNotFoundError, NotADirectoryError):
        return False


def restart_channel(plan: Plan, channel: str) -> None:
    """Forget everything written for `channel`, so the next run writes it from the source."""
    cp = plan.channel(channel)
    markers.drop(cp.markers_dir)
    plan.catalog.delete_channel(plan.spec.project.name, channel)
    for ref in cp.refs:
        plan.store.forget_volume(ref)
    stored = markers.read_json(inspect_path(plan))
    if stored and channel in stored:
        del stored[channel]
        markers.write_json(inspect_path(plan), stored)
