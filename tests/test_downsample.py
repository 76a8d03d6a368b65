"""The reductions and level geometry, pinned with tiny arrays."""
from __future__ import annotations

import numpy as np
import pytest

from ndingest.blocks import Box, Vec3
from ndingest.downsample import (
    child_box, downsample_mean, downsample_mode_nonzero, factors, level_extent, pad_to_children,
)

XY = Vec3(2, 2, 1)
XYZ = Vec3(2, 2, 2)


def full(a: np.ndarray) -> np.ndarray:
    return np.ones(a.shape, dtype=bool)


def test_mean_rounds_half_up_for_integers():
    block = np.array([[[1, 2], [2, 2]]], dtype=np.uint8)  # mean 1.75 -> 2
    assert downsample_mean(block, full(block), XY).tolist() == [[[2]]]
    block = np.array([[[1, 2], [1, 2]]], dtype=np.uint8)  # mean 1.5 -> 2 (half up)
    assert downsample_mean(block, full(block), XY).tolist() == [[[2]]]
    block = np.array([[[1, 1], [1, 2]]], dtype=np.uint8)  # mean 1.25 -> 1
    assert downsample_mean(block, full(block), XY).tolist() == [[[1]]]


def test_mean_does_not_overflow_and_keeps_dtype():
    block = np.full((1, 2, 2), 255, dtype=np.uint8)
    out = downsample_mean(block, full(block), XY)
    assert out.dtype == np.uint8 and out.tolist() == [[[255]]]
    block = np.full((2, 2, 2), 65535, dtype=np.uint16)
    assert downsample_mean(block, full(block), XYZ).tolist() == [[[65535]]]


def test_mean_is_exact_for_uint64_near_its_maximum():
    top = np.iinfo(np.uint64).max  # 2^64 - 1: eight of them would wrap a uint64 sum
    block = np.full((2, 2, 2), top, dtype=np.uint64)
    assert downsample_mean(block, full(block), XYZ).tolist() == [[[int(top)]]]
    block = np.array([[[top, top - 1], [top - 1, top - 1]]], dtype=np.uint64)  # mean top - 0.75
    assert downsample_mean(block, full(block), XY).tolist() == [[[int(top) - 1]]]
    block = np.array([[[top, top - 1], [top, top - 1]]], dtype=np.uint64)  # top - 0.5: half up
    assert downsample_mean(block, full(block), XY).tolist() == [[[int(top)]]]
    big = 2**60 + 1  # above 2^53, where a float64 mean would lose the last bits
    block = np.array([[[big, big + 2], [big, big]]], dtype=np.uint64)  # mean big + 0.5
    assert downsample_mean(block, full(block), XY).tolist() == [[[big + 1]]]


def test_mean_of_negative_integers_rounds_half_up():
    block = np.array([[[-3, -2], [-2, -2]]], dtype=np.int64)  # mean -2.25 -> -2
    assert downsample_mean(block, full(block), XY).tolist() == [[[-2]]]
    block = np.array([[[-3, -2], [-3, -2]]], dtype=np.int64)  # mean -2.5 -> -2 (half up)
    assert downsample_mean(block, full(block), XY).tolist() == [[[-2]]]
    mask = np.array([[[True, False], [True, False]]])
    assert downsample_mean(block, mask, XY).tolist() == [[[-3]]]


def test_mean_leaves_out_children_outside_the_volume():
    block = np.array([[[0, 200], [0, 100]]], dtype=np.uint8)
    mask = np.array([[[False, True], [False, True]]])  # the left column lies outside
    assert downsample_mean(block, mask, XY).tolist() == [[[150]]]


def test_float_mean_is_not_rounded():
    block = np.array([[[1.0, 2.0], [2.0, 2.0]]], dtype=np.float32)
    out = downsample_mean(block, full(block), XY)
    assert out.dtype == np.float32 and out.tolist() == [[[1.75]]]


