"""Markers: the pure resume decision, and atomic marker files under tmp_path."""
from __future__ import annotations

import os

import numpy as np
import pytest

from ndingest.blocks import Box, Vec3, plan_tasks
from ndingest.errors import StoreError
from ndingest.markers import (
    VERIFIED, WRITTEN, channel_dir, checksum, count_marked, drop, marked_boxes, pending_blocks,
    read_marker, seal_task, sealed_path, task_complete, task_dir, write_marker,
)

CHUNK = Vec3(128, 128, 16)


def tasks_of(extent: Box, per_task: int = 8):
    return plan_tasks(extent, chunk=CHUNK, block_chunks=Vec3(1, 1, 1), blocks_per_task=per_task)


@pytest.fixture
def task():
    return tasks_of(Box(Vec3(0, 0, 0), Vec3(512, 256, 32)))[0]


# --- pending_blocks (pure) ----------------------------------------------------------

def test_rerun_skips_only_marked_blocks():
    extent = Box(Vec3(0, 0, 0), Vec3(512, 256, 32))
    task = plan_tasks(extent, chunk=Vec3(128, 128, 16), block_chunks=Vec3(1, 1, 1), blocks_per_task=8)[0]
    assert pending_blocks(task, set(task.blocks[:3])) == list(task.blocks[3:])


def test_pending_blocks_keeps_plan_order_with_scattered_markers(task):
    marked = {task.blocks[1], task.blocks[4], task.blocks[6]}
    assert pending_blocks(task, marked) == [b for i, b in enumerate(task.blocks) if i not in (1, 4, 6)]


def test_pending_blocks_ignores_markers_of_other_tasks(task):
    foreign = {Box(Vec3(9000, 0, 0), Vec3(9128, 128, 16))}
    assert pending_blocks(task, foreign) == list(task.blocks)
    assert pending_blocks(task, set(task.blocks) | foreign) == []


# --- marker files -------------------------------------------------------------------

def test_marked_boxes_of_a_missing_folder_is_empty(tmp_path):
    assert marked_boxes(tmp_path / "nothing" / "here") == set()


def test_marked_boxes_lists_written_markers(tmp_path, task):
    for b in task.blocks[:3]:
        write_marker(tmp_path, b, {"checksum": "crc32:00000000"})
    assert marked_boxes(tmp_path) == set(task.blocks[:3])


def test_marked_boxes_ignores_files_that_are_not_markers(tmp_path, task):
    write_marker(tmp_path, task.blocks[0], {})
    (tmp_path / f".{task.blocks[1].to_key()}.json.abc123.tmp").write_text("{")  # a crash's leftover
    assert marked_boxes(tmp_path) == {task.blocks[0]}


def test_task_complete_only_when_every_block_is_marked(tmp_path, task):
    directory = tmp_path / "task"
    assert not task_complete(directory, task)
    for b in task.blocks[:-1]:
        write_marker(directory, b, {})
    assert not task_complete(directory, task)
    write_marker(directory, task.blocks[-1], {})
    assert task_complete(directory, task)


def test_seal_only_once_every_block_is_marked(tmp_path, task):
    directory = task_dir(tmp_path, WRITTEN, 0, task)
    for box in task.blocks[:-1]:
        write_marker(directory, box, {})
    assert not seal_task(directory, task) and not sealed_path(directory).exists()
    write_marker(directory, task.blocks[-1], {})
    assert seal_task(directory, task) and sealed_path(directory).exists()
    assert sealed_path(directory).parent == directory.parent  # beside the task's folder, not in it
    assert marked_boxes(directory) == set(task.blocks)
    before = sealed_path(directory).stat()
    assert seal_task(directory, task)  # sealed already: left as it is
    after = sealed_path(directory).stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_a_sealed_task_is_complete_and_counted_without_listing_its_markers(tmp_path, task):
    directory = task_dir(tmp_path, WRITTEN, 0, task)
    for box in task.blocks:
        write_marker(directory, box, {})
    seal_task(directory, task)
    for marker in directory.iterdir():  # the seal alone answers, as it does for 10^3 tasks
        marker.unlink()
    assert task_complete(directory, task)
    assert count_marked(tmp_path, WRITTEN, 0, [task]) == len(task.blocks)
    drop(tmp_path, WRITTEN)  # --restart forgets the seal with the markers
    assert not task_complete(directory, task) and count_marked(tmp_path, WRITTEN, 0, [task]) == 0


