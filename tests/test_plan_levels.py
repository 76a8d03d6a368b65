"""How many levels a spec may ask for (plan.resolve_levels), pure: no source, no store."""
from __future__ import annotations

import pytest

from ndingest.blocks import Box, Vec3
from ndingest.downsample import level_extent
from ndingest.errors import SpecError
from ndingest.plan import max_levels, resolve_levels


def levels(n, *, offset=(0, 0, 0), size=(70, 60, 10), option="zslices"):
    return resolve_levels(n, extent=Box.from_shape(Vec3(*offset), Vec3(*size)), scaling_option=option,
                          voxel_resolution_nm=(4.0, 4.0, 40.0))


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