def test_mean_of_a_2x3_image_per_output_voxel():
    block = np.array([[[10, 20, 30, 40], [50, 60, 70, 80]]], dtype=np.uint16)
    assert downsample_mean(block, full(block), XY).tolist() == [[[35, 55]]]


def test_mode_picks_the_most_frequent_non_zero_label():
    block = np.array([[[7, 7], [0, 0]]], dtype=np.uint32)  # zeros outnumber nothing
    assert downsample_mode_nonzero(block, full(block), XY).tolist() == [[[7]]]
    block = np.array([[[5, 9], [9, 0]]], dtype=np.uint32)
    assert downsample_mode_nonzero(block, full(block), XY).tolist() == [[[9]]]


def test_mode_ties_go_to_the_smallest_label_not_the_first_position():
    block = np.array([[[9, 5], [5, 9]]], dtype=np.uint32)
    assert downsample_mode_nonzero(block, full(block), XY).tolist() == [[[5]]]
    block = np.array([[[2**32 - 2, 3], [0, 0]]], dtype=np.uint64)
    assert downsample_mode_nonzero(block, full(block), XY).tolist() == [[[3]]]


def test_mode_is_zero_only_where_every_child_is_zero():
    block = np.array([[[0, 0, 0, 4], [0, 0, 0, 0]]], dtype=np.uint32)
    assert downsample_mode_nonzero(block, full(block), XY).tolist() == [[[0, 4]]]


def test_mode_never_averages_ids():
    block = np.array([[[[10, 30], [10, 30]], [[10, 30], [10, 30]]]], dtype=np.uint32).reshape(2, 2, 2)
    out = downsample_mode_nonzero(block, full(block), XYZ)
    assert out.tolist() == [[[10]]] and 20 not in out


def test_mode_ignores_children_outside_the_volume():
    block = np.array([[[3, 8], [3, 8]]], dtype=np.uint32)
    mask = np.array([[[False, True], [False, True]]])
    assert downsample_mode_nonzero(block, mask, XY).tolist() == [[[8]]]


@pytest.mark.parametrize("option, expected", [("zslices", Vec3(2, 2, 1)), ("isotropic", Vec3(2, 2, 2))])
def test_factors_per_option(option, expected):
    assert factors(option) == expected


def test_level_extent_keeps_every_voxel_at_odd_offsets():
    extent = Box(Vec3(1001, 2000, 1000), Vec3(1300, 2201, 1200))
    assert level_extent(extent, 1, "zslices") == Box(Vec3(500, 1000, 1000), Vec3(650, 1101, 1200))
    assert level_extent(extent, 2, "isotropic") == Box(Vec3(250, 500, 250), Vec3(325, 551, 300))


def test_level_extent_matches_ndstore_for_aligned_offsets():
    extent = Box(Vec3(1000, 2000, 1000), Vec3(1300, 2200, 1200))
    lv = level_extent(extent, 3, "zslices")
    assert lv.begin == Vec3(1000 // 8, 2000 // 8, 1000) and lv.shape == Vec3(-(-300 // 8), 200 // 8, 200)


def test_pad_to_children_masks_what_lies_outside():
    wanted = child_box(Box(Vec3(500, 0, 0), Vec3(502, 1, 1)), XY)  # x 1000..1004 at the level below
    have = Box(Vec3(1001, 0, 0), Vec3(1004, 2, 1))
    data = np.arange(6, dtype=np.uint8).reshape(1, 2, 3) + 1
    block, mask = pad_to_children(data, have, wanted)
    assert block.tolist() == [[[0, 1, 2, 3], [0, 4, 5, 6]]]
    assert mask.tolist() == [[[False, True, True, True], [False, True, True, True]]]
    assert downsample_mean(block, mask, XY).tolist() == [[[3, 4]]]  # (1+4)/2=2.5->3; (2+3+5+6)/4=4
