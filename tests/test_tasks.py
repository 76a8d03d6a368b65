"""Each Luigi task on its own, built by a real local scheduler: what it writes, and that
`complete()` answers from the catalog and markers."""
from __future__ import annotations

import json
import sqlite3

import h5py
import luigi
import luigi.configuration
import numpy as np
import pytest

from conftest import write_spec
from ndingest import tasks
from ndingest.plan import load_plan
from ndingest.sample import ANNOTATION_FILE, IMAGE_FILE

DS, PR = "neurostorm_kat11_scale3", "kat11_scale3"


def build(task: luigi.Task) -> str:
    config = luigi.configuration.get_config()
    if not config.has_section("core"):
        config.add_section("core")
    config.set("core", "no_configure_logging", "true")
    return luigi.build([task], local_scheduler=True, detailed_summary=True).status.name


@pytest.fixture
def spec(tmp_path, tutorial_data):
    return str(write_spec(tmp_path, image=tutorial_data / IMAGE_FILE, annotation=tutorial_data / ANNOTATION_FILE,
                          ingest="block_chunks = [2, 2, 4]\nblocks_per_task = 3"))


def table(store, name: str) -> list[dict]:
    db = sqlite3.connect(store / "catalog.sqlite")
    db.row_factory = sqlite3.Row
    return [dict(r) for r in db.execute(f"select * from {name}")]


def test_inspect_records_the_sources_from_their_headers_and_writes_no_catalog(spec, tmp_path):
    """Issue 16: Inspect reads no voxel, so the window range is not known yet."""
    assert not tasks.Inspect(spec=spec).complete()
    assert build(tasks.Inspect(spec=spec)) == "SUCCESS"
    assert tasks.Inspect(spec=spec).complete()
    recorded = json.loads((tmp_path / f"store/_markers/{DS}/{PR}/inspect.json").read_text())
    assert recorded["image"]["summary"]["window_range"] is None
    assert recorded["image"]["summary"]["x_size"] == 300
    assert recorded["annotation"]["summary"]["datatype"] == "uint32"
    assert not (tmp_path / "store/catalog.sqlite").exists()


def test_inspect_reads_no_voxel(tmp_path):
    """A source whose headers are whole but whose one chunk is garbage passes Inspect: only
    reading voxels would tell, and the write (then verify) are the only passes that do."""
    path = tmp_path / "corrupt.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("image/CUTOUT", data=np.arange(16 * 16 * 16, dtype=np.uint16).reshape(16, 16, 16),
                         chunks=(16, 16, 16), compression="gzip")
    with h5py.File(path, "r") as f:
        info = f["image/CUTOUT"].id.get_chunk_info(0)
    with open(path, "r+b") as f:
        f.seek(info.byte_offset)
        f.write(b"\xff" * info.size)
    spec = str(write_spec(tmp_path, image=path))
    assert build(tasks.Inspect(spec=spec)) == "SUCCESS"
    assert build(tasks.IngestBlock(spec=spec, channel="image", index=0)) == "FAILED"


def test_verify_records_the_window_range_reduced_from_the_blocks(spec, tmp_path, tutorial_data):
    """Each level-0 marker holds its block's range; Verify reduces them into the catalog and
    inspect.json, equal to the source's min and max as h5py reads them."""
    assert build(tasks.Verify(spec=spec)) == "SUCCESS"
    for name, file in (("image", IMAGE_FILE), ("annotation", ANNOTATION_FILE)):
        with h5py.File(tutorial_data / file, "r") as f:
            source = f[f"{name}/CUTOUT"][...]
        row = next(c for c in table(tmp_path / "store", "channels") if c["channel_name"] == name)
        assert (row["startwindow"], row["endwindow"]) == (float(source.min()), float(source.max()))
        recorded = json.loads((tmp_path / f"store/_markers/{DS}/{PR}/inspect.json").read_text())
        assert recorded[name]["summary"]["window_range"] == [source.min(), source.max()]
    marker = next((tmp_path / f"store/_markers/{DS}/{PR}/image").rglob("written/level0/*/*.json"))
    assert len(json.loads(marker.read_text())["range"]) == 2


def test_create_dataset_then_project_add_exactly_their_rows(spec, tmp_path):
    assert build(tasks.CreateDataset(spec=spec)) == "SUCCESS"
    assert [d["dataset_name"] for d in table(tmp_path / "store", "datasets")] == [DS]
    assert table(tmp_path / "store", "projects") == []
    assert tasks.CreateDataset(spec=spec).complete() and not tasks.CreateProject(spec=spec).complete()
    assert build(tasks.CreateProject(spec=spec)) == "SUCCESS"
    assert [p["project_name"] for p in table(tmp_path / "store", "projects")] == [PR]
    assert [t["token_name"] for t in table(tmp_path / "store", "tokens")] == [PR]
    assert table(tmp_path / "store", "channels") == []


def test_create_channels_adds_rows_and_precomputed_info(spec, tmp_path):
    assert build(tasks.CreateChannels(spec=spec)) == "SUCCESS"
    assert sorted(c["channel_name"] for c in table(tmp_path / "store", "channels")) == ["annotation", "image"]
    info = json.loads((tmp_path / f"store/{DS}/{PR}/annotation/info").read_text())
    assert info["type"] == "segmentation" and info["scales"][0]["voxel_offset"] == [1000, 2000, 1000]
    assert tasks.CreateChannels(spec=spec).complete()
    assert not list((tmp_path / f"store/{DS}/{PR}/image").glob("32_32_40/*")), "no voxels yet"


