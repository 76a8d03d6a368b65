"""The pipeline steps as plain functions (steps.py), on real files: small HDF5 sources in
tmp_path, a real SQLite catalog and real markers, made by the functions themselves."""
from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import spec_text
from ndingest import markers, steps
from ndingest.blocks import Box
from ndingest.errors import CatalogConflict, SourceChanged, SpecError
from ndingest.ingest import write_task
from ndingest.plan import Plan, build_plan
from ndingest.spec import load_spec

DS, PR = "neurostorm_kat11_scale3", "kat11_scale3"
SHAPE = (20, 150, 140)  # z, y, x: 2 x 2 x 2 one-chunk blocks at 128 x 128 x 16
CUT = "block_chunks = [1, 1, 1]\nblocks_per_task = 2"


def voxels(seed: int, dtype=np.uint8, shape=SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 200, shape).astype(dtype)


def write_source(path: Path, data: np.ndarray) -> Path:
    """An uncompressed cutout, written beside `path` and renamed over it (so a source
    object that still has the old file open keeps reading the old file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.new")
    with h5py.File(tmp, "w") as f:
        f.create_dataset("image/CUTOUT", data=data)
    os.replace(tmp, path)
    return path


@pytest.fixture
def data(tmp_path) -> tuple[Path, Path]:
    return (write_source(tmp_path / "data/image.h5", voxels(0)),
            write_source(tmp_path / "data/labels.h5", voxels(1, np.uint32)))


def plan_for(folder: Path, name: str = "spec.toml", *, annotation: Path | None = None, levels: int = 0,
             **kwargs) -> Plan:
    """A fresh plan (never the cached one) of a spec written to `folder`/`name`."""
    spec = folder / name
    text = spec_text(annotation=annotation, ingest=CUT, **kwargs)
    spec.write_text(text.replace("scaling_levels = 0", f"scaling_levels = {levels}"))
    return build_plan(load_spec(spec))


def inspected(plan: Plan) -> dict:
    summaries = steps.inspect_plan(plan, scan=True)
    steps.record_inspection(plan, summaries)
    return summaries


def ingest_first_tasks(plan: Plan) -> None:
    """Inspect, every catalog row, the channels' volumes, and task 0 of each channel written."""
    summaries = inspected(plan)
    steps.add_to_catalog(plan, steps.catalog_entries(plan, summaries).all)
    steps.create_channels(plan)
    for cp in plan.channels.values():
        write_task(plan, cp, cp.tasks[0], commit_seconds=3600.0)


def channel_rows(plan: Plan) -> dict[str, dict]:
    db = sqlite3.connect(plan.store.catalog_path)
    db.row_factory = sqlite3.Row
    return {r["channel_name"]: dict(r) for r in db.execute("select * from channels")}


# --- catalog_entries ----------------------------------------------------------------

def test_catalog_entries_name_the_dataset_the_project_and_its_token(tmp_path, data):
    plan = plan_for(tmp_path, image=data[0], annotation=data[1], levels=1)
    entries = steps.catalog_entries(plan, None)
    ds = entries.dataset.values
    assert (ds["dataset_name"], ds["ximagesize"], ds["yimagesize"], ds["zimagesize"]) == (DS, 140, 150, 20)
    assert (ds["xoffset"], ds["scalinglevels"]) == (1000, 1)
    assert [r.kind for r in entries.project] == ["project", "token"]
    assert [r.label for r in entries.project] == [f"project '{PR}'", f"token '{PR}'"]
    assert entries.all == [entries.dataset, *entries.project, *entries.channels]


def test_catalog_entries_hold_one_row_per_channel_the_first_the_default(tmp_path, data):
    plan = plan_for(tmp_path, image=data[0], annotation=data[1])
    rows = [r.values for r in steps.catalog_entries(plan, None).channels]
    assert [(r["channel_name"], r["default"]) for r in rows] == [("image", 1), ("annotation", 0)]
    assert [(r["channel_type"], r["channel_datatype"]) for r in rows] == [("image", "uint8"), ("annotation", "uint32")]
    assert all((r["project"], r["starttime"], r["endtime"]) == (PR, 0, 0) for r in rows)


def test_catalog_entries_without_summaries_have_windows_0_0(tmp_path, data):
    plan = plan_for(tmp_path, image=data[0], annotation=data[1])
    rows = [r.values for r in steps.catalog_entries(plan, None).channels]
    assert [(r["startwindow"], r["endwindow"]) for r in rows] == [(0.0, 0.0), (0.0, 0.0)]


