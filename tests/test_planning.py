"""`ndingest plan`'s counting, estimate and report (planning.py): pure counts on tiny
grids, and one real plan of a small HDF5 file in tmp_path that must leave nothing behind."""
from __future__ import annotations


import numpy as np
import pytest

from conftest import spec_text, write_h5, write_spec
from ndingest.blocks import Box, Vec3, plan_tasks
from ndingest.plan import LevelPlan, load_plan
from ndingest.planning import (
    MARKER_BYTES, SHARDING_ADVISED_BYTES, ChannelCount, LevelCount, PlanReport, Sample, channel_seconds,
    count_level, estimate, human_bytes, left_bytes, nearest_existing, needed_bytes, plan_report, recommendations,
    report_lines, sample_blocks, sample_box, timed_write,
)

CHUNK = Vec3(128, 128, 16)
TUTORIAL = Box.from_shape(Vec3(1000, 2000, 1000), Vec3(300, 200, 200))  # edge-clipped in x, y and z


def level(extent: Box = TUTORIAL, *, block_chunks=Vec3(2, 2, 4), blocks_per_task=3, time_points=1) -> LevelPlan:
    tasks = plan_tasks(extent, CHUNK, block_chunks=block_chunks, blocks_per_task=blocks_per_task,
                       time_points=time_points)
    return LevelPlan(0, extent, CHUNK, tasks, block_chunks)


def test_files_are_the_chunk_grid_of_an_edge_clipped_level():
    count = count_level(level(), itemsize=1, time_points=1, sharded=False)
    assert count.files == 3 * 2 * 13  # ceil(300/128) x ceil(200/128) x ceil(200/16), clipped chunks included
    assert count.blocks == 2 * 1 * 4  # blocks of 256x256x64
    assert count.tasks == 3  # 8 blocks, 3 per task
    assert count.bytes == 300 * 200 * 200


def test_time_points_multiply_files_blocks_and_bytes():
    count = count_level(level(time_points=2), itemsize=4, time_points=2, sharded=False)
    assert (count.files, count.blocks, count.tasks, count.bytes) == (2 * 78, 16, 6, 2 * 4 * 300 * 200 * 200)


def test_sharded_files_are_one_per_block():
    count = count_level(level(block_chunks=Vec3(4, 4, 4)), itemsize=1, time_points=1, sharded=True)
    assert count.files == count.blocks == 1 * 1 * 4


def test_markers_are_two_per_block_and_two_seals_per_task():
    count = count_level(level(), itemsize=1, time_points=1, sharded=False)
    assert count.markers == 2 * 8 + 2 * 3
    server_built = count_level(level(), itemsize=1, time_points=1, sharded=False, written_markers=False)
    assert server_built.markers == 8 + 3  # a server's levels: verified markers and seals only


def test_needed_bytes_are_voxels_plus_markers():
    lv = count_level(level(), itemsize=2, time_points=1, sharded=False)
    channels = [ChannelCount("a", "uint16", 1, [lv]), ChannelCount("b", "uint16", 1, [lv])]
    assert needed_bytes(channels) == 2 * (2 * 300 * 200 * 200 + 22 * MARKER_BYTES)
    assert left_bytes(channels) == needed_bytes(channels)  # nothing marked yet


def test_left_bytes_count_only_unwritten_blocks():
    lv = LevelCount(0, blocks=4, tasks=1, bytes=4000, files=4, markers=10, written=3, verified=1)
    assert left_bytes([ChannelCount("a", "uint8", 1, [lv])]) == 1000 + round(10 * MARKER_BYTES * (0.25 + 0.75) / 2)


def test_level_json_has_exactly_the_issue_keys_and_done_once_marked():
    fresh = count_level(level(), itemsize=1, time_points=1, sharded=False)
    assert set(fresh.to_json()) == {"level", "blocks", "tasks", "bytes", "files", "markers"}
    half = LevelCount(0, 8, 3, 1, 78, 22, written=4, verified=2)
    assert half.to_json()["done"] == 4 and half.to_json()["verified"] == 2


