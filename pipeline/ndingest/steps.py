"""What each pipeline step does, as plain functions over a `Plan` (tasks only call these).

Order: inspect -> create dataset -> create project (+token) -> create channels -> write
shards -> verify. `preflight` runs every check that needs no write, so bad input stops
the run before anything lands in the store.
"""
from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import catalog, markers
from .blocks import Vec3
from .errors import SpecError
from .ingest import check_manifest, ensure_manifest, size_changed, spot_check_source
from .inspection import SourceSummary, summarize
from .plan import Plan
from .targets import precomputed_info

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


def scan_progress_path(plan: Plan) -> Path:
    return plan.markers_dir / "inspect.progress.json"


def lock_path(plan: Plan) -> Path:
    """The run lock of a local-scheduler run (`runlock`)."""
    return plan.markers_dir / "ingest.lock"


def failures_dir(plan: Plan) -> Path:
    """Why tasks failed, one JSON file each, for the process that started the run."""
    return plan.markers_dir / "_failures"


def scan_voxels(plan: Plan) -> int:
    """Voxels the window-range scan still has to read (0 once inspected or all given)."""
    if cached_summaries(plan) is not None:
        return 0
    return sum(cp.source.size_xyz.volume * cp.source.time_points
               for cp in plan.channels.values() if cp.spec.window_range is None)


def inspect_plan(plan: Plan, *, progress: Callable[[int], None] | None = None) -> dict[str, SourceSummary]:
    """Summaries of every channel's source (window ranges scanned once, then cached)."""
    cached = cached_summaries(plan)
    if cached is not None:
        return cached
    return {name: summarize(cp.source, window=cp.spec.window_range, progress=progress)
            for name, cp in plan.channels.items()}


def record_inspection(plan: Plan, summaries: dict[str, SourceSummary]) -> None:
    check_catalog(plan, summaries)
    markers.write_json(inspect_path(plan), {
        name: {"summary": s.to_json(), "source": plan.channels[name].source.fingerprint(),
               "window_given": _given_window(plan.channels[name].spec)}
        for name, s in summaries.items()
    })


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
    """Without summaries the channels' window ranges are (0, 0): not known yet."""
    spec, first = plan.spec, next(iter(plan.channels))
    channels = []
    for name, cp in plan.channels.items():
        summary = summaries.get(name) if summaries else None
        channels.append(catalog.channel_row(
            cp.spec, project=spec.project.name, datatype=cp.datatype, time_range=cp.time_range,
            window=summary.window_range if summary else (0.0, 0.0), default=name == first))
    return CatalogEntries(
        dataset=catalog.dataset_row(spec.dataset, size_xyz=plan.size, levels=plan.scaling_levels),
        project=catalog.project_rows(spec.project, dataset=spec.dataset.name),
        channels=channels,
    )


def check_catalog(plan: Plan, summaries: dict[str, SourceSummary] | None) -> None:
    """Raise CatalogConflict if the catalog holds any entry of this spec with other values.
    Without summaries the window ranges are not compared (they are not known yet)."""
    _check(plan, catalog_entries(plan, summaries).all, windows_known=summaries is not None)


def _check(plan: Plan, rows: list[catalog.Row], *, windows_known: bool) -> None:
    if not windows_known:
        rows = [catalog.Row(r.table, r.key, r.values, r.kind, r.ignore + ("startwindow", "endwindow")) for r in rows]
    catalog.check_rows(catalog.engine_for(plan.store.catalog_path, create=False), rows)


def check_dataset_size(plan: Plan) -> None:
    """SourceChanged if the catalog holds this dataset with another size than the sources
    have now (exit 3 naming both sizes, not a catalog conflict: the source changed)."""
    row = catalog.find_dataset(catalog.engine_for(plan.store.catalog_path, create=False), plan.spec.dataset.name)
    if row is None:
        return
    was = Vec3(row["ximagesize"], row["yimagesize"], row["zimagesize"])
    if was != plan.size:
        sources = ", ".join(cp.source.description for cp in plan.channels.values())
        raise size_changed(plan, sources, was, plan.size)


def preflight(plan: Plan, *, skip_channel: str | None = None) -> None:
    """Every check that writes nothing: sources unchanged since their blocks were written
    (size and mtime of every file, and a few marked blocks re-read), and no catalog
    conflict. `skip_channel` is about to be restarted, so it is exempt from the source
    checks, but not from its dataset's size."""
    check_dataset_size(plan)
    for cp in plan.channels.values():
        if cp.name != skip_channel:
            check_manifest(cp, plan)
            spot_check_source(plan, cp)
    summaries = cached_summaries(plan)
    entries = catalog_entries(plan, summaries)
    rows = [entries.dataset, *entries.project,
            *(r for r in entries.channels if r.values["channel_name"] != skip_channel)]
    _check(plan, rows, windows_known=summaries is not None)


