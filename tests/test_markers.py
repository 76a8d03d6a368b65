"""Markers: the pure resume decision, and atomic marker files under tmp_path."""
from __future__ import annotations

import os

import numpy as np
import pytest

from ndingest.blocks import Box, Vec3, plan_shards
from ndingest.errors import StoreError
from ndingest.markers import (
    VERIFIED, WRITTEN, channel_dir, checksum, count_marked, drop, marked_boxes, pending_blocks,
    read_marker, seal_shard, sealed_path, shard_complete, shard_dir, write_marker,
)

CHUNK = Vec3(128, 128, 16)


def shards_of(extent: Box, per_shard: int = 8):
    return plan_shards(extent, chunk=CHUNK, block_chunks=Vec3(1, 1, 1), blocks_per_shard=per_shard)


@pytest.fixture
def shard():
    return shards_of(Box(Vec3(0, 0, 0), Vec3(512, 256, 32)))[0]


# --- pending_blocks (pure) ----------------------------------------------------------

def test_rerun_skips_only_marked_blocks():
    extent = Box(Vec3(0, 0, 0), Vec3(512, 256, 32))
    shard = plan_shards(extent, chunk=Vec3(128, 128, 16), block_chunks=Vec3(1, 1, 1), blocks_per_shard=8)[0]
    assert pending_blocks(shard, set(shard.blocks[:3])) == list(shard.blocks[3:])


def test_pending_blocks_keeps_plan_order_with_scattered_markers(shard):
    marked = {shard.blocks[1], shard.blocks[4], shard.blocks[6]}
    assert pending_blocks(shard, marked) == [b for i, b in enumerate(shard.blocks) if i not in (1, 4, 6)]


def test_pending_blocks_ignores_markers_of_other_shards(shard):
    foreign = {Box(Vec3(9000, 0, 0), Vec3(9128, 128, 16))}
    assert pending_blocks(shard, foreign) == list(shard.blocks)
    assert pending_blocks(shard, set(shard.blocks) | foreign) == []


# --- marker files -------------------------------------------------------------------

def test_marked_boxes_of_a_missing_folder_is_empty(tmp_path):
    assert marked_boxes(tmp_path / "nothing" / "here") == set()


def test_marked_boxes_lists_written_markers(tmp_path, shard):
    for b in shard.blocks[:3]:
        write_marker(tmp_path, b, {"checksum": "crc32:00000000"})
    assert marked_boxes(tmp_path) == set(shard.blocks[:3])


def test_marked_boxes_ignores_files_that_are_not_markers(tmp_path, shard):
    write_marker(tmp_path, shard.blocks[0], {})
    (tmp_path / f".{shard.blocks[1].to_key()}.json.abc123.tmp").write_text("{")  # a crash's leftover
    assert marked_boxes(tmp_path) == {shard.blocks[0]}


def test_shard_complete_only_when_every_block_is_marked(tmp_path, shard):
    directory = tmp_path / "shard"
    assert not shard_complete(directory, shard)
    for b in shard.blocks[:-1]:
        write_marker(directory, b, {})
    assert not shard_complete(directory, shard)
    write_marker(directory, shard.blocks[-1], {})
    assert shard_complete(directory, shard)


def test_seal_only_once_every_block_is_marked(tmp_path, shard):
    directory = shard_dir(tmp_path, WRITTEN, 0, shard)
    for box in shard.blocks[:-1]:
        write_marker(directory, box, {})
    assert not seal_shard(directory, shard) and not sealed_path(directory).exists()
    write_marker(directory, shard.blocks[-1], {})
    assert seal_shard(directory, shard) and sealed_path(directory).exists()
    assert sealed_path(directory).parent == directory.parent  # beside the shard's folder, not in it
    assert marked_boxes(directory) == set(shard.blocks)
    before = sealed_path(directory).stat()
    assert seal_shard(directory, shard)  # sealed already: left as it is
    after = sealed_path(directory).stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_a_sealed_shard_is_complete_and_counted_without_listing_its_markers(tmp_path, shard):
    directory = shard_dir(tmp_path, WRITTEN, 0, shard)
    for box in shard.blocks:
        write_marker(directory, box, {})
    seal_shard(directory, shard)
    for marker in directory.iterdir():  # the seal alone answers, as it does for 10^3 shards
        marker.unlink()
    assert shard_complete(directory, shard)
    assert count_marked(tmp_path, WRITTEN, 0, [shard]) == len(shard.blocks)
    drop(tmp_path, WRITTEN)  # --restart forgets the seal with the markers
    assert not shard_complete(directory, shard) and count_marked(tmp_path, WRITTEN, 0, [shard]) == 0


def test_a_seal_counts_only_the_blocks_it_was_written_for(tmp_path):
    """A source that grew (z 20 -> 24) cuts shard 0 into other blocks: the old seal is not theirs."""
    shard = shards_of(Box(Vec3(0, 0, 0), Vec3(512, 256, 20)), per_shard=100)[0]
    directory = shard_dir(tmp_path, WRITTEN, 0, shard)
    for box in shard.blocks:
        write_marker(directory, box, {})
    seal_shard(directory, shard)
    grown = shards_of(Box(Vec3(0, 0, 0), Vec3(512, 256, 24)), per_shard=100)[0]
    assert grown.index == shard.index and grown.blocks != shard.blocks
    same = set(grown.blocks) & set(shard.blocks)  # blocks the two plans share stay counted
    assert count_marked(tmp_path, WRITTEN, 0, [grown]) == len(same) < len(grown.blocks)
    assert not shard_complete(directory, grown)
    for box in grown.blocks:
        write_marker(directory, box, {})
    assert seal_shard(directory, grown) and shard_complete(directory, grown)