def test_estimate_prices_left_blocks_at_each_sample_and_reports_median_min_max():
    lv = LevelCount(0, blocks=2, tasks=1, bytes=1000, files=2, markers=6)
    ch = ChannelCount("a", "uint8", 1, [lv])
    samples = [Sample(100, read_seconds=r, write_seconds=0.2, readback_seconds=0.1) for r in (0.1, 0.5, 0.3)]
    est = estimate([ch], {"a": samples}, store_timed=True)
    # level 0: write = bytes x (read + write), verify = bytes x (read + read back), per byte
    expected = sorted(1000 * ((r + 0.2) + (r + 0.1)) / 100 for r in (0.1, 0.5, 0.3))
    assert (est.min, est.median, est.max) == pytest.approx(expected)
    done = LevelCount(0, blocks=2, tasks=1, bytes=1000, files=2, markers=6, written=2, verified=1)
    assert channel_seconds(ChannelCount("a", "uint8", 1, [done]), samples[0]) == pytest.approx(
        0.5 * 1000 * (0.1 + 0.1) / 100)  # only the verify of the unverified half is left


def test_upper_levels_read_the_level_below_from_the_store():
    ch = ChannelCount("a", "uint8", 1, [LevelCount(0, 4, 1, 400, 4, 10), LevelCount(1, 1, 1, 100, 1, 4)])
    s = Sample(100, read_seconds=1.0, write_seconds=2.0, readback_seconds=3.0)
    level0 = 400 * (1 + 2) / 100 + 400 * (1 + 3) / 100
    level1 = (400 * 3 + 100 * 2) / 100 + (400 * 3 + 100 * 3) / 100
    assert channel_seconds(ch, s) == pytest.approx(level0 + level1)


def test_unmeasured_store_io_is_priced_as_the_source_read():
    assert Sample(10, read_seconds=1.0).rates() == (0.1, 0.1, 0.1)


def test_nothing_left_is_a_zero_estimate():
    assert estimate([], {}, store_timed=True).to_json() == {"median": 0.0, "min": 0.0, "max": 0.0}


def test_sharding_recommended_past_100_gib_only_where_it_can_be_set():
    big = SHARDING_ADVISED_BYTES + 1
    assert "sharding = true" in recommendations(needed=big, sharded=False, can_shard=True)[0]
    assert recommendations(needed=SHARDING_ADVISED_BYTES, sharded=False, can_shard=True) == []
    assert recommendations(needed=big, sharded=True, can_shard=True) == []
    assert recommendations(needed=big, sharded=False, can_shard=False) == []  # a server: no sharding there


def test_samples_are_first_middle_and_last_block_without_repeats():
    tasks = level(blocks_per_task=3).tasks  # 8 blocks in tasks of 3, 3, 2
    picks = [box for _, box in sample_blocks(tasks)]
    assert picks == [tasks[0].blocks[0], tasks[1].blocks[1], tasks[-1].blocks[-1]]
    one = plan_tasks(Box.from_shape(Vec3(0, 0, 0), Vec3(10, 10, 10)), CHUNK, block_chunks=Vec3(1, 1, 1),
                     blocks_per_task=64)
    assert len(sample_blocks(one)) == 1


def test_a_huge_block_is_sampled_by_a_bounded_corner():
    block = Box.from_shape(Vec3(0, 0, 0), Vec3(2048, 2048, 256))
    part = sample_box(block, itemsize=8, max_bytes=2**20)
    assert part.begin == block.begin and part.shape.volume * 8 <= 2**20 and block.contains(part)
    small = Box.from_shape(Vec3(5, 5, 5), Vec3(20, 20, 20))
    assert sample_box(small, itemsize=1) == small


def test_nearest_existing_walks_up_to_a_folder_that_exists(tmp_path):
    assert nearest_existing(tmp_path / "a" / "b" / "store") == tmp_path
    assert nearest_existing(tmp_path) == tmp_path


def test_timed_write_removes_its_file(tmp_path):
    write, back = timed_write(tmp_path, np.ones((4, 5, 6), dtype=np.uint16))
    assert write >= 0 and back >= 0 and list(tmp_path.iterdir()) == []


