"""The plan: how many levels a spec may ask for, which sources it accepts, and how each
level is cut into tasks (plan.py). Level and task rules are pure; source checks open
small HDF5 files in tmp_path."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import spec_text, write_h5, write_spec
from ndingest.blocks import Box, Vec3
from ndingest.downsample import level_extent
from ndingest.errors import SourceError, SpecError
from ndingest.plan import (
    MAX_TASKS_PER_CHANNEL, _tasks_for, build_plan, check_source, max_levels, plan_levels, resolve_levels,
)
from ndingest.sources import open_source
from ndingest.spec import ChannelSpec, load_spec, parse_spec

CHUNK = Vec3(128, 128, 16)  # zslices level 0 at 32 x 32 x 40 nm


def levels(n, *, offset=(0, 0, 0), size=(70, 60, 10), option="zslices", resolution=(4.0, 4.0, 40.0)):
    return resolve_levels(n, extent=Box.from_shape(Vec3(*offset), Vec3(*size)), scaling_option=option,
                          voxel_resolution_nm=resolution)


def cut_spec(tmp_path: Path, *, block_chunks=(1, 1, 1), blocks_per_task=1):
    """A parsed spec with these ingest options (its source is never opened)."""
    ingest = f"block_chunks = {list(block_chunks)}\nblocks_per_task = {blocks_per_task}"
    return parse_spec(spec_text(image="never_read.h5", ingest=ingest), tmp_path / "spec.toml")


def blocks_in_x(n: int) -> Box:
    """An extent that is `n` one-chunk blocks along x (block_chunks [1, 1, 1])."""
    return Box.from_shape(Vec3(0, 0, 0), Vec3(CHUNK.x * n, CHUNK.y, CHUNK.z))


def channel(source: Path, *, type="image", datatype=None) -> ChannelSpec:
    return ChannelSpec(name="ch", type=type, source=str(source), datatype=datatype)


# --- resolve_levels / max_levels: a number --------------------------------------------

def test_levels_up_to_the_first_one_voxel_wide_level_are_allowed():
    # y: 60 -> 30 -> 15 -> 8 -> 4 -> 2 -> 1 at level 6 (x is still 2 there)
    assert level_extent(Box.from_shape(Vec3(0, 0, 0), Vec3(70, 60, 10)), 6, "zslices").shape == Vec3(2, 1, 10)
    assert levels(6) == 6 and levels(0) == 0


@pytest.mark.parametrize("n", [7, 12])
def test_levels_past_one_voxel_are_refused_naming_the_key_and_the_largest(n):
    with pytest.raises(SpecError) as info:
        levels(n)
    message = str(info.value)
    assert f"dataset.scaling_levels = {n}" in message and "largest allowed is 6" in message
    assert "1 voxel wide in y at level 6" in message and info.value.exit_code == 2


def test_the_limit_follows_the_level_extents_at_an_offset():
    # at x offset 1000 the level-r extent [floor(1000/2^r), ceil(1070/2^r)) is 2 wide until 2^r > 1070
    assert max_levels(Box.from_shape(Vec3(1000, 0, 0), Vec3(70, 4096, 1)), "zslices") == 11
    assert levels(11, offset=(1000, 0, 0), size=(70, 4096, 1)) == 11
    with pytest.raises(SpecError, match="1 voxel wide in x at level 11; the largest allowed is 11"):
        levels(12, offset=(1000, 0, 0), size=(70, 4096, 1))


def test_isotropic_limits_on_x_and_y_only():
    assert levels(6, size=(70, 60, 1), option="isotropic") == 6
    with pytest.raises(SpecError, match="largest allowed is 6"):
        levels(7, size=(70, 60, 1), option="isotropic")


def test_a_volume_one_voxel_wide_allows_level_0_only():
    assert levels(0, size=(1, 500, 5)) == 0
    with pytest.raises(SpecError, match="largest allowed is 0"):
        levels(1, size=(1, 500, 5))


def test_auto_is_unchanged():
    assert levels("auto") == 0  # one 128x128 chunk covers 70x60 at level 0
    assert levels("auto", size=(1000, 600, 10)) == 3


def test_max_levels_is_the_first_level_one_voxel_wide_in_x_or_y():
    extent = Box.from_shape(Vec3(0, 0, 0), Vec3(8, 64, 3))  # x: 8 -> 4 -> 2 -> 1
    assert max_levels(extent, "zslices") == 3
    assert level_extent(extent, 3, "zslices").shape.x == 1


# --- resolve_levels: "auto" -----------------------------------------------------------

def test_auto_halves_until_one_chunk_covers_both_x_and_y():
    # x fits one 128 chunk at level 0, y needs 1000 -> 500 -> 250 -> 125: level 3
    assert levels("auto", size=(100, 1000, 10)) == 3
    assert levels("auto", size=(1000, 100, 10)) == 3


def test_auto_is_level_0_when_one_chunk_already_covers_the_volume():
    assert levels("auto", size=(128, 128, 500)) == 0
    assert levels("auto", size=(129, 128, 5)) == 1


def test_auto_compares_each_level_with_that_levels_own_chunk():
    # 4 x 4 x 40 nm: chunks are 128 wide up to level 4 and 64 from level 5 (40 / (4 * 32) <= 0.5),
    # so 4096 in x is 128 at level 5, still two 64 chunks, and one only at level 6
    assert levels("auto", size=(4096, 100, 10)) == 6


def test_auto_counts_the_level_extent_at_an_offset():
    # 256 voxels from offset 0 are 128 at level 1; from offset 1, level 1 covers [0, 129)
    assert levels("auto", offset=(0, 0, 0), size=(256, 10, 10)) == 1
    assert levels("auto", offset=(1, 0, 0), size=(256, 10, 10)) == 2


@pytest.mark.parametrize("size", [(70, 60, 10), (1000, 600, 10), (100_000, 100_000, 1)])
def test_auto_never_goes_past_the_largest_number_allowed(size):
    extent = Box.from_shape(Vec3(0, 0, 0), Vec3(*size))
    assert levels("auto", size=size) <= max_levels(extent, "zslices")
    assert levels(levels("auto", size=size), size=size) == levels("auto", size=size)


def test_auto_on_a_thin_volume_resolves_to_a_number_the_spec_may_give():
    size = (5000, 3, 1)
    assert levels("auto", size=size) <= max_levels(Box.from_shape(Vec3(0, 0, 0), Vec3(*size)), "zslices")


# --- the task cap ------------------------------------------------------------------

def test_a_channel_within_the_cap_keeps_the_spec_blocks_per_task(tmp_path):
    spec = cut_spec(tmp_path, blocks_per_task=3)
    tasks = _tasks_for(blocks_in_x(3 * MAX_TASKS_PER_CHANNEL), CHUNK, spec, 1)
    assert len(tasks) == MAX_TASKS_PER_CHANNEL
    assert {len(s.blocks) for s in tasks} == {3}


def test_a_channel_past_the_cap_gets_bigger_tasks_at_most_1000(tmp_path):
    spec = cut_spec(tmp_path, blocks_per_task=1)
    tasks = _tasks_for(blocks_in_x(2001), CHUNK, spec, 1)
    assert len(tasks) <= MAX_TASKS_PER_CHANNEL
    assert len(tasks[0].blocks) == 3  # ceil(2001 / 1000)
    assert sum(len(s.blocks) for s in tasks) == 2001


def test_bigger_tasks_still_hold_every_block_once_in_plan_order(tmp_path):
    spec = cut_spec(tmp_path, blocks_per_task=1)
    extent = blocks_in_x(2500)
    tasks = _tasks_for(extent, CHUNK, spec, 1)
    flat = [b for s in tasks for b in s.blocks]
    assert flat == sorted(flat, key=lambda b: b.begin.x) and len(set(flat)) == 2500
    assert [s.index for s in tasks] == list(range(len(tasks)))


def test_the_cap_applies_to_each_level_on_its_own(tmp_path):
    spec = cut_spec(tmp_path, blocks_per_task=1)
    lv0, lv1 = plan_levels(blocks_in_x(2001), spec, levels=1, time_points=1)
    assert (lv0.total_blocks, len(lv0.tasks)) == (2001, 667)
    # level 1 is half as wide in x and y: 1001 blocks of the (same) 128-wide chunk, 2 per task
    assert (lv1.total_blocks, len(lv1.tasks)) == (1001, 501)
    assert lv1.extent == level_extent(lv0.extent, 1, "zslices")


def test_time_points_count_towards_the_cap(tmp_path):
    spec = cut_spec(tmp_path, blocks_per_task=1)
    tasks = _tasks_for(blocks_in_x(10), CHUNK, spec, 200)  # 2000 blocks in all
    assert len(tasks) <= MAX_TASKS_PER_CHANNEL
    assert len(tasks) == 1000 and all(len(s.blocks) == 2 for s in tasks)


def test_time_points_whose_blocks_do_not_divide_evenly_stay_within_the_cap(tmp_path):
    spec = cut_spec(tmp_path, blocks_per_task=1)
    tasks = _tasks_for(blocks_in_x(3), CHUNK, spec, 600)
    assert len(tasks) <= MAX_TASKS_PER_CHANNEL


# --- check_source -------------------------------------------------------------------

def test_a_source_of_the_declared_datatype_is_accepted(tmp_path):
    path = write_h5(tmp_path / "a.h5", np.zeros((2, 3, 4), np.uint16))
    check_source(channel(path, datatype="uint16"), open_source(str(path)))
    check_source(channel(path), open_source(str(path)))  # no datatype given: the source's


def test_a_declared_datatype_that_differs_is_a_spec_error_never_a_cast(tmp_path):
    path = write_h5(tmp_path / "a.h5", np.zeros((2, 3, 4), np.uint8))
    with pytest.raises(SpecError) as info:
        check_source(channel(path, datatype="uint16"), open_source(str(path)))
    assert "channels.ch.datatype = 'uint16'" in str(info.value) and "holds uint8" in str(info.value)
    assert info.value.exit_code == 2


@pytest.mark.parametrize("dtype", [np.int16, np.float64, np.int8])
def test_a_datatype_ndstore_does_not_store_is_a_source_error(tmp_path, dtype):
    path = write_h5(tmp_path / "a.h5", np.zeros((2, 3, 4), dtype))
    with pytest.raises(SourceError, match=f"datatype {np.dtype(dtype).name} is not one ndstore stores") as info:
        check_source(channel(path), open_source(str(path)))
    assert str(path) in str(info.value) and info.value.exit_code == 3


def test_an_annotation_of_floats_is_refused(tmp_path):
    path = write_h5(tmp_path / "a.h5", np.zeros((2, 3, 4), np.float32))
    check_source(channel(path), open_source(str(path)))  # fine as an image
    with pytest.raises(SourceError, match="annotation labels must be unsigned integers, not float32"):
        check_source(channel(path, type="annotation"), open_source(str(path)))


def test_a_signed_annotation_is_a_source_error(tmp_path):
    path = write_h5(tmp_path / "a.h5", np.zeros((2, 3, 4), np.int32))
    with pytest.raises(SourceError):
        check_source(channel(path, type="annotation"), open_source(str(path)))


def test_an_unsigned_annotation_is_accepted(tmp_path):
    path = write_h5(tmp_path / "a.h5", np.zeros((2, 3, 4), np.uint64))
    check_source(channel(path, type="annotation"), open_source(str(path)))


def test_a_4d_source_must_be_declared_a_timeseries(tmp_path):
    path = write_h5(tmp_path / "a.h5", np.zeros((3, 2, 3, 4), np.uint8))  # tzyx, 3 time points
    with pytest.raises(SourceError, match='has 3 time points; set channels.ch.type = "timeseries"'):
        check_source(channel(path), open_source(str(path)))
    check_source(channel(path, type="timeseries"), open_source(str(path)))


def test_a_4d_source_of_one_time_point_is_an_image(tmp_path):
    path = write_h5(tmp_path / "a.h5", np.zeros((1, 2, 3, 4), np.uint8))
    check_source(channel(path), open_source(str(path)))


# --- build_plan ---------------------------------------------------------------------

def test_channels_of_different_sizes_are_refused_naming_both(tmp_path):
    image = write_h5(tmp_path / "image.h5", np.zeros((4, 30, 40), np.uint8))
    labels = write_h5(tmp_path / "labels.h5", np.zeros((4, 30, 41), np.uint32))
    spec = write_spec(tmp_path, image=image, annotation=labels)
    with pytest.raises(SourceError) as info:
        build_plan(load_spec(spec))
    message = str(info.value)
    assert str(labels) in message and "x41 y30 z4" in message and "channel image's x40 y30 z4" in message
    assert not (tmp_path / "store").exists()


def test_build_plan_checks_every_source_before_planning(tmp_path):
    image = write_h5(tmp_path / "image.h5", np.zeros((4, 30, 40), np.uint8))
    labels = write_h5(tmp_path / "labels.h5", np.zeros((4, 30, 40), np.float32))
    with pytest.raises(SourceError, match="annotation labels must be unsigned"):
        build_plan(load_spec(write_spec(tmp_path, image=image, annotation=labels)))


def test_too_many_levels_stop_the_plan_before_the_store_exists(tmp_path):
    image = write_h5(tmp_path / "image.h5", np.zeros((4, 30, 40), np.uint8))
    text = spec_text(image=image).replace("scaling_levels = 0", "scaling_levels = 9")
    (tmp_path / "spec.toml").write_text(text)
    with pytest.raises(SpecError, match="scaling_levels = 9"):
        build_plan(load_spec(tmp_path / "spec.toml"))
    assert not (tmp_path / "store").exists()


def test_the_plan_holds_auto_resolved_and_every_level_for_every_channel(tmp_path):
    image = write_h5(tmp_path / "image.h5", np.zeros((4, 30, 300), np.uint8))
    labels = write_h5(tmp_path / "labels.h5", np.zeros((4, 30, 300), np.uint32))
    text = spec_text(image=image, annotation=labels).replace("scaling_levels = 0", 'scaling_levels = "auto"')
    (tmp_path / "spec.toml").write_text(text)
    plan = build_plan(load_spec(tmp_path / "spec.toml"))
    # x 300 -> 150 -> 75 -> 38; at 32 x 32 x 40 nm chunks are 64 wide from level 2, so 3 levels
    assert plan.size == Vec3(300, 30, 4) and plan.scaling_levels == 3
    for cp in plan.channels.values():
        assert [lv.level for lv in cp.levels] == [0, 1, 2, 3]
        assert [lv.chunk.x for lv in cp.levels] == [128, 128, 64, 64]
        assert cp.extent == Box.from_shape(Vec3(1000, 2000, 1000), Vec3(300, 30, 4))
    assert plan.channels["annotation"].datatype == "uint32"
