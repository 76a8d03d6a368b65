"""compare_block: equal blocks give None, otherwise how many voxels differ and the first."""
from __future__ import annotations

import numpy as np
import pytest

from ndingest.verify import Mismatch, compare_block


def block(dtype=np.uint8, shape=(4, 5, 6), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 200, size=shape).astype(dtype)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.uint64, np.float32])
def test_equal_arrays_give_none(dtype):
    assert compare_block(block(dtype), block(dtype)) is None


def test_equal_data_in_another_memory_layout_gives_none():
    a = block()
    assert compare_block(a, np.asfortranarray(a)) is None


def test_all_zero_blocks_are_equal():
    assert compare_block(np.zeros((2, 2, 2), np.uint32), np.zeros((2, 2, 2), np.uint32)) is None


@pytest.mark.parametrize("zyx", [(0, 0, 0), (2, 3, 4), (3, 4, 5)])
def test_one_changed_voxel_is_counted_and_located(zyx):
    expected = block()
    actual = expected.copy()
    actual[zyx] += 1
    assert compare_block(expected, actual) == Mismatch(voxels=1, first_zyx=zyx)


def test_first_differing_voxel_is_first_in_zyx_c_order():
    expected = block(np.uint16)
    actual = expected.copy()
    for zyx in [(3, 0, 0), (1, 4, 5), (1, 2, 5), (2, 0, 0)]:
        actual[zyx] += 7
    mismatch = compare_block(expected, actual)
    assert mismatch == Mismatch(voxels=4, first_zyx=(1, 2, 5))
    assert all(isinstance(i, int) for i in mismatch.first_zyx)
    assert isinstance(mismatch.voxels, int)


def test_every_voxel_differing_is_counted():
    expected = block()
    assert compare_block(expected, expected + 1).voxels == expected.size


@pytest.mark.parametrize("other_shape", [(4, 5, 7), (4, 6, 5), (5, 4, 6), (1, 4, 5, 6)])
def test_shape_mismatch_is_a_mismatch(other_shape):
    mismatch = compare_block(block(), np.zeros(other_shape, np.uint8))
    assert isinstance(mismatch, Mismatch)
    assert mismatch.voxels > 0


def test_shape_mismatch_of_transposed_data_is_a_mismatch():
    a = block()
    assert compare_block(a, a.transpose(2, 1, 0)) is not None


def test_float_nan_equals_nan():
    expected = block(np.float32)
    expected[1, 2, 3] = np.nan
    expected[0, 0, 0] = np.nan
    assert compare_block(expected, expected.copy()) is None


@pytest.mark.parametrize("where", ["expected", "actual"])
def test_nan_against_a_number_differs(where):
    expected = block(np.float32)
    actual = expected.copy()
    (expected if where == "expected" else actual)[2, 1, 0] = np.nan
    assert compare_block(expected, actual) == Mismatch(voxels=1, first_zyx=(2, 1, 0))


def test_float_values_differing_slightly_are_a_mismatch():
    expected = block(np.float32)
    actual = expected.copy()
    actual[0, 1, 2] = np.nextafter(actual[0, 1, 2], np.float32(np.inf))
    assert compare_block(expected, actual) == Mismatch(voxels=1, first_zyx=(0, 1, 2))


def test_signed_changes_that_cancel_out_are_still_found():
    expected = np.zeros((2, 2, 2), np.float32)
    actual = expected.copy()
    actual[0, 0, 0], actual[1, 1, 1] = 5.0, -5.0  # sums agree, voxels do not
    assert compare_block(expected, actual) == Mismatch(voxels=2, first_zyx=(0, 0, 0))