def test_catalog_entries_take_windows_from_the_summaries(tmp_path, data):
    plan = plan_for(tmp_path, image=data[0], annotation=data[1])
    summaries = steps.inspect_plan(plan, scan=True)
    rows = {r.values["channel_name"]: r.values for r in steps.catalog_entries(plan, summaries).channels}
    image = voxels(0)
    assert (rows["image"]["startwindow"], rows["image"]["endwindow"]) == (float(image.min()), float(image.max()))


# --- in_catalog / add_to_catalog ------------------------------------------------------

def test_in_catalog_is_false_before_a_catalog_exists_and_creates_none(tmp_path, data):
    plan = plan_for(tmp_path, image=data[0])
    assert not steps.in_catalog(plan, steps.catalog_entries(plan, None).all)
    assert not plan.store.catalog_path.exists()


def test_added_rows_are_in_the_catalog_and_adding_again_is_a_no_op(tmp_path, data):
    plan = plan_for(tmp_path, image=data[0], annotation=data[1])
    rows = steps.catalog_entries(plan, None).all
    steps.add_to_catalog(plan, rows[:3])
    assert steps.in_catalog(plan, rows[:3]) and not steps.in_catalog(plan, rows)
    steps.add_to_catalog(plan, rows)
    steps.add_to_catalog(plan, rows)
    assert steps.in_catalog(plan, rows) and sorted(channel_rows(plan)) == ["annotation", "image"]


def test_a_row_stored_with_other_values_is_not_in_the_catalog_and_adding_it_conflicts(tmp_path, data):
    plan = plan_for(tmp_path, image=data[0])
    steps.add_to_catalog(plan, steps.catalog_entries(plan, None).all)
    other = plan_for(tmp_path, "other.toml", image=data[0], project="another_project",
                     resolution=(16.0, 32.0, 40.0))
    rows = steps.catalog_entries(other, None)
    assert not steps.in_catalog(other, [rows.dataset])
    with pytest.raises(CatalogConflict, match="xvoxelres = 32.0; the spec asks for 16.0"):
        steps.add_to_catalog(other, [*rows.project, rows.dataset])
    assert not steps.in_catalog(other, rows.project[:1])  # one transaction: the project was not added either


# --- check_dataset_size ---------------------------------------------------------------

def test_check_dataset_size_without_a_catalog_passes_and_creates_none(tmp_path, data):
    plan = plan_for(tmp_path, image=data[0])
    steps.check_dataset_size(plan)
    assert not plan.store.path.exists()


def test_check_dataset_size_names_both_sizes_when_the_source_grew(tmp_path, data):
    plan = plan_for(tmp_path, image=data[0])
    steps.add_to_catalog(plan, steps.catalog_entries(plan, None).all)
    steps.check_dataset_size(plan)
    write_source(data[0], voxels(0, shape=(20, 150, 141)))
    with pytest.raises(SourceChanged) as info:
        steps.check_dataset_size(plan_for(tmp_path, image=data[0]))
    message = str(info.value)
    assert str(data[0]) in message and "from x140 y150 z20 to x141 y150 z20" in message
    assert info.value.exit_code == 3


# --- preflight ----------------------------------------------------------------------

def test_preflight_on_a_new_store_passes_and_writes_nothing(tmp_path, data):
    plan = plan_for(tmp_path, image=data[0], annotation=data[1])
    steps.preflight(plan)
    assert not plan.store.path.exists()


def test_preflight_raises_catalog_conflict_for_a_changed_dataset_value(tmp_path, data):
    plan = plan_for(tmp_path, image=data[0])
    steps.add_to_catalog(plan, steps.catalog_entries(plan, None).all)
    steps.preflight(plan)
    with pytest.raises(CatalogConflict, match=f"dataset '{DS}' already exists with zvoxelres = 40.0") as info:
        steps.preflight(plan_for(tmp_path, "finer.toml", image=data[0], resolution=(32.0, 32.0, 30.0)))
    assert info.value.exit_code == 4


def test_preflight_raises_source_changed_naming_both_sizes_not_a_conflict(tmp_path, data):
    plan = plan_for(tmp_path, image=data[0])
    steps.add_to_catalog(plan, steps.catalog_entries(plan, None).all)
    write_source(data[0], voxels(0, shape=(21, 150, 140)))
    with pytest.raises(SourceChanged, match="from x140 y150 z20 to x140 y150 z21") as info:
        steps.preflight(plan_for(tmp_path, image=data[0]))
    assert info.value.exit_code == 3


