"""The reductions and level geometry, pinned with tiny arrays."""
from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest

from ndingest import downsample
from ndingest.blocks import Box, Vec3
from ndingest.downsample import (
    child_box, downsample_mean, downsample_mode_nonzero, factors, level_extent, pad_to_children, reduce,
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


# --- the fast paths against a slow, obvious reference (voxel by voxel, Python ints) ---------

def reference_reduce(block: np.ndarray, mask: np.ndarray, f: Vec3, *, annotation: bool) -> np.ndarray:
    """DESIGN.md's rule voxel by voxel: the children inside `mask`, counted with Counter
    (annotations) or summed as Python ints (exact at any width) and rounded half up."""
    shape = (block.shape[0] // f.z, block.shape[1] // f.y, block.shape[2] // f.x)
    out = np.zeros(shape, dtype=block.dtype)
    for z, y, x in np.ndindex(*shape):
        kids = [block[c].item() for c in np.ndindex(f.z, f.y, f.x)
                for c in [(z * f.z + c[0], y * f.y + c[1], x * f.x + c[2])] if mask[c]]
        if annotation:
            counts = Counter(k for k in kids if k)
            out[z, y, x] = min(counts, key=lambda k: (-counts[k], k)) if counts else 0
        elif block.dtype.kind == "f":
            out[z, y, x] = sum(kids) / max(1, len(kids))  # dyadic test values: the float64 sum is exact
        else:
            out[z, y, x] = (2 * sum(kids) + len(kids)) // (2 * len(kids)) if kids else 0
    return out


def random_values(rng: np.random.Generator, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """Values that reach the dtype's edges: the full range, and a cluster at each end."""
    if dtype == "float32":
        return (rng.integers(-2**20, 2**20, size=shape) / 64).astype(np.float32)
    info = np.iinfo(dtype)
    pick = rng.integers(0, 3, size=shape)
    full_range = rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    near_top = np.array(info.max, dtype=dtype) - rng.integers(0, 4, size=shape).astype(dtype)
    near_bottom = np.array(info.min, dtype=dtype) + rng.integers(0, 4, size=shape).astype(dtype)
    return np.choose(pick, [full_range, near_top, near_bottom]).astype(dtype)


def random_labels(rng: np.random.Generator, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """Few distinct labels (zero among them, one near the dtype's maximum), so ties and
    all-zero children are common."""
    top = int(np.iinfo(dtype).max)
    alphabet = np.array([0, 0, 1, 2, 3, top - 1, top], dtype=dtype)
    return alphabet[rng.integers(0, len(alphabet), size=shape)]


def random_case(rng: np.random.Generator, f: Vec3) -> tuple[tuple[int, int, int], np.ndarray]:
    """An odd output shape, and a mask: every child, a box (an edge block) or any subset."""
    out = tuple(int(n) for n in rng.integers(1, 6, size=3))
    shape = (out[0] * f.z, out[1] * f.y, out[2] * f.x)
    kind = rng.integers(0, 3)
    if kind == 0:
        return shape, np.ones(shape, dtype=bool)
    if kind == 1:
        mask = np.zeros(shape, dtype=bool)
        lo = [int(rng.integers(0, 2)) for _ in shape]
        hi = [n - int(rng.integers(0, 2)) for n in shape]
        mask[lo[0]:max(hi[0], lo[0] + 1), lo[1]:max(hi[1], lo[1] + 1), lo[2]:max(hi[2], lo[2] + 1)] = True
        return shape, mask
    return shape, rng.random(shape) < 0.6


@pytest.mark.parametrize("f", [XY, XYZ], ids=["zslices", "isotropic"])
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64",
                                   "float32"])
def test_mean_equals_the_reference_on_random_blocks(dtype, f):
    rng = np.random.default_rng(sum(map(ord, dtype)) + f.z)
    for _ in range(25):
        shape, mask = random_case(rng, f)
        block = random_values(rng, dtype, shape)
        expected = reference_reduce(block, mask, f, annotation=False)
        got = downsample_mean(block, mask, f)
        assert got.dtype == block.dtype
        np.testing.assert_array_equal(got, expected)
        if mask.all():  # the fast path: no mask at all
            np.testing.assert_array_equal(downsample_mean(block, None, f), expected)


@pytest.mark.parametrize("f", [XY, XYZ], ids=["zslices", "isotropic"])
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "uint32", "uint64", "int32"])
def test_mode_equals_the_reference_on_random_blocks(dtype, f):
    rng = np.random.default_rng(sum(map(ord, dtype)) + 10 * f.z)
    for _ in range(25):
        shape, mask = random_case(rng, f)
        block = random_labels(rng, dtype, shape)
        if rng.random() < 0.3:  # whole segments: most output voxels see one label
            block[:] = block[:, :1, :1]
        expected = reference_reduce(block, mask, f, annotation=True)
        got = downsample_mode_nonzero(block, mask, f)
        assert got.dtype == block.dtype
        np.testing.assert_array_equal(got, expected)
        if mask.all():
            np.testing.assert_array_equal(downsample_mode_nonzero(block, None, f), expected)


