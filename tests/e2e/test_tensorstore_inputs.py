"""zarr (v2, v3, OME-Zarr), N5 and precomputed inputs end to end, through the CLI.

The stored channel is read with tensorstore's precomputed driver and compared with what
the source format's own library reads (zarr for zarr, tensorstore for N5 and precomputed),
never with ndingest's readers.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import zarr

from conftest import run_cli, write_spec
from test_formats import read_volume
from test_pyramid import read_level, reference_level
from test_tensorstore_sources import read_n5, read_precomputed, write_n5, write_ome_zarr, write_precomputed, write_zarr


@pytest.fixture(scope="module")
def volume() -> np.ndarray:
    return np.random.default_rng(8).integers(1, 65535, size=(40, 60, 70), dtype=np.uint16)  # (z, y, x)


def inspect_json(source: str) -> dict:
    result = run_cli("inspect", source, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def ingest(spec, *args: str) -> None:
    result = run_cli("ingest", str(spec), *args)
    assert result.returncode == 0, result.stderr


def test_zarr_v2_image_and_v3_annotation_ingest_bit_exact(tmp_path, volume):
    labels = (volume % 5).astype(np.uint32)
    write_zarr(tmp_path / "image.zarr", volume, zarr_format=2, chunks=(16, 32, 32))
    write_zarr(tmp_path / "labels.zarr", labels, zarr_format=3, chunks=(16, 32, 32))
    spec = write_spec(tmp_path, image="image.zarr", annotation="labels.zarr", offset=(3, 5, 7))
    ingest(spec)
    # the CLI spot-checks image's blocks, then forks workers that write annotation again:
    # tensorstore used by the CLI itself would abort them ("fork() use detected")
    ingest(spec, "--restart", "annotation", "--workers", "2")
    np.testing.assert_array_equal(read_volume(tmp_path, "image"), zarr.open_array(str(tmp_path / "image.zarr"))[...])
    np.testing.assert_array_equal(read_volume(tmp_path, "annotation"),
                                  zarr.open_array(str(tmp_path / "labels.zarr"))[...])
    for path, dtype, top in (("image.zarr", "uint16", int(volume.max())), ("labels.zarr", "uint32", 4)):
        table = inspect_json(str(tmp_path / path))
        assert (table["x_size"], table["y_size"], table["z_size"]) == (70, 60, 40)
        assert table["datatype"] == dtype and table["window_range"][1] == top and table["axes"] == "zyx"
    assert inspect_json(f"zarr://file://{tmp_path / 'labels.zarr'}")["time_range"] == [0, 0]


def test_n5_is_stored_as_the_transpose_of_what_tensorstore_reads(tmp_path, volume):
    source = write_n5(tmp_path / "v.n5", volume)
    assert read_n5(source).shape == (70, 60, 40)  # N5 dimensions [x, y, z], kept by tensorstore
    # two worker processes, forked after the CLI read the source: each opens its own handle
    ingest(write_spec(tmp_path, image="v.n5", ingest="block_chunks = [1, 1, 1]\nblocks_per_task = 2"),
           "--workers", "2")
    writers = {json.loads(m.read_text())["pid"] for m in (tmp_path / "store/_markers").rglob("written/**/*.json")}
    assert len(writers) > 1
    np.testing.assert_array_equal(read_volume(tmp_path, "image"), read_n5(source).transpose(2, 1, 0))
    table = inspect_json(f"n5://file://{source}")
    assert (table["x_size"], table["y_size"], table["z_size"], table["axes"]) == (70, 60, 40, "zyx")


def test_precomputed_url_with_a_voxel_offset(tmp_path, volume):
    source = write_precomputed(tmp_path / "pc", volume, voxel_offset=(64, 10, 3))
    url = f"precomputed://file://{source}"
    ingest(write_spec(tmp_path, image=url, offset=(0, 0, 0)))
    np.testing.assert_array_equal(read_volume(tmp_path, "image"), read_precomputed(source))
    table = inspect_json(url)
    assert (table["x_size"], table["y_size"], table["z_size"], table["axes"]) == (70, 60, 40, "xyz")


def test_zarr_time_series_stores_one_volume_per_time_point(tmp_path, volume):
    series = np.stack([volume[:, :30, :35], volume[:, 30:, 35:]])  # (t, z, y, x)
    source = write_zarr(tmp_path / "series.zarr", series, zarr_format=3, chunks=(1, 16, 16, 16))
    table = inspect_json(str(source))
    assert table["time_range"] == [0, 1] and table["axes"] == "tzyx" and table["x_size"] == 35
    ingest(write_spec(tmp_path, image="series.zarr", image_type="timeseries"))
    stored = zarr.open_array(str(source))
    for t in (0, 1):
        np.testing.assert_array_equal(read_volume(tmp_path, f"image/t{t}"), stored[t])


def test_xyz_ordered_zarr_is_transposed_once(tmp_path, volume):
    source = write_zarr(tmp_path / "xyz.zarr", np.ascontiguousarray(volume.transpose(2, 1, 0)), zarr_format=2)
    ingest(write_spec(tmp_path, image="xyz.zarr", image_extra='axes = "xyz"'))
    np.testing.assert_array_equal(read_volume(tmp_path, "image"), zarr.open_array(str(source))[...].transpose(2, 1, 0))


def test_ome_zarr_group_is_ingested_at_its_highest_resolution(tmp_path, volume):
    source = write_ome_zarr(tmp_path / "ome.zarr", volume, zarr_format=2)
    ingest(write_spec(tmp_path, image="ome.zarr"))
    np.testing.assert_array_equal(read_volume(tmp_path, "image"), zarr.open_array(str(source / "0"))[0])
    table = inspect_json(str(source))
    assert (table["x_size"], table["y_size"], table["z_size"], table["axes"]) == (70, 60, 40, "zyx")


PYRAMID_SOURCES = {  # format: (write the (z, y, x) array, read it back with the format's own library)
    "zarr3": (lambda path, data: write_zarr(path, data, zarr_format=3, chunks=(4, 8, 8)),
              lambda path: zarr.open_array(str(path))[...]),
    "n5": (write_n5, lambda path: np.ascontiguousarray(read_n5(path).T)),
    "precomputed": (lambda path, data: write_precomputed(path, data, voxel_offset=(11, 0, 2)), read_precomputed),
}


@pytest.mark.parametrize("fmt, channel_type", [("zarr3", "image"), ("n5", "annotation"), ("precomputed", "image")])
def test_pyramid_from_a_chunked_source_equals_the_reference(tmp_path, fmt, channel_type):
    """The same pyramid check as HDF5's: each level voxel by voxel from the one below,
    level 1 from what the source's own library reads."""
    rng = np.random.default_rng(5)
    data = (rng.integers(0, 256, size=(9, 23, 29), dtype=np.uint8) if channel_type == "image"
            else rng.integers(0, 4, size=(9, 23, 29)).astype(np.uint32) * 1_000_003)
    write, read = PYRAMID_SOURCES[fmt]
    source = write(tmp_path / f"src.{fmt}", data)
    spec = write_spec(tmp_path, image=f"src.{fmt}", dataset="pyr", project="pyr", offset=(3, 5, 7),
                      resolution=(4.0, 4.0, 4.0), image_type=channel_type)
    spec.write_text(spec.read_text().replace("scaling_levels = 0", "scaling_levels = 2"))
    ingest(spec)
    below, below_begin = read(source), [3, 5, 7]
    np.testing.assert_array_equal(read_level(tmp_path, "image", 0)[0], below)
    for level in (1, 2):
        stored, begin, shape = read_level(tmp_path, "image", level)
        np.testing.assert_array_equal(stored, reference_level(below, below_begin, begin, shape, 1,
                                                              channel_type == "annotation"),
                                      err_msg=f"level {level}")
        below, below_begin = stored, begin


