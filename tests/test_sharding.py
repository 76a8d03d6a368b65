"""Sharded precomputed (`[store] sharding = true`): the Morton geometry that makes one block
one shard file, checked against CloudVolume's own functions, the spec keys, the plan's
blocks per level, the `info`, and the one-transaction write of a block."""
from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import numpy as np
import pytest

from ndingest.blocks import (PRESHIFT_BITS, Box, Vec3, chunk_grid, compressed_morton_code, morton_bits, plan_blocks,
                             shard_cuboid, shard_file_name, sharding_spec)
from ndingest.errors import SpecError
from ndingest.plan import level_block_chunks, plan_levels
from ndingest.spec import parse_spec
from ndingest.targets import LocalStore, Scale, VolumeRef, precomputed_info
from test_spec import BASE


def spec(tmp_path: Path, store: str = 'path = "store"\nsharding = true', ingest: str = ""):
    """test_spec's base spec (two levels above 0), with this `[store]` and `ingest` table."""
    return parse_spec(BASE.replace('path = "store"\n', store + "\n") + ingest, tmp_path / "spec.toml")


def grids() -> list[Vec3]:
    """Every small grid, and random large and lopsided ones."""
    rng = random.Random(11)
    small = [Vec3(*g) for g in itertools.product(range(1, 9), repeat=3)]
    large = [Vec3(rng.randint(1, 3000), rng.randint(1, 3000), rng.randint(1, 600)) for _ in range(200)]
    thin = [Vec3(rng.randint(1, 5000), rng.randint(1, 3), rng.randint(1, 40)) for _ in range(100)]
    return small + large + thin


def shard_number(position: Vec3, grid: Vec3) -> int:
    shard_bits = sharding_spec(grid)["shard_bits"]
    return (compressed_morton_code(position, grid) >> PRESHIFT_BITS) & ((1 << shard_bits) - 1)


# --- the Morton geometry -------------------------------------------------------------------------

@pytest.mark.parametrize("grid, cuboid, shard_bits", [
    ((8, 8, 8), (4, 4, 4), 3),          # 512 chunks: 8 shard files of 4x4x4
    ((4, 4, 4), (4, 4, 4), 0),          # exactly one shard file
    ((8, 8, 2), (8, 4, 2), 1),          # bits x, y, z, x, y, x
    ((32, 32, 1), (8, 8, 1), 4),        # z has no bits: x and y share them
    ((3, 1, 1), (4, 1, 1), 0),          # smaller than one shard: its grid rounded up to powers of two
    ((1, 1, 1), (1, 1, 1), 0),
    ((1000, 3, 1), (16, 4, 1), 6),      # y's 2 bits are spent early, x takes the rest
])
def test_shard_cuboid_and_shard_bits_follow_the_morton_interleaving(grid, cuboid, shard_bits):
    assert shard_cuboid(Vec3(*grid)) == Vec3(*cuboid)
    assert sharding_spec(Vec3(*grid))["shard_bits"] == shard_bits


def test_sharding_spec_is_identity_hashed_with_6_preshift_bits_no_minishards_and_raw_encodings():
    assert sharding_spec(Vec3(8, 8, 8)) == {
        "@type": "neuroglancer_uint64_sharded_v1", "hash": "identity", "preshift_bits": 6, "minishard_bits": 0,
        "shard_bits": 3, "minishard_index_encoding": "raw", "data_encoding": "raw"}


def test_morton_code_and_shard_shape_agree_with_cloudvolumes_own_functions():
    from cloudvolume.datasource.precomputed.common import compressed_morton_code as cv_morton
    from cloudvolume.datasource.precomputed.sharding import image_shard_shape_from_spec

    chunk = Vec3(128, 128, 16)
    rng = np.random.default_rng(5)
    for grid in grids():
        size = grid * chunk - Vec3(3, 0, 1)  # the last chunks cut by the volume, as at real edges
        assert chunk_grid(size, chunk) == grid
        expected = image_shard_shape_from_spec(sharding_spec(grid), tuple(size), tuple(chunk))
        assert tuple(int(v) for v in expected) == tuple(shard_cuboid(grid) * chunk), grid
        points = rng.integers(0, grid, size=(4, 3))
        codes = cv_morton(points, tuple(grid))
        assert [compressed_morton_code(Vec3(*p), grid) for p in points.tolist()] == [int(c) for c in codes], grid
        assert sum(morton_bits(grid)) <= 64


