"""`ndingest slice` through the CLI, pixel for pixel against the source."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import read_cutout, run_cli, write_h5, write_spec
from ndingest.sample import ANNOTATION_FILE, IMAGE_FILE
from ndingest.slices import label_colours, window_to_uint8


@pytest.fixture(scope="module")
def store(tmp_path_factory, tutorial_data):
    folder = tmp_path_factory.mktemp("slices")
    spec = write_spec(folder, image=tutorial_data / IMAGE_FILE, annotation=tutorial_data / ANNOTATION_FILE,
                      extra_dataset="")
    spec.write_text(spec.read_text().replace("scaling_levels = 0", "scaling_levels = 1"))
    assert run_cli("ingest", str(spec)).returncode == 0
    return folder, spec


@pytest.mark.parametrize("plane, index, cut", [
    ("xy", 1100, lambda a: a[100]),
    ("xz", 2150, lambda a: a[:, 150, :]),
    ("yz", 1001, lambda a: a[:, :, 1]),
])
def test_image_slices_are_the_source_through_the_window(store, tutorial_data, plane, index, cut):
    folder, spec = store
    out = folder / f"image_{plane}.png"
    result = run_cli("slice", str(spec), "image", plane, str(index), "-o", str(out))
    assert result.returncode == 0, result.stderr
    picture = np.asarray(Image.open(out))
    expected = window_to_uint8(cut(read_cutout(tutorial_data / IMAGE_FILE)), (0, 254))
    np.testing.assert_array_equal(picture, expected)


def test_annotation_slice_colours_each_label(store, tutorial_data):
    folder, spec = store
    out = folder / "labels.png"
    assert run_cli("slice", str(spec), "annotation", "xy", "1100", "-o", str(out)).returncode == 0
    picture = np.asarray(Image.open(out))
    np.testing.assert_array_equal(picture, label_colours(read_cutout(tutorial_data / ANNOTATION_FILE)[100]))


def test_level_1_slice_is_the_downsampled_plane(store):
    folder, spec = store
    out = folder / "r1.png"
    assert run_cli("slice", str(spec), "image", "xy", "1100", "--res", "1", "-o", str(out)).returncode == 0
    picture = np.asarray(Image.open(out))
    assert picture.shape == (100, 150)  # y 1000..1100, x 500..650 at level 1


def test_bad_slice_arguments_exit_2_with_one_line(store):
    folder, spec = store
    for args, needle in ((["image", "xy", "5"], "[1000, 1200)"), (["image", "xy", "1100", "--res", "4"], "0..1"),
                         (["nope", "xy", "1100"], "nope")):
        result = run_cli("slice", str(spec), *args)
        assert result.returncode == 2 and needle in result.stderr and "Traceback" not in result.stderr


def test_slice_t_picks_a_time_point_of_a_time_series_and_checks_its_range(tmp_path):
    series = np.random.default_rng(5).integers(10, 200, (2, 20, 60, 70), dtype=np.uint8)  # (t, z, y, x)
    source = write_h5(tmp_path / "series.h5", series, "series/CUTOUT")
    spec = write_spec(tmp_path, image=source, image_type="timeseries")
    assert run_cli("ingest", str(spec)).returncode == 0
    window = (int(series.min()), int(series.max()))
    for t in (0, 1):
        out = tmp_path / f"t{t}.png"
        result = run_cli("slice", str(spec), "image", "xy", "1005", "--t", str(t), "-o", str(out))
        assert result.returncode == 0, result.stderr
        np.testing.assert_array_equal(np.asarray(Image.open(out)), window_to_uint8(series[t, 5], window))
    for t in ("2", "-1"):
        result = run_cli("slice", str(spec), "image", "xy", "1005", "--t", t)
        assert result.returncode == 2 and f"--t {t}" in result.stderr and "0..1" in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_slice_t_of_a_channel_that_is_not_a_time_series_is_refused(store):
    folder, spec = store
    result = run_cli("slice", str(spec), "image", "xy", "1100", "--t", "1")
    assert result.returncode == 2 and "--t 1" in result.stderr and "0..0" in result.stderr, result.stderr