def test_write_marker_leaves_no_temp_files(tmp_path, shard):
    for b in shard.blocks:
        write_marker(tmp_path / "m", b, {"checksum": "crc32:12345678"})
    names = sorted(os.listdir(tmp_path / "m"))
    assert names == sorted(f"{b.to_key()}.json" for b in shard.blocks)


def test_write_marker_content_round_trips_through_read_marker(tmp_path, shard):
    box = shard.blocks[2]
    record = {"checksum": "crc32:deadbeef", "written_at": 1700000000.5, "t": 0}
    write_marker(tmp_path, box, record)
    assert read_marker(tmp_path, box) == {"box": box.to_key(), **record}


def test_write_marker_replaces_an_older_marker_atomically(tmp_path, shard):
    box = shard.blocks[0]
    write_marker(tmp_path, box, {"checksum": "crc32:00000001"})
    write_marker(tmp_path, box, {"checksum": "crc32:00000002"})
    assert read_marker(tmp_path, box)["checksum"] == "crc32:00000002"
    assert os.listdir(tmp_path) == [f"{box.to_key()}.json"]


def test_failed_marker_write_raises_store_error_and_leaves_no_temp_file(tmp_path, shard):
    box = shard.blocks[0]
    (tmp_path / f"{box.to_key()}.json").mkdir()  # the rename target cannot be replaced
    with pytest.raises(StoreError) as info:
        write_marker(tmp_path, box, {"checksum": "crc32:00000000"})
    assert info.value.exit_code == 7
    assert box.to_key() in str(info.value)
    assert os.listdir(tmp_path) == [f"{box.to_key()}.json"]


def test_read_marker_of_an_unmarked_block_is_none(tmp_path, shard):
    assert read_marker(tmp_path, shard.blocks[0]) is None


def test_channel_and_shard_dirs_live_under_the_store(tmp_path, shard):
    ch = channel_dir(tmp_path, "ds", "pr", "image")
    assert ch == tmp_path / "_markers" / "ds" / "pr" / "image"
    d = shard_dir(ch, WRITTEN, 2, shard)
    assert d.is_relative_to(ch) and "level2" in d.parts


def test_shard_dirs_differ_by_kind_level_and_shard(tmp_path):
    a, b = shards_of(Box(Vec3(0, 0, 0), Vec3(512, 256, 32)), per_shard=4)[:2]
    dirs = {shard_dir(tmp_path, k, lvl, s) for k in (WRITTEN, VERIFIED) for lvl in (0, 1) for s in (a, b)}
    assert len(dirs) == 8


# --- count_marked / drop ------------------------------------------------------------

def test_count_marked_counts_marked_blocks_of_the_given_shards(tmp_path):
    shards = shards_of(Box(Vec3(0, 0, 0), Vec3(512, 512, 32)), per_shard=8)  # 4 shards of 8
    ch = channel_dir(tmp_path, "ds", "pr", "image")
    for s, n in zip(shards, (8, 3, 0, 1)):
        for b in s.blocks[:n]:
            write_marker(shard_dir(ch, WRITTEN, 0, s), b, {})
    assert count_marked(ch, WRITTEN, 0, shards) == 12
    assert count_marked(ch, WRITTEN, 0, shards[1:2]) == 3
    assert count_marked(ch, VERIFIED, 0, shards) == 0
    assert count_marked(ch, WRITTEN, 1, shards) == 0


def test_count_marked_ignores_stray_markers_not_in_the_shard(tmp_path):
    s = shards_of(Box(Vec3(0, 0, 0), Vec3(256, 256, 16)))[0]
    ch = tmp_path / "ch"
    directory = shard_dir(ch, WRITTEN, 0, s)
    write_marker(directory, s.blocks[0], {})
    write_marker(directory, Box(Vec3(5000, 0, 0), Vec3(5128, 128, 16)), {})
    assert count_marked(ch, WRITTEN, 0, [s]) == 1


def test_drop_one_kind_keeps_the_other(tmp_path, shard):
    ch = channel_dir(tmp_path, "ds", "pr", "image")
    for kind in (WRITTEN, VERIFIED):
        write_marker(shard_dir(ch, kind, 0, shard), shard.blocks[0], {})
    drop(ch, VERIFIED)
    assert count_marked(ch, VERIFIED, 0, [shard]) == 0
    assert count_marked(ch, WRITTEN, 0, [shard]) == 1


def test_drop_everything_forgets_the_channel(tmp_path, shard):
    ch = channel_dir(tmp_path, "ds", "pr", "image")
    other = channel_dir(tmp_path, "ds", "pr", "annotation")
    for c in (ch, other):
        write_marker(shard_dir(c, WRITTEN, 0, shard), shard.blocks[0], {})
    drop(ch)
    assert not ch.exists()
    assert count_marked(other, WRITTEN, 0, [shard]) == 1


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