def test_every_chunk_of_a_cuboid_block_is_in_one_shard_file_and_blocks_never_share_one():
    chunk = Vec3(64, 64, 8)
    for grid in [Vec3(*g) for g in itertools.product((1, 2, 3, 5, 8, 9, 17), repeat=3)] + [Vec3(70, 33, 5)]:
        extent = Box.from_shape(Vec3(1001, 7, 3), grid * chunk - Vec3(1, 5, 0))  # odd offset, cut edges
        numbers = set()
        for block in plan_blocks(extent, chunk, shard_cuboid(grid)):
            first = (block.begin - extent.begin)
            lo = Vec3(*(b // c for b, c in zip(first, chunk)))
            hi = chunk_grid(block.end - extent.begin, chunk)
            in_block = {shard_number(Vec3(x, y, z), grid) for x in range(lo.x, hi.x)
                        for y in range(lo.y, hi.y) for z in range(lo.z, hi.z)}
            assert len(in_block) == 1, (grid, block)
            assert in_block.isdisjoint(numbers), (grid, block)
            numbers |= in_block
        assert max(numbers) < 1 << sharding_spec(grid)["shard_bits"]


def test_shard_file_names_are_hex_padded_to_the_shard_bits():
    assert shard_file_name(Vec3(0, 0, 0), Vec3(4, 4, 4)) == "0.shard"
    assert shard_file_name(Vec3(31, 31, 0), Vec3(32, 32, 1)) == "f.shard"
    grid = Vec3(64, 64, 2)  # 13 bits: 7 shard bits, two hex digits
    assert shard_file_name(Vec3(63, 63, 1), grid) == "7f.shard"
    assert shard_file_name(Vec3(0, 4, 0), grid) == "01.shard"  # the cuboid is 8x4x2: y bit 2 is shard bit 0
    assert shard_file_name(Vec3(8, 0, 0), grid) == "02.shard"


# --- the spec ------------------------------------------------------------------------------------

def test_sharding_is_off_unless_the_store_says_true(tmp_path):
    assert spec(tmp_path, store='path = "store"').store.sharding is False
    assert spec(tmp_path).store.sharding is True


def test_sharding_must_be_a_boolean_named_store_sharding(tmp_path):
    with pytest.raises(SpecError, match=r"store\.sharding = 'yes' must be true or false"):
        spec(tmp_path, store='path = "store"\nsharding = "yes"')


def test_block_chunks_with_sharding_is_refused_naming_both_keys(tmp_path):
    with pytest.raises(SpecError) as err:
        spec(tmp_path, ingest="[ingest]\nblock_chunks = [2, 2, 4]")
    assert "ingest.block_chunks" in str(err.value) and "store.sharding" in str(err.value)
    assert "\n" not in str(err.value)
    assert spec(tmp_path, ingest="[ingest]\nblocks_per_task = 3").ingest.blocks_per_task == 3
    unsharded = spec(tmp_path, store='path = "store"\nsharding = false', ingest="[ingest]\nblock_chunks = [1, 1, 1]")
    assert unsharded.ingest.block_chunks == Vec3(1, 1, 1)


def test_sharding_with_a_server_target_is_refused_in_one_line(tmp_path):
    with pytest.raises(SpecError) as err:
        spec(tmp_path, store='url = "http://127.0.0.1:8080/nd"\nsharding = true')
    assert "store.sharding" in str(err.value) and "store.url" in str(err.value) and "\n" not in str(err.value)


# --- the plan and the info -----------------------------------------------------------------------

def test_with_sharding_each_levels_block_is_that_levels_shard_cuboid(tmp_path):
    extent = Box.from_shape(Vec3(1, 2, 3), Vec3(1040, 530, 100))  # level 0 grid 9x5x7 of 128x128x16
    levels = plan_levels(extent, spec(tmp_path), levels=2, time_points=1)
    for lv in levels:
        grid = chunk_grid(lv.extent.shape, lv.chunk)
        assert lv.block_chunks == shard_cuboid(grid) == level_block_chunks(lv.extent, lv.chunk, spec(tmp_path))
        blocks = [b for s in lv.tasks for b in s.blocks]
        assert blocks == plan_blocks(lv.extent, lv.chunk, shard_cuboid(grid))
        names = {shard_file_name(Vec3(*((b - o) // c for b, o, c in zip(box.begin, lv.extent.begin, lv.chunk))), grid)
                 for box in blocks}
        assert len(names) == len(blocks)
    assert levels[0].block_chunks == Vec3(4, 4, 4) and levels[0].total_blocks == 3 * 2 * 2
    unsharded = plan_levels(extent, spec(tmp_path, store='path = "store"'), levels=2, time_points=1)
    assert all(lv.block_chunks == Vec3(2, 2, 4) for lv in unsharded)


def test_info_carries_each_scales_sharding_only_when_sharded():
    scales = [Scale((4.0, 4.0, 40.0), Vec3(1, 2, 3), Vec3(1040, 530, 100), Vec3(128, 128, 16), sharded=True),
              Scale((8.0, 8.0, 40.0), Vec3(0, 1, 3), Vec3(520, 265, 100), Vec3(128, 128, 16), sharded=True)]
    info = precomputed_info(datatype="uint8", channel_type="image", scales=scales)
    assert [s["sharding"]["shard_bits"] for s in info["scales"]] == [4, 2]  # 9x5x7: 10 bits; 5x3x7: 8 bits
    plain = precomputed_info(datatype="uint8", channel_type="image",
                             scales=[Scale((4.0, 4.0, 40.0), Vec3(0, 0, 0), Vec3(64, 64, 16), Vec3(128, 128, 16))])
    assert "sharding" not in plain["scales"][0]


# --- the write -----------------------------------------------------------------------------------

def file_metrics() -> dict[str, int]:
    import tensorstore as ts

    return {m["name"].rsplit("/", 1)[-1]: m["values"][0].get("value", 0)
            for m in ts.experimental_collect_matching_metrics("/tensorstore/kvstore/file/")
            if m["name"].rsplit("/", 1)[-1] in ("read", "write")}


@pytest.mark.parametrize("size, files", [
    (Vec3(700, 300, 50), 2),  # grid 6x3x4: 7 Morton bits, 2 shard files
    (Vec3(200, 130, 10), 1),  # grid 2x2x1: 2 bits, fewer than the preshift: one shard file
])
def test_a_block_is_written_as_one_shard_file_in_one_write_and_cloudvolume_reads_it(tmp_path, size, files):
    """Each block of a sharded level costs one file write and no read (one transaction),
    lands in the shard file its chunks' Morton codes name, and CloudVolume reads it back."""
    from cloudvolume import CloudVolume

    chunk, offset = Vec3(128, 128, 16), Vec3(5, 6, 7)
    grid = chunk_grid(size, chunk)
    store, ref = LocalStore(tmp_path / "store"), VolumeRef("ds", "pr", "image")
    store.create_volume(ref, precomputed_info(datatype="uint16", channel_type="image",
                                             scales=[Scale((4.0, 4.0, 40.0), offset, size, chunk, sharded=True)]))
    data = np.random.default_rng(3).integers(0, 60000, tuple(reversed(size)), dtype=np.uint16)  # (z, y, x)
    extent = Box.from_shape(offset, size)
    blocks = plan_blocks(extent, chunk, shard_cuboid(grid))
    assert len(blocks) == files
    store.read(ref, 0, Box.from_shape(offset, Vec3(1, 1, 1)))  # opens the level (reads its info) first
    for block in blocks:
        before = file_metrics()
        store.write(ref, 0, block, data[block.shift(-offset).to_zyx_slices()])
        after = file_metrics()
        assert after.get("write", 0) - before.get("write", 0) == 1
        assert after.get("read", 0) - before.get("read", 0) == 0
    store.flush()
    folder = store.volume_dir(ref) / "4_4_40"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        shard_file_name(Vec3(*((b - o) // c for b, o, c in zip(block.begin, offset, chunk))), grid) for block in blocks)
    assert json.loads((store.volume_dir(ref) / "info").read_text())["scales"][0]["sharding"] == sharding_spec(grid)
    cv = CloudVolume(f"file://{store.volume_dir(ref)}", mip=0, parallel=1, progress=False, fill_missing=False)
    np.testing.assert_array_equal(np.asarray(cv[:, :, :])[..., 0].transpose(2, 1, 0), data)
    np.testing.assert_array_equal(store.reopened().read(ref, 0, extent), data)


# --- the server's locks --------------------------------------------------------------------------

def test_a_servers_lock_stripe_covers_a_whole_shard_file_of_a_sharded_channel():
    """Two POSTs to different chunks of one shard file take the same lock (each would
    rewrite the file); in a channel of one file per chunk they do not."""
    from ndingest.server.context import ChannelView, info_levels
    from ndingest.server.locks import lock_cell, lock_stripes

    def channel(sharded: bool) -> ChannelView:
        info = precomputed_info(datatype="uint8", channel_type="image", scales=[
            Scale((4.0, 4.0, 40.0), Vec3(1, 2, 3), Vec3(1040, 530, 100), Vec3(128, 128, 16), sharded=sharded)])
        return ChannelView(token=None, row={}, info=info, levels=info_levels(info))  # type: ignore[arg-type]

    sharded, plain = channel(True), channel(False)
    assert lock_cell(sharded, 0) == Vec3(512, 512, 64) and lock_cell(plain, 0) == Vec3(128, 128, 16)
    extent = sharded.levels[0].extent
    a, b = Box.from_shape(Vec3(1, 2, 3), Vec3(10, 10, 2)), Box.from_shape(Vec3(400, 300, 50), Vec3(10, 10, 2))
    other_file = Box.from_shape(Vec3(600, 2, 3), Vec3(10, 10, 2))
    stripes = {name: lock_stripes([(None, box)], chunk=lock_cell(sharded, 0), within=extent)
               for name, box in (("a", a), ("b", b), ("other", other_file))}
    assert stripes["a"] == stripes["b"] and len(stripes["a"]) == 1 and stripes["other"] != stripes["a"]
    assert lock_stripes([(None, a)], chunk=lock_cell(plain, 0), within=extent) != \
        lock_stripes([(None, b)], chunk=lock_cell(plain, 0), within=extent)