def test_preflight_does_not_exempt_the_restarted_channel_from_the_size_check(tmp_path, data):
    plan = plan_for(tmp_path, image=data[0])
    steps.add_to_catalog(plan, steps.catalog_entries(plan, None).all)
    write_source(data[0], voxels(0, shape=(20, 151, 140)))
    with pytest.raises(SourceChanged, match="size changed from x140 y150 z20 to x140 y151 z20"):
        steps.preflight(plan_for(tmp_path, image=data[0]), skip_channel="image")


def test_preflight_stops_on_a_source_modified_since_its_blocks_were_written(tmp_path, data):
    ingest_first_tasks(plan_for(tmp_path, image=data[0], annotation=data[1]))
    write_source(data[0], voxels(7))
    with pytest.raises(SourceChanged, match=f"{data[0]}: source changed since blocks of channel image"):
        steps.preflight(plan_for(tmp_path, image=data[0], annotation=data[1]))


def test_preflight_exempts_the_restarted_channel_from_the_manifest_check_only(tmp_path, data):
    ingest_first_tasks(plan_for(tmp_path, image=data[0], annotation=data[1]))
    write_source(data[0], voxels(7))
    plan = plan_for(tmp_path, image=data[0], annotation=data[1])
    steps.preflight(plan, skip_channel="image")
    with pytest.raises(SourceChanged, match="channel image"):
        steps.preflight(plan, skip_channel="annotation")


def test_preflight_spot_check_catches_new_content_with_the_same_size_and_mtime(tmp_path, data):
    ingest_first_tasks(plan_for(tmp_path, image=data[0], annotation=data[1]))
    before = data[0].stat()
    write_source(data[0], voxels(7))
    os.utime(data[0], ns=(before.st_atime_ns, before.st_mtime_ns))
    assert data[0].stat().st_size == before.st_size  # the fingerprint cannot tell
    plan = plan_for(tmp_path, image=data[0], annotation=data[1])
    with pytest.raises(SourceChanged, match="content changed since blocks of channel image were written"):
        steps.preflight(plan)
    steps.preflight(plan, skip_channel="image")


def test_preflight_exempts_the_restarted_channel_from_its_catalog_row(tmp_path, data):
    plan = plan_for(tmp_path, image=data[0], annotation=data[1])
    steps.add_to_catalog(plan, steps.catalog_entries(plan, None).all)
    write_source(data[0], voxels(0, np.uint16))  # same size, another datatype, no block written
    plan = plan_for(tmp_path, image=data[0], annotation=data[1])
    with pytest.raises(CatalogConflict, match="channel '.*/image' already exists with channel_datatype = 'uint8'"):
        steps.preflight(plan)
    steps.preflight(plan, skip_channel="image")


def test_preflight_compares_windows_only_once_inspected(tmp_path, data):
    plan = plan_for(tmp_path, image=data[0])
    inspected(plan)  # the image's window is (1, 199)
    steps.add_to_catalog(plan, steps.catalog_entries(plan, None).all)  # stored as (0, 0)
    with pytest.raises(CatalogConflict, match="startwindow = 0.0; the spec asks for 1.0"):
        steps.preflight(plan)
    steps.inspect_path(plan).unlink()
    steps.preflight(plan)  # not inspected: the windows are not known, so not compared


# --- cached_summaries / record_inspection -----------------------------------------------

def test_recorded_summaries_are_read_back_while_the_sources_are_unchanged(tmp_path, data):
    plan = plan_for(tmp_path, image=data[0], annotation=data[1])
    assert steps.cached_summaries(plan) is None
    summaries = inspected(plan)
    assert steps.cached_summaries(plan) == summaries
    assert steps.cached_summaries(plan_for(tmp_path, image=data[0], annotation=data[1])) == summaries


def test_a_rewritten_source_invalidates_the_recorded_summaries(tmp_path, data):
    inspected(plan_for(tmp_path, image=data[0], annotation=data[1]))
    write_source(data[1], voxels(3, np.uint32))
    assert steps.cached_summaries(plan_for(tmp_path, image=data[0], annotation=data[1])) is None


def test_a_window_range_given_since_invalidates_the_recorded_summaries(tmp_path, data):
    inspected(plan_for(tmp_path, image=data[0]))
    plan = plan_for(tmp_path, "window.toml", image=data[0], image_extra="window_range = [0, 100]")
    assert steps.cached_summaries(plan) is None
    assert steps.inspect_plan(plan, scan=True)["image"].window_range == (0, 100)


def test_a_channel_added_since_invalidates_the_recorded_summaries(tmp_path, data):
    inspected(plan_for(tmp_path, image=data[0]))
    assert steps.cached_summaries(plan_for(tmp_path, image=data[0], annotation=data[1])) is None