def test_one_ingest_task_writes_only_its_blocks(spec, tmp_path):
    plan = load_plan(spec)
    planned = plan.channel("image").tasks
    assert len(planned) == 3  # 8 blocks, 3 per task
    assert build(tasks.IngestBlock(spec=spec, channel="image", index=1)) == "SUCCESS"
    assert tasks.IngestBlock(spec=spec, channel="image", index=1).complete()
    assert not tasks.IngestBlock(spec=spec, channel="image", index=0).complete()
    marked = sorted(p.stem for p in (tmp_path / f"store/_markers/{DS}/{PR}/image").rglob("written/level0/*/*.json"))
    assert marked == sorted(b.to_key() for b in planned[1].blocks)


def test_verify_needs_every_task_and_writes_the_report(spec, tmp_path):
    assert not tasks.Verify(spec=spec).complete()
    assert build(tasks.Verify(spec=spec)) == "SUCCESS"
    assert tasks.Verify(spec=spec).complete()
    report = (tmp_path / f"store/_reports/{DS}/{PR}/verify.csv").read_text().splitlines()
    assert len(report) == 1 + 16
    assert len(list((tmp_path / f"store/_markers/{DS}/{PR}").rglob("verified/level0/*/*.json"))) == 16


def test_a_failing_task_records_its_error_for_the_cli(spec, tmp_path, tutorial_data):
    assert build(tasks.CreateProject(spec=spec)) == "SUCCESS"
    other = write_spec(tmp_path, "moved.toml", image=tutorial_data / IMAGE_FILE, dataset="another_dataset")
    assert build(tasks.CreateProject(spec=str(other))) == "FAILED"
    failures = tasks.recorded_failures(load_plan(other), since=0)
    assert failures and failures[0]["exit_code"] == 4 and "kat11_scale3" in failures[0]["message"]


# --- the write loop's commits: markers follow flushed data, in batches ----------------

def _markers_seen_during(spec, commit_seconds: float) -> tuple[list[int], int]:
    """Marker counts in the task folder as each block of task 0 finishes, and at the end."""
    from ndingest import markers
    from ndingest.ingest import write_task

    assert build(tasks.CreateChannels(spec=spec)) == "SUCCESS"
    plan = load_plan(spec)
    cp = plan.channel("image")
    task = cp.tasks[0]
    directory = markers.task_dir(cp.markers_dir, markers.WRITTEN, 0, task)
    seen = []
    write_task(plan, cp, task, commit_seconds=commit_seconds,
                progress=lambda done, total: seen.append(len(markers.marked_boxes(directory))))
    assert markers.sealed_path(directory).exists()
    return seen, len(markers.marked_boxes(directory))


def test_each_block_is_marked_right_after_its_commit(spec):
    seen, final = _markers_seen_during(spec, commit_seconds=0.0)
    assert seen == [1, 2, 3] and final == 3


def test_a_batch_is_marked_only_once_it_is_committed(spec):
    seen, final = _markers_seen_during(spec, commit_seconds=3600.0)
    assert seen == [0, 0, 0] and final == 3  # nothing marked before the flush at the end


def test_spot_check_picks_the_first_and_last_marked_blocks_then_random_ones(spec):
    import random

    from ndingest.ingest import spot_check_blocks, spot_check_source, write_task

    assert build(tasks.CreateChannels(spec=spec)) == "SUCCESS"
    plan = load_plan(spec)
    cp = plan.channel("image")
    assert spot_check_blocks(cp, random.Random(0)) == []  # nothing marked yet: nothing to read
    first, last = cp.tasks[0], cp.tasks[-1]
    assert first != last
    write_task(plan, cp, first)
    picked = spot_check_blocks(cp, random.Random(0))
    assert picked[0] == (first, first.blocks[0])  # the last task has no marker yet
    assert all(task == first and box in first.blocks for task, box in picked)
    write_task(plan, cp, last)
    picked = spot_check_blocks(cp, random.Random(0))
    assert picked[:2] == [(first, first.blocks[0]), (last, last.blocks[-1])]
    draws = {tuple(spot_check_blocks(cp, random.Random(seed))[2:]) for seed in range(20)}
    assert len(draws) > 1  # the third pick varies from run to run
    assert spot_check_source(plan, cp, random.Random(0)) == len(picked)  # unchanged source: all match


def test_tasks_are_known_by_the_specs_content_and_store_never_by_its_path(tmp_path):
    from conftest import spec_text

    from ndingest.tasks import IngestBlock, Verify

    def at(folder: str, store: str, **kwargs) -> str:
        (tmp_path / folder).mkdir(exist_ok=True)
        path = tmp_path / folder / "spec.toml"
        path.write_text(spec_text(image=tmp_path / "img.h5", store=store, **kwargs))
        return str(path)

    shared = str(tmp_path / "store")
    one, other = at("host1", shared), at("host2", shared)
    assert Verify(spec=one).task_id == Verify(spec=other).task_id
    assert IngestBlock(spec=one, channel="image", index=3).task_id == \
        IngestBlock(spec=other, channel="image", index=3).task_id
    assert str(tmp_path) not in Verify(spec=one).task_id
    assert Verify(spec=at("apart", "store")).task_id != Verify(spec=one).task_id  # its own store, beside it
    assert Verify(spec=at("changed", shared, resolution=(8.0, 8.0, 40.0))).task_id != Verify(spec=one).task_id