def in_catalog(plan: Plan, rows: list[catalog.Row]) -> bool:
    """Every row is stored with these values (a task's `complete()`)."""
    return catalog.rows_present(catalog.engine_for(plan.store.catalog_path, create=False), rows)


def add_to_catalog(plan: Plan, rows: list[catalog.Row]) -> None:
    catalog.ensure_rows(catalog.engine_for(plan.store.catalog_path, create=True), rows)


def channels_ready(plan: Plan) -> bool:
    summaries = cached_summaries(plan)
    if summaries is None or not in_catalog(plan, catalog_entries(plan, summaries).channels):
        return False
    return all(plan.store.info(ref) is not None for cp in plan.channels.values() for ref in cp.refs)


def create_channels(plan: Plan) -> None:
    """Channel rows, each channel's precomputed volume(s), and its manifest."""
    summaries = inspect_plan(plan)
    add_to_catalog(plan, catalog_entries(plan, summaries).channels)
    for cp in plan.channels.values():
        info = precomputed_info(datatype=cp.datatype, channel_type=cp.spec.type, scales=plan.scales)
        for ref in cp.refs:
            plan.store.create_volume(ref, info)
        ensure_manifest(cp, plan)


def catalog_window(plan: Plan, channel: str) -> tuple[float, float]:
    """The window range the catalog holds for `channel` (set by ingest); a channel not
    ingested yet is a usage error (exit 2), as `slice` and `view` need one."""
    row = catalog.find_channel(catalog.engine_for(plan.store.catalog_path, create=False),
                               plan.spec.project.name, channel)
    if row is None:
        raise SpecError(f"{plan.store.catalog_path}: channel {channel} is not in the catalog; run ingest first")
    return (row["startwindow"], row["endwindow"])


def _propagate(plan: Plan, channels: list[str], state: int) -> None:
    engine = catalog.engine_for(plan.store.catalog_path, create=False)
    if engine is not None:
        for name in channels:
            catalog.set_propagate(engine, plan.spec.project.name, name, state)


def mark_propagating(plan: Plan, channel: str) -> None:
    """ndstore's propagate 1: building the hierarchy is under way."""
    _propagate(plan, [channel], catalog.PROPAGATE_UNDER_WAY)


def mark_propagated(plan: Plan) -> None:
    """ndstore's propagate 2, set only once verify passed for every level."""
    _propagate(plan, list(plan.channels), catalog.PROPAGATE_DONE)


def all_propagated(plan: Plan) -> bool:
    engine = catalog.engine_for(plan.store.catalog_path, create=False)
    rows = [catalog.find_channel(engine, plan.spec.project.name, name) for name in plan.channels]
    return all(r is not None and r["propagate"] == catalog.PROPAGATE_DONE for r in rows)


def channel_status(plan: Plan) -> dict[str, dict]:
    """Blocks done/total per channel (every level), from the markers alone."""
    out = {}
    for name, cp in plan.channels.items():
        levels = {
            str(lv.level): {
                "done": markers.count_marked(cp.markers_dir, markers.WRITTEN, lv.level, lv.shards),
                "verified": markers.count_marked(cp.markers_dir, markers.VERIFIED, lv.level, lv.shards),
                "total": lv.total_blocks,
            }
            for lv in cp.levels
        }
        out[name] = {
            "done": sum(lv["done"] for lv in levels.values()),
            "total": cp.total_blocks,
            "verified": sum(lv["verified"] for lv in levels.values()),
            "levels": levels,
            "shards": sum(len(lv.shards) for lv in cp.levels),
            "time_points": cp.source.time_points,
            "datatype": cp.datatype,
            "volume": str(plan.store.volume_dir(cp.ref(0)).parent if cp.spec.type == "timeseries"
                          else plan.store.volume_dir(cp.ref(0))),
        }
    return out


def new_folders(plan: Plan) -> list[Path]:
    """The folders on the way to the project's markers that do not exist yet, outermost
    first: what a run that fails early may remove again."""
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
    bookkeeping = {path.name for path in (lock_path(plan), failures_dir(plan), scan_progress_path(plan))}
    try:
        if set(os.listdir(plan.markers_dir)) - bookkeeping:
            return
        for outer, inner in zip(created, created[1:]):
            if os.listdir(outer) != [inner.name]:
                return
    except FileNotFoundError:
        return
    shutil.rmtree(created[0], ignore_errors=True)


def restart_channel(plan: Plan, channel: str) -> None:
    """Forget everything written for `channel`, so the next run writes it from the source."""
    cp = plan.channel(channel)
    markers.drop(cp.markers_dir)
    catalog.delete_channel(catalog.engine_for(plan.store.catalog_path, create=False), plan.spec.project.name, channel)
    for ref in cp.refs:
        (plan.store.volume_dir(ref) / "info").unlink(missing_ok=True)
    stored = markers.read_json(inspect_path(plan))
    if stored and channel in stored:
        del stored[channel]
        markers.write_json(inspect_path(plan), stored)
