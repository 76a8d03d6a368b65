"""Geometry as values: Vec3, Box, the chunk grid and the task plan (pure, no I/O)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from ndingest.blocks import Box, BlockTask, Vec3, ceil_div, chunk_shape, plan_blocks, plan_tasks
from ndingest.errors import BadBox, SpecError


def box(b, e) -> Box:
    return Box(Vec3(*b), Vec3(*e))


# --- Vec3 ---------------------------------------------------------------------------

def test_vec3_arithmetic_is_element_wise_and_returns_vec3():
    a, b = Vec3(1, 2, 3), Vec3(10, 20, 30)
    assert a + b == Vec3(11, 22, 33) and isinstance(a + b, Vec3)
    assert b - a == Vec3(9, 18, 27) and isinstance(b - a, Vec3)
    assert a * b == Vec3(10, 40, 90) and isinstance(a * b, Vec3)
    assert -a == Vec3(-1, -2, -3)
    assert Vec3(2, 3, 4).volume == 24


def test_ceil_div_rounds_up_for_positive_and_negative():
    assert ceil_div(7, 2) == 4
    assert ceil_div(8, 2) == 4
    assert ceil_div(-7, 2) == -3
    assert ceil_div(0, 5) == 0


# --- Box basics ---------------------------------------------------------------------

def test_box_is_equal_and_hashable_by_value():
    assert box((0, 0, 0), (4, 5, 6)) == box((0, 0, 0), (4, 5, 6))
    assert len({box((0, 0, 0), (4, 5, 6)), box((0, 0, 0), (4, 5, 6))}) == 1
    assert box((0, 0, 0), (4, 5, 6)) != box((0, 0, 0), (4, 5, 7))


def test_box_is_frozen():
    b = box((0, 0, 0), (1, 1, 1))
    with pytest.raises(AttributeError):
        b.begin = Vec3(1, 1, 1)  # type: ignore[misc]


def test_box_shape_and_from_shape_agree():
    b = Box.from_shape(Vec3(10, 20, 30), Vec3(3, 4, 5))
    assert b == box((10, 20, 30), (13, 24, 35))
    assert b.shape == Vec3(3, 4, 5)


def test_box_is_empty_only_when_an_axis_has_zero_length():
    assert box((1, 1, 1), (1, 5, 5)).is_empty
    assert not box((1, 1, 1), (2, 2, 2)).is_empty


def test_shift_moves_both_corners_and_returns_new_box():
    b = box((0, 1, 2), (3, 4, 5))
    assert b.shift(Vec3(10, 20, 30)) == box((10, 21, 32), (13, 24, 35))
    assert b.shift(-Vec3(0, 1, 2)) == box((0, 0, 0), (3, 3, 3))
    assert b == box((0, 1, 2), (3, 4, 5))


# --- intersect / contains -----------------------------------------------------------

def test_intersect_of_overlapping_boxes_is_the_common_part():
    a = box((0, 0, 0), (10, 10, 10))
    b = box((5, -3, 8), (20, 4, 12))
    assert a.intersect(b) == box((5, 0, 8), (10, 4, 10))
    assert b.intersect(a) == a.intersect(b)


def test_intersect_of_disjoint_boxes_is_empty():
    a = box((0, 0, 0), (10, 10, 10))
    b = box((20, 0, 0), (30, 10, 10))
    assert a.intersect(b).is_empty
    assert a.intersect(b).shape.volume == 0


def test_intersect_with_a_containing_box_is_the_box_itself():
    inner = box((2, 3, 4), (5, 6, 7))
    assert inner.intersect(box((0, 0, 0), (100, 100, 100))) == inner


def test_contains_includes_equal_and_inner_boxes_only():
    outer = box((0, 0, 0), (10, 10, 10))
    assert outer.contains(outer)
    assert outer.contains(box((1, 2, 3), (4, 5, 6)))
    assert not outer.contains(box((1, 2, 3), (4, 5, 11)))
    assert not outer.contains(box((-1, 2, 3), (4, 5, 6)))
    assert not box((1, 2, 3), (4, 5, 6)).contains(outer)


# --- snap_to_grid / chunks ----------------------------------------------------------

def test_snap_to_grid_counts_chunks_from_the_origin_not_zero():
    origin = Vec3(1000, 2000, 1000)
    b = box((1010, 2130, 1017), (1100, 2200, 1033))
    snapped = b.snap_to_grid(Vec3(64, 128, 16), origin)
    assert snapped == box((1000, 2128, 1016), (1128, 2256, 1048))


def test_snap_to_grid_keeps_an_aligned_box():
    origin = Vec3(3, 5, 7)
    b = box((3 + 64, 5, 7 + 16), (3 + 128, 5 + 128, 7 + 48))
    assert b.snap_to_grid(Vec3(64, 128, 16), origin) == b


def test_snap_to_grid_with_zero_origin_matches_plain_multiples():
    b = box((5, 130, 17), (70, 200, 31))
    assert b.snap_to_grid(Vec3(64, 128, 16), Vec3(0, 0, 0)) == box((0, 128, 16), (128, 256, 32))


def test_chunks_are_clipped_to_the_volume_and_x_fastest():
    within = box((10, 20, 30), (110, 70, 35))  # 100 x 50 x 5
    chunks = list(within.chunks(Vec3(64, 32, 4), within=within))
    assert chunks == [
        box((10, 20, 30), (74, 52, 34)), box((74, 20, 30), (110, 52, 34)),
        box((10, 52, 30), (74, 70, 34)), box((74, 52, 30), (110, 70, 34)),
        box((10, 20, 34), (74, 52, 35)), box((74, 20, 34), (110, 52, 35)),
        box((10, 52, 34), (74, 70, 35)), box((74, 52, 34), (110, 70, 35)),
    ]
    assert all(within.contains(c) for c in chunks)


def test_chunks_of_a_sub_box_are_whole_grid_cells_from_within_begin():
    within = box((3, 3, 3), (103, 103, 103))
    sub = box((20, 3, 3), (40, 10, 10))
    assert list(sub.chunks(Vec3(16, 16, 16), within=within)) == [
        box((19, 3, 3), (35, 19, 19)), box((35, 3, 3), (51, 19, 19)),
    ]


# --- keys and slices ----------------------------------------------------------------

def test_to_key_is_precomputeds_chunk_name():
    assert box((1000, 2000, 1000), (1128, 2128, 1016)).to_key() == "1000-1128_2000-2128_1000-1016"
    assert str(box((0, 1, 2), (3, 4, 5))) == "0-3_1-4_2-5"


@pytest.mark.parametrize("b", [
    box((0, 0, 0), (1, 1, 1)),
    box((1000, 2000, 1000), (1128, 2128, 1016)),
    box((7, 0, 123456), (9, 64, 123457)),
])
def test_from_key_round_trips_to_key(b):
    assert Box.from_key(b.to_key()) == b


@pytest.mark.parametrize("key", ["0-1_2-3", "0-1_2-3_4-5_6-7", "0-1-2_2-3_4-5", "0_2-3_4-5"])
def test_from_key_rejects_malformed_keys(key):
    with pytest.raises(ValueError):
        Box.from_key(key)


def test_to_zyx_slices_index_a_zyx_array_like_the_box():
    data = np.arange(6 * 7 * 8).reshape(6, 7, 8)  # (z, y, x)
    b = box((1, 2, 3), (5, 6, 4))  # x 1..5, y 2..6, z 3..4
    assert b.to_zyx_slices() == (slice(3, 4), slice(2, 6), slice(1, 5))
    np.testing.assert_array_equal(data[b.to_zyx_slices()], data[3:4, 2:6, 1:5])
    assert data[b.to_zyx_slices()].shape == tuple(b.shape)[::-1]


# --- chunk_shape --------------------------------------------------------------------

@pytest.mark.parametrize("level, expected", [
    (0, Vec3(128, 128, 16)),  # 40 / 32  = 1.25
    (1, Vec3(128, 128, 16)),  # 40 / 64  = 0.625
    (2, Vec3(64, 64, 64)),    # 40 / 128 = 0.3125
    (3, Vec3(64, 64, 64)),
])
def test_zslices_chunk_is_flat_while_voxels_are_flatter_than_tall(level, expected):
    assert chunk_shape("zslices", (32.0, 32.0, 40.0), level) == expected


def test_zslices_chunk_switches_to_cubes_exactly_at_ratio_one_half():
    # zres / (xres * 2^r) == 0.5 is not > 0.5
    assert chunk_shape("zslices", (10.0, 10.0, 10.0), 0) == Vec3(128, 128, 16)
    assert chunk_shape("zslices", (10.0, 10.0, 10.0), 1) == Vec3(64, 64, 64)
    assert chunk_shape("zslices", (4.0, 4.0, 40.0), 4) == Vec3(128, 128, 16)  # 0.625
    assert chunk_shape("zslices", (4.0, 4.0, 40.0), 5) == Vec3(64, 64, 64)    # 0.3125


@pytest.mark.parametrize("level", [0, 1, 5])
def test_isotropic_chunk_is_always_64_cubed(level):
    assert chunk_shape("isotropic", (4.0, 4.0, 40.0), level) == Vec3(64, 64, 64)


# --- plan_blocks / plan_tasks ------------------------------------------------------

def paint(extent: Box, blocks) -> np.ndarray:
    """How many blocks cover each voxel of `extent`."""
    counts = np.zeros(tuple(extent.shape)[::-1], dtype=np.int32)
    for b in blocks:
        counts[b.shift(-extent.begin).to_zyx_slices()] += 1
    return counts


@pytest.mark.parametrize("extent", [
    box((1000, 2000, 1000), (1300, 2200, 1200)),  # the tutorial's cutout
    box((0, 0, 0), (256, 256, 32)),               # exactly aligned
    box((3, 5, 7), (4, 6, 8)),                    # a single voxel
    box((17, 0, 9), (530, 129, 50)),              # odd offset and sizes
])
def test_blocks_cover_the_extent_exactly_once(extent):
    blocks = plan_blocks(extent, Vec3(128, 128, 16), Vec3(2, 2, 4))
    assert (paint(extent, blocks) == 1).all()
    assert sum(b.shape.volume for b in blocks) == extent.shape.volume


def test_edge_blocks_are_clipped_never_padded():
    extent = box((1000, 2000, 1000), (1300, 2200, 1200))
    blocks = plan_blocks(extent, Vec3(128, 128, 16), Vec3(2, 2, 4))
    assert all(extent.contains(b) and not b.is_empty for b in blocks)
    # block size 256 x 256 x 64: x splits 256 + 44, y is one block of 200, z 64*3 + 8
    assert sorted({b.shape.x for b in blocks}) == [44, 256]
    assert {b.shape.y for b in blocks} == {200}
    assert sorted({b.shape.z for b in blocks}) == [8, 64]
    assert len(blocks) == 2 * 1 * 4


def test_blocks_start_on_the_grid_of_the_extent_begin():
    extent = box((1000, 2000, 1000), (1300, 2200, 1200))
    block = Vec3(256, 256, 64)
    for b in plan_blocks(extent, Vec3(128, 128, 16), Vec3(2, 2, 4)):
        assert all((bb - eb) % s == 0 for bb, eb, s in zip(b.begin, extent.begin, block))


def test_plan_blocks_is_deterministic_and_x_fastest():
    extent = box((5, 5, 5), (300, 300, 40))
    first = plan_blocks(extent, Vec3(64, 64, 16), Vec3(1, 1, 1))
    assert first == plan_blocks(extent, Vec3(64, 64, 16), Vec3(1, 1, 1))
    keys = [(b.begin.z, b.begin.y, b.begin.x) for b in first]
    assert keys == sorted(keys)


def test_plan_tasks_groups_blocks_in_plan_order():
    extent = box((0, 0, 0), (512, 256, 32))
    chunk = Vec3(128, 128, 16)
    blocks = plan_blocks(extent, chunk, Vec3(1, 1, 1))
    tasks = plan_tasks(extent, chunk, block_chunks=Vec3(1, 1, 1), blocks_per_task=5)
    assert len(blocks) == 16
    assert [len(s.blocks) for s in tasks] == [5, 5, 5, 1]
    assert [b for s in tasks for b in s.blocks] == blocks
    assert [s.index for s in tasks] == [0, 1, 2, 3]
    assert all(isinstance(s, BlockTask) and s.t == 0 for s in tasks)


def test_plan_tasks_is_deterministic():
    extent = box((17, 3, 1), (1000, 700, 90))
    kwargs = dict(block_chunks=Vec3(2, 2, 4), blocks_per_task=3, time_points=2)
    assert plan_tasks(extent, Vec3(128, 128, 16), **kwargs) == plan_tasks(extent, Vec3(128, 128, 16), **kwargs)


def test_time_points_get_separate_tasks_with_the_same_blocks():
    extent = box((0, 0, 0), (256, 256, 48))
    chunk = Vec3(128, 128, 16)
    one = plan_tasks(extent, chunk, block_chunks=Vec3(1, 1, 1), blocks_per_task=4)
    three = plan_tasks(extent, chunk, block_chunks=Vec3(1, 1, 1), blocks_per_task=4, time_points=3)
    assert len(three) == 3 * len(one)
    assert [s.index for s in three] == list(range(len(three)))
    for t in range(3):
        per_t = [s for s in three if s.t == t]
        assert [s.blocks for s in per_t] == [s.blocks for s in one]
    assert [s.t for s in three] == sorted(s.t for s in three)


def test_one_hundred_thousand_blocks_are_planned_with_the_right_counts():
    chunk = Vec3(64, 64, 64)
    extent = Box.from_shape(Vec3(100, 200, 300), Vec3(64 * 50, 64 * 50, 64 * 40 - 10))  # 50*50*40 blocks
    tasks = plan_tasks(extent, chunk, block_chunks=Vec3(1, 1, 1), blocks_per_task=64)
    total = sum(len(s.blocks) for s in tasks)
    assert total == 100_000
    assert len(tasks) == ceil_div(100_000, 64)
    assert sum(b.shape.volume for s in tasks for b in s.blocks) == extent.shape.volume
    assert len({b for s in tasks for b in s.blocks}) == 100_000


def test_a_box_that_begins_after_it_ends_is_a_spec_error_naming_the_axis():
    with pytest.raises(BadBox) as info:
        Box(Vec3(0, 5, 0), Vec3(4, 3, 4))
    assert isinstance(info.value, SpecError) and info.value.exit_code == 2
    assert "y range [5, 3)" in str(info.value)


def test_a_bad_box_is_refused_under_python_O_too():
    """Not an assert: `python -O` strips those, and a bad box would go on to a wrong read."""
    code = ("from ndingest.blocks import Box, Vec3\n"
            "from ndingest.errors import BadBox\n"
            "assert False, 'asserts must be off here'\n"
            "try:\n    Box(Vec3(7, 0, 0), Vec3(2, 1, 1))\nexcept BadBox as exc:\n    print('refused:', exc)\n")
    proc = subprocess.run([sys.executable, "-O", "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("refused: box x range [7, 2)"), proc.stdout