@pytest.mark.parametrize("f", [XY, XYZ], ids=["zslices", "isotropic"])
def test_mode_of_every_arrangement_of_a_small_alphabet(f):
    """Every way k children can hold labels from {0, 1, 2, 3} (zslices: 4^4) or {0, 1, 2}
    (isotropic: 3^8), in one block."""
    k = f.x * f.y * f.z
    alphabet = [0, 1, 2, 3] if k == 4 else [0, 1, 2]
    kids = np.array(list(itertools.product(alphabet, repeat=k)), dtype=np.uint16)  # (n, k)
    n = len(kids)
    block = kids.reshape(1, 1, n, f.z, f.y, f.x).transpose(0, 3, 1, 4, 2, 5).reshape(f.z, f.y, n * f.x)
    expected = reference_reduce(block, full(block), f, annotation=True)
    np.testing.assert_array_equal(downsample_mode_nonzero(block, None, f), expected)


@pytest.mark.parametrize("channel_type", ["image", "annotation"])
def test_padded_edge_block_equals_the_reference(channel_type):
    rng = np.random.default_rng(3)
    wanted = child_box(Box(Vec3(500, 250, 7), Vec3(505, 254, 9)), XYZ)  # 10x8x4 children
    have = Box(Vec3(1001, 500, 15), Vec3(1010, 508, 18))  # odd edges on x and z
    shape = tuple(have.shape)[::-1]
    data = (random_labels(rng, "uint32", shape) if channel_type == "annotation"
            else random_values(rng, "uint32", shape))
    block, mask = pad_to_children(data, have, wanted)
    expected = reference_reduce(block, mask, XYZ, annotation=channel_type == "annotation")
    np.testing.assert_array_equal(reduce(block, mask, XYZ, channel_type=channel_type), expected)


@pytest.mark.parametrize("f", [XY, XYZ], ids=["zslices", "isotropic"])
def test_uint8_mean_by_64_bit_words_equals_the_reference(f):
    """Full blocks of uint8 whose x size is a multiple of 8 are summed eight voxels per word."""
    rng = np.random.default_rng(11)
    for width in (8, 16, 24):
        block = rng.integers(0, 256, size=(2 * f.z, 6, width), dtype=np.uint8)
        block[:, :2] = 255  # the largest lane sums
        block[:, 2:4] = rng.integers(254, 256, size=(2 * f.z, 2, width), dtype=np.uint8)
        expected = reference_reduce(block, full(block), f, annotation=False)
        np.testing.assert_array_equal(downsample_mean(block, None, f), expected)


@pytest.mark.parametrize("channel_type, dtype", [("image", "uint8"), ("image", "uint16"), ("image", "int64"),
                                                  ("image", "float32"), ("annotation", "uint32"),
                                                  ("annotation", "uint64")])
def test_reducing_slab_by_slab_equals_the_reference(monkeypatch, channel_type, dtype):
    """Big blocks are reduced a few z planes at a time; here a slab is one plane."""
    monkeypatch.setattr(downsample, "SLAB_BYTES", 1)
    rng = np.random.default_rng(12)
    annotation = channel_type == "annotation"
    for f in (XY, XYZ):
        for _ in range(5):
            shape, mask = random_case(rng, f)
            shape = (shape[0] * 3, shape[1], shape[2] * 8 // f.x)  # several slabs; x a multiple of 8
            mask = np.ones(shape, dtype=bool) if rng.random() < 0.5 else rng.random(shape) < 0.6
            block = random_labels(rng, dtype, shape) if annotation else random_values(rng, dtype, shape)
            expected = reference_reduce(block, mask, f, annotation=annotation)
            np.testing.assert_array_equal(reduce(block, mask, f, channel_type=channel_type), expected)
            if mask.all():
                np.testing.assert_array_equal(reduce(block, None, f, channel_type=channel_type), expected)