def test_a_seal_counts_only_the_blocks_it_was_written_for(tmp_path):
    """A source that grew (z 20 -> 24) cuts task 0 into other blocks: the old seal is not theirs."""
    task = tasks_of(Box(Vec3(0, 0, 0), Vec3(512, 256, 20)), per_task=100)[0]
    directory = task_dir(tmp_path, WRITTEN, 0, task)
    for box in task.blocks:
        write_marker(directory, box, {})
    seal_task(directory, task)
    grown = tasks_of(Box(Vec3(0, 0, 0), Vec3(512, 256, 24)), per_task=100)[0]
    assert grown.index == task.index and grown.blocks != task.blocks
    same = set(grown.blocks) & set(task.blocks)  # blocks the two plans share stay counted
    assert count_marked(tmp_path, WRITTEN, 0, [grown]) == len(same) < len(grown.blocks)
    assert not task_complete(directory, grown)
    for box in grown.blocks:
        write_marker(directory, box, {})
    assert seal_task(directory, grown) and task_complete(directory, grown)


def test_write_marker_leaves_no_temp_files(tmp_path, task):
    for b in task.blocks:
        write_marker(tmp_path / "m", b, {"checksum": "crc32:12345678"})
    names = sorted(os.listdir(tmp_path / "m"))
    assert names == sorted(f"{b.to_key()}.json" for b in task.blocks)


def test_write_marker_content_round_trips_through_read_marker(tmp_path, task):
    box = task.blocks[2]
    record = {"checksum": "crc32:deadbeef", "written_at": 1700000000.5, "t": 0}
    write_marker(tmp_path, box, record)
    assert read_marker(tmp_path, box) == {"box": box.to_key(), **record}


def test_write_marker_replaces_an_older_marker_atomically(tmp_path, task):
    box = task.blocks[0]
    write_marker(tmp_path, box, {"checksum": "crc32:00000001"})
    write_marker(tmp_path, box, {"checksum": "crc32:00000002"})
    assert read_marker(tmp_path, box)["checksum"] == "crc32:00000002"
    assert os.listdir(tmp_path) == [f"{box.to_key()}.json"]


def test_failed_marker_write_raises_store_error_and_leaves_no_temp_file(tmp_path, task):
    box = task.blocks[0]
    (tmp_path / f"{box.to_key()}.json").mkdir()  # the rename target cannot be replaced
    with pytest.raises(StoreError) as info:
        write_marker(tmp_path, box, {"checksum": "crc32:00000000"})
    assert info.value.exit_code == 7
    assert box.to_key() in str(info.value)
    assert os.listdir(tmp_path) == [f"{box.to_key()}.json"]


def test_read_marker_of_an_unmarked_block_is_none(tmp_path, task):
    assert read_marker(tmp_path, task.blocks[0]) is None


def test_channel_and_task_dirs_live_under_the_store(tmp_path, task):
    ch = channel_dir(tmp_path, "ds", "pr", "image")
    assert ch == tmp_path / "_markers" / "ds" / "pr" / "image"
    d = task_dir(ch, WRITTEN, 2, task)
    assert d.is_relative_to(ch) and "level2" in d.parts


def test_task_dirs_differ_by_kind_level_and_task(tmp_path):
    a, b = tasks_of(Box(Vec3(0, 0, 0), Vec3(512, 256, 32)), per_task=4)[:2]
    dirs = {task_dir(tmp_path, k, lvl, s) for k in (WRITTEN, VERIFIED) for lvl in (0, 1) for s in (a, b)}
    assert len(dirs) == 8


# --- count_marked / drop ------------------------------------------------------------