def test_record_inspection_refuses_a_catalog_conflict_and_records_nothing(tmp_path, data):
    plan = plan_for(tmp_path, image=data[0])
    steps.add_to_catalog(plan, steps.catalog_entries(plan, None).all)
    other = plan_for(tmp_path, "other.toml", image=data[0], offset=(0, 0, 0))
    with pytest.raises(CatalogConflict, match="xoffset = 1000; the spec asks for 0"):
        steps.record_inspection(other, steps.inspect_plan(other, scan=True))
    assert not steps.inspect_path(other).exists()


# --- channels_ready -----------------------------------------------------------------

def test_channels_are_ready_only_once_inspected_in_the_catalog_and_with_info(tmp_path, data):
    plan = plan_for(tmp_path, image=data[0], annotation=data[1])
    assert not steps.channels_ready(plan)
    summaries = inspected(plan)
    entries = steps.catalog_entries(plan, summaries)
    steps.add_to_catalog(plan, [entries.dataset, *entries.project])
    assert not steps.channels_ready(plan)  # no channel rows
    steps.add_to_catalog(plan, entries.channels)
    assert not steps.channels_ready(plan)  # no precomputed info yet
    steps.create_channels(plan)
    assert steps.channels_ready(plan)
    (plan.store.volume_dir(plan.channel("annotation").ref(0)) / "info").unlink()
    assert not steps.channels_ready(plan)


# --- restart_channel ----------------------------------------------------------------

def test_restart_forgets_the_channel_and_leaves_the_other_one(tmp_path, data):
    plan = plan_for(tmp_path, image=data[0], annotation=data[1])
    ingest_first_tasks(plan)
    image, labels = plan.channel("image"), plan.channel("annotation")
    steps.restart_channel(plan, "image")
    assert not image.markers_dir.exists()
    assert markers.count_marked(labels.markers_dir, markers.WRITTEN, 0, labels.tasks) == 2
    assert list(channel_rows(plan)) == ["annotation"]
    assert plan.store.info(image.ref(0)) is None and plan.store.info(labels.ref(0)) is not None
    assert list(markers.read_json(steps.inspect_path(plan))) == ["annotation"]


def test_restarting_an_unknown_channel_is_a_spec_error_naming_the_channels(tmp_path, data):
    plan = plan_for(tmp_path, image=data[0], annotation=data[1])
    with pytest.raises(SpecError, match="no channel 'imgae'; channels: image, annotation"):
        steps.restart_channel(plan, "imgae")


def test_restarting_before_anything_was_written_creates_nothing(tmp_path, data):
    plan = plan_for(tmp_path, image=data[0])
    steps.restart_channel(plan, "image")
    assert not plan.store.path.exists()


# --- channel_status -----------------------------------------------------------------

def test_channel_status_counts_markers_per_level_and_kind(tmp_path, data):
    plan = plan_for(tmp_path, image=data[0], annotation=data[1], levels=1)
    cp = plan.channel("image")
    task = cp.tasks[0]
    for box in task.blocks:
        markers.write_marker(markers.task_dir(cp.markers_dir, markers.WRITTEN, 0, task), box, {})
    markers.write_marker(markers.task_dir(cp.markers_dir, markers.VERIFIED, 0, task), task.blocks[0], {})
    status = steps.channel_status(plan)
    assert {k: status["image"][k] for k in ("done", "verified", "total", "tasks")} == {
        "done": 2, "verified": 1, "total": 10, "tasks": 5}
    assert status["image"]["levels"] == {"0": {"done": 2, "verified": 1, "total": 8},
                                         "1": {"done": 0, "verified": 0, "total": 2}}
    assert (status["annotation"]["done"], status["annotation"]["datatype"]) == (0, "uint32")


def test_channel_status_counts_only_blocks_of_the_current_plan(tmp_path, data):
    plan = plan_for(tmp_path, image=data[0])
    cp = plan.channel("image")
    task0, task1 = cp.tasks[0], cp.tasks[1]
    dir0 = markers.task_dir(cp.markers_dir, markers.WRITTEN, 0, task0)
    markers.write_marker(dir0, task0.blocks[0], {})
    markers.write_marker(dir0, Box.from_key("1000-1256_2000-2256_1000-1064"), {})  # an old plan's block
    dir1 = markers.task_dir(cp.markers_dir, markers.WRITTEN, 0, task1)
    markers.write_json(markers.sealed_path(dir1), {"blocks": 2, "plan": "crc32:00000000"})  # another plan's seal
    assert steps.channel_status(plan)["image"]["done"] == 1