def test_a_changed_zarr_stops_the_rerun_naming_its_metadata(tmp_path, volume):
    source = write_zarr(tmp_path / "v.zarr", volume, zarr_format=2)
    spec = write_spec(tmp_path, image="v.zarr")
    ingest(spec)
    os.utime(source / ".zarray", ns=(1, 1))
    result = run_cli("ingest", str(spec))
    assert result.returncode == 3 and ".zarray" in result.stderr, result.stderr


@pytest.mark.parametrize("make, code, message", [
    (lambda p: zarr.create_array(str(p / "huge.zarr"), shape=(10**4, 10**4, 10**4), dtype="uint8",
                                 chunks=(64, 64, 64), zarr_format=2), 3, "holds no data for its 1,000,000,000,000 voxels"),
    (lambda p: (p / "huge.zarr").mkdir(), 3, "not a zarr, N5 or neuroglancer precomputed folder"),
    (lambda p: write_zarr(p / "huge.zarr", np.ones((4, 4, 4), np.int16), zarr_format=2), 3, "int16 is not one"),
])
def test_bad_arrays_fail_with_one_line(tmp_path, make, code, message):
    make(tmp_path)
    result = run_cli("ingest", str(write_spec(tmp_path, image="huge.zarr")))
    assert result.returncode == code and message in result.stderr, result.stderr
    assert result.stderr.startswith("ndingest: error:") and result.stderr.count("\n") == 1
    if code == 3 and "int16" not in message:
        assert run_cli("inspect", str(tmp_path / "huge.zarr")).returncode == 3


def test_a_relative_file_url_in_a_spec_is_a_spec_error(tmp_path):
    result = run_cli("ingest", str(write_spec(tmp_path, image="zarr://file://data/v.zarr")))
    assert result.returncode == 2 and "a file:// URL needs an absolute path" in result.stderr, result.stderr
