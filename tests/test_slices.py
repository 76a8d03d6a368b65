"""Slice pictures: the window mapping, label colours and plane geometry, pinned exactly."""
from __future__ import annotations

import numpy as np
import pytest

from ndingest.blocks import Box, Vec3
from ndingest.errors import SpecError
from ndingest.slices import label_colours, plane_box, plane_pixels, window_to_uint8

EXTENT = Box(Vec3(1000, 2000, 1000), Vec3(1300, 2200, 1200))


def test_a_0_255_window_is_the_identity():
    values = np.arange(256, dtype=np.uint8).reshape(16, 16)
    np.testing.assert_array_equal(window_to_uint8(values, (0, 255)), values)


def test_window_maps_linearly_rounds_half_up_and_clips():
    values = np.array([[0, 100, 150, 200, 300, 1000]], dtype=np.uint16)
    # (v - 100) * 255 / 200: -127.5 -> 0, 0, 63.75 -> 64, 127.5 -> 128, 255, 1147.5 -> 255
    assert window_to_uint8(values, (100, 300)).tolist() == [[0, 0, 64, 128, 255, 255]]


def test_an_empty_window_thresholds():
    assert window_to_uint8(np.array([[0, 5, 6]]), (5, 5)).tolist() == [[0, 0, 255]]


def test_label_colours_are_stable_distinct_and_zero_is_black():
    labels = np.array([[0, 1, 2, 4_000_000_000, 1]], dtype=np.uint32)
    rgb = label_colours(labels)
    assert rgb.shape == (1, 5, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0].tolist() == [0, 0, 0]
    assert rgb[0, 1].tolist() == rgb[0, 4].tolist()
    assert len({tuple(c) for c in rgb[0, 1:4].tolist()}) == 3
    assert (rgb[0, 1:] >= 48).all()
    np.testing.assert_array_equal(label_colours(labels.astype(np.uint64)), rgb)  # same id, same colour


@pytest.mark.parametrize("plane, index, expected", [
    ("xy", 1100, Box(Vec3(1000, 2000, 1100), Vec3(1300, 2200, 1101))),
    ("xz", 2199, Box(Vec3(1000, 2199, 1000), Vec3(1300, 2200, 1200))),
    ("yz", 1000, Box(Vec3(1000, 2000, 1000), Vec3(1001, 2200, 1200))),
])
def test_plane_box_fixes_one_axis_in_absolute_coordinates(plane, index, expected):
    assert plane_box(EXTENT, plane, index) == expected


@pytest.mark.parametrize("plane, index", [("xy", 999), ("xy", 1200), ("yz", 1300)])
def test_a_plane_outside_the_level_is_a_spec_error_naming_the_range(plane, index):
    with pytest.raises(SpecError, match=r"\[10\d\d, 1[23]00\)"):
        plane_box(EXTENT, plane, index)


def test_plane_pixels_rows_and_columns():
    zyx = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    assert plane_pixels(zyx[:1], "xy").shape == (3, 4)
    np.testing.assert_array_equal(plane_pixels(zyx[:, 1:2, :], "xz"), zyx[:, 1, :])
    np.testing.assert_array_equal(plane_pixels(zyx[:, :, 2:3], "yz"), zyx[:, :, 2])


# --- bounded memory: the same pictures, band by band ---------------------------------------------
def whole_plane_window(pixels: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """The renderer before bands (the oracle): one float64 temporary of the whole plane."""
    lo, hi = float(window[0]), float(window[1])
    values = pixels.astype(np.float64)
    if hi <= lo:
        return np.where(values > lo, 255, 0).astype(np.uint8)
    return np.clip(np.floor((values - lo) * 255.0 / (hi - lo) + 0.5), 0, 255).astype(np.uint8)


def whole_plane_colours(labels: np.ndarray) -> np.ndarray:
    """The label colouring before bands (the oracle): uint64 temporaries of the whole plane."""
    h = labels.astype(np.uint64)
    with np.errstate(over="ignore"):
        h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        h = h ^ (h >> np.uint64(31))
    rgb = np.stack([(h >> np.uint64(s)) & np.uint64(0xFF) for s in (0, 8, 16)], axis=-1)
    rgb = (48 + rgb * np.uint64(208) // np.uint64(256)).astype(np.uint8)
    rgb[labels == 0] = 0
    return rgb


@pytest.mark.parametrize("shape", [(1, 7), (3, 1), (701, 997)])  # 701 rows: bands and a short last band
def test_banded_pictures_equal_the_whole_plane_renderer(shape):
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 1 << 40, shape, dtype=np.uint64) * rng.integers(0, 2, shape, dtype=np.uint64)
    np.testing.assert_array_equal(label_colours(labels), whole_plane_colours(labels))
    image = rng.integers(0, 5000, shape, dtype=np.uint16)
    for window in ((0, 255), (100, 4000), (7, 7)):
        np.testing.assert_array_equal(window_to_uint8(image, window), whole_plane_window(image, window))
    floats = rng.normal(0, 100, shape).astype(np.float32)
    np.testing.assert_array_equal(window_to_uint8(floats, (-50, 50)), whole_plane_window(floats, (-50, 50)))


def test_a_planes_picture_holds_no_whole_plane_temporary():
    import tracemalloc

    labels = np.arange(1024 * 2048, dtype=np.uint64).reshape(1024, 2048)  # 16 MiB of labels
    for render, out_bytes in ((label_colours, 3 * labels.size), (lambda a: window_to_uint8(a, (0, 9e6)), labels.size)):
        tracemalloc.start()
        try:
            picture = render(labels)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert picture.nbytes == out_bytes
        assert peak - out_bytes < labels.nbytes // 2, (render, peak >> 20)  # the bands' temporaries only