def test_human_bytes():
    assert (human_bytes(512), human_bytes(3 * 2**20), human_bytes(1.5 * 2**30)) == ("512 B", "3.0 MiB", "1.5 GiB")


def test_plan_report_counts_a_real_spec_and_leaves_nothing_behind(tmp_path):
    source = write_h5(tmp_path / "data" / "image.h5", np.arange(70 * 60 * 20, dtype=np.uint16).reshape(20, 60, 70))
    spec = write_spec(tmp_path, image=source, store="deep/store")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    report = plan_report(load_plan(spec))
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # no store folder, no scratch folder left
    (image,) = report.channels
    assert [lv.to_json() for lv in image.levels] == [
        {"level": 0, "blocks": 1, "tasks": 1, "bytes": 70 * 60 * 20 * 2, "files": 2, "markers": 4}]
    assert report.needed_bytes == 70 * 60 * 20 * 2 + 4 * MARKER_BYTES
    assert report.free_bytes is not None and report.free_where == str(tmp_path) and report.fits
    assert report.estimate.samples == 1 and report.estimate.store_timed
    assert set(report.to_json()) >= {"channels", "free_bytes", "needed_bytes", "estimate_seconds"}
    assert any(line.startswith("free space: ") for line in report_lines(report))


def test_sharded_spec_counts_shard_files(tmp_path):
    source = write_h5(tmp_path / "image.h5", np.zeros((40, 300, 600), dtype=np.uint8))
    (tmp_path / "spec.toml").write_text(spec_text(image=source).replace('path = "store"',
                                                                         'path = "store"\nsharding = true'))
    plan = load_plan(tmp_path / "spec.toml")
    report = plan_report(plan, timing=False)
    (lv,) = report.channels[0].levels
    assert lv.files == lv.blocks == plan.channels["image"].levels[0].total_blocks
    assert "shard files" in "\n".join(report_lines(report))


def test_a_folder_that_cannot_be_written_does_not_fit(tmp_path, monkeypatch):
    source = write_h5(tmp_path / "image.h5", np.zeros((16, 64, 64), dtype=np.uint8))
    spec = write_spec(tmp_path, image=source)

    def refuse(**kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("ndingest.planning.tempfile.mkdtemp", refuse)
    report = plan_report(load_plan(spec))
    assert not report.fits and "cannot write" in report.unwritable
    assert not report.estimate.store_timed and report.estimate.samples == 1


def test_report_json_is_what_the_issue_names():
    lv = LevelCount(0, 1, 1, 10, 1, 4)
    report = PlanReport(store="s", store_exists=False, sharded=False,
                        channels=[ChannelCount("image", "uint8", 1, [lv])], free_bytes=None, free_where=None, needed_bytes=810, left_bytes=810,
                        estimate=estimate([], {}, store_timed=False))
    out = report.to_json()
    assert out["free_bytes"] is None and report.fits  # a bucket or a server: unknown, never a warning
    assert list(out["channels"]["image"]) == ["levels"]
    assert set(out["estimate_seconds"]) == {"median", "min", "max"}
    assert any(line.startswith("free space: unknown") for line in report_lines(report))


def test_a_server_store_has_unknown_free_space_and_only_verified_markers_above_level_0(tmp_path):
    source = write_h5(tmp_path / "image.h5", np.zeros((32, 300, 300), dtype=np.uint8))
    text = spec_text(image=source).replace('path = "store"', 'url = "http://127.0.0.1:9/nd"')  # nothing listens
    (tmp_path / "spec.toml").write_text(text.replace("scaling_levels = 0", "scaling_levels = 1"))
    report = plan_report(load_plan(tmp_path / "spec.toml"))
    assert report.free_bytes is None and report.fits and not report.recommendations
    level0, level1 = report.channels[0].levels
    assert level0.markers == 2 * (level0.blocks + level0.tasks) and level1.markers == level1.blocks + level1.tasks
    assert not report.estimate.store_timed and "store I/O not timed" in report.notes[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.h5", "spec.toml"]  # no .ndingest/ either