def test_count_marked_counts_marked_blocks_of_the_given_tasks(tmp_path):
    tasks = tasks_of(Box(Vec3(0, 0, 0), Vec3(512, 512, 32)), per_task=8)  # 4 tasks of 8
    ch = channel_dir(tmp_path, "ds", "pr", "image")
    for s, n in zip(tasks, (8, 3, 0, 1)):
        for b in s.blocks[:n]:
            write_marker(task_dir(ch, WRITTEN, 0, s), b, {})
    assert count_marked(ch, WRITTEN, 0, tasks) == 12
    assert count_marked(ch, WRITTEN, 0, tasks[1:2]) == 3
    assert count_marked(ch, VERIFIED, 0, tasks) == 0
    assert count_marked(ch, WRITTEN, 1, tasks) == 0


def test_count_marked_ignores_stray_markers_not_in_the_task(tmp_path):
    s = tasks_of(Box(Vec3(0, 0, 0), Vec3(256, 256, 16)))[0]
    ch = tmp_path / "ch"
    directory = task_dir(ch, WRITTEN, 0, s)
    write_marker(directory, s.blocks[0], {})
    write_marker(directory, Box(Vec3(5000, 0, 0), Vec3(5128, 128, 16)), {})
    assert count_marked(ch, WRITTEN, 0, [s]) == 1


def test_drop_one_kind_keeps_the_other(tmp_path, task):
    ch = channel_dir(tmp_path, "ds", "pr", "image")
    for kind in (WRITTEN, VERIFIED):
        write_marker(task_dir(ch, kind, 0, task), task.blocks[0], {})
    drop(ch, VERIFIED)
    assert count_marked(ch, VERIFIED, 0, [task]) == 0
    assert count_marked(ch, WRITTEN, 0, [task]) == 1


def test_drop_everything_forgets_the_channel(tmp_path, task):
    ch = channel_dir(tmp_path, "ds", "pr", "image")
    other = channel_dir(tmp_path, "ds", "pr", "annotation")
    for c in (ch, other):
        write_marker(task_dir(c, WRITTEN, 0, task), task.blocks[0], {})
    drop(ch)
    assert not ch.exists()
    assert count_marked(other, WRITTEN, 0, [task]) == 1


def test_drop_of_missing_markers_is_a_no_op(tmp_path):
    drop(tmp_path / "never" / "written")
    drop(tmp_path / "never", WRITTEN)


# --- checksum -----------------------------------------------------------------------

def volume(seed: int = 0, dtype=np.uint16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 1000, size=(6, 7, 8)).astype(dtype)


def test_checksum_equal_for_equal_arrays():
    assert checksum(volume()) == checksum(volume().copy())


def test_checksum_has_a_crc32_prefix_and_eight_hex_digits():
    c = checksum(volume())
    assert c.startswith("crc32:") and len(c) == len("crc32:") + 8
    int(c[len("crc32:"):], 16)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.uint64, np.float32])
def test_checksum_differs_for_a_one_voxel_change(dtype):
    a = volume(dtype=dtype)
    b = a.copy()
    b[3, 4, 5] += 1
    assert checksum(a) != checksum(b)


def test_checksum_is_independent_of_memory_layout():
    zyx = volume(seed=3)
    fortran = np.asfortranarray(zyx)
    assert not fortran.flags.c_contiguous
    assert checksum(fortran) == checksum(zyx)


def test_checksum_of_a_transposed_view_equals_that_of_the_same_zyx_data():
    zyx = volume(seed=4)
    xyz = np.ascontiguousarray(zyx.transpose(2, 1, 0))  # as a precomputed chunk lies on disk
    view = xyz.transpose(2, 1, 0)                        # (z, y, x), F-ordered, no copy
    assert np.shares_memory(view, xyz) and view.flags.f_contiguous
    assert checksum(view) == checksum(zyx)


def test_checksum_of_a_strided_sub_view_equals_that_of_its_copy():
    big = volume(seed=5)
    view = big[1:5, ::2, 3:]
    assert checksum(view) == checksum(view.copy())