# --- new_folders / forget_failed_start ------------------------------------------------

def test_new_folders_lists_the_missing_chain_outermost_first(tmp_path, data):
    plan = plan_for(tmp_path, image=data[0])
    store = plan.store.path
    assert steps.new_folders(plan) == [store, store / "_markers", store / "_markers" / DS, plan.markers_dir]
    store.mkdir()
    assert steps.new_folders(plan)[0] == store / "_markers"
    plan.markers_dir.mkdir(parents=True)
    assert steps.new_folders(plan) == []


def make_bookkeeping(plan: Plan) -> None:
    plan.markers_dir.mkdir(parents=True)
    (plan.markers_dir / "ingest.lock").write_text("")
    markers.write_json(plan.markers_dir / "_failures" / "Inspect.json", {"exit_code": 3})


def test_forget_failed_start_removes_a_chain_holding_only_bookkeeping(tmp_path, data):
    plan = plan_for(tmp_path, image=data[0])
    created = steps.new_folders(plan)
    make_bookkeeping(plan)
    steps.forget_failed_start(plan, created)
    assert not plan.store.path.exists()
    assert data[0].exists()


def test_forget_failed_start_keeps_a_chain_where_inspect_finished(tmp_path, data):
    plan = plan_for(tmp_path, image=data[0])
    created = steps.new_folders(plan)
    make_bookkeeping(plan)
    markers.write_json(steps.inspect_path(plan), {})
    steps.forget_failed_start(plan, created)
    assert steps.inspect_path(plan).exists()


def test_forget_failed_start_keeps_what_another_run_wrote_in_an_outer_folder(tmp_path, data):
    plan = plan_for(tmp_path, image=data[0])
    created = steps.new_folders(plan)
    make_bookkeeping(plan)
    plan.store.catalog_path.write_text("")
    steps.forget_failed_start(plan, created)
    assert plan.store.catalog_path.exists()


def test_forget_failed_start_leaves_folders_that_existed_before(tmp_path, data):
    plan = plan_for(tmp_path, image=data[0])
    make_bookkeeping(plan)
    steps.forget_failed_start(plan, [])
    assert (plan.markers_dir / "ingest.lock").exists()


def test_forget_failed_start_removes_only_the_new_part_of_the_chain(tmp_path, data):
    plan = plan_for(tmp_path, image=data[0])
    (plan.store.path / "_markers").mkdir(parents=True)
    created = steps.new_folders(plan)
    make_bookkeeping(plan)
    steps.forget_failed_start(plan, created)
    assert (plan.store.path / "_markers").is_dir() and not (plan.store.path / "_markers" / DS).exists()


def test_forget_failed_start_when_the_chain_is_gone_already_is_quiet(tmp_path, data):
    plan = plan_for(tmp_path, image=data[0])
    steps.forget_failed_start(plan, steps.new_folders(plan))
    assert not plan.store.path.exists()


# --- catalog_window -----------------------------------------------------------------

def test_catalog_window_before_ingest_is_a_spec_error(tmp_path, data):
    plan = plan_for(tmp_path, image=data[0])
    with pytest.raises(SpecError, match="channel image is not in the catalog; run ingest first") as info:
        steps.catalog_window(plan, "image")
    assert info.value.exit_code == 2 and not plan.store.catalog_path.exists()


def test_catalog_window_of_a_channel_without_a_row_is_a_spec_error(tmp_path, data):
    plan = plan_for(tmp_path, image=data[0], annotation=data[1])
    entries = steps.catalog_entries(plan, None)
    steps.add_to_catalog(plan, [entries.dataset, *entries.project, entries.channels[0]])
    with pytest.raises(SpecError, match="channel annotation is not in the catalog"):
        steps.catalog_window(plan, "annotation")


def test_catalog_window_is_the_window_the_catalog_holds(tmp_path, data):
    plan = plan_for(tmp_path, image=data[0])
    summaries = steps.inspect_plan(plan, scan=True)
    steps.add_to_catalog(plan, steps.catalog_entries(plan, summaries).all)
    assert steps.catalog_window(plan, "image") == summaries["image"].window_range


def test_catalog_window_on_a_catalog_without_tables_is_a_spec_error(tmp_path, data):
    plan = plan_for(tmp_path, image=data[0])
    plan.store.path.mkdir()
    plan.store.catalog_path.write_bytes(b"")
    with pytest.raises(SpecError):
        steps.catalog_window(plan, "image")
