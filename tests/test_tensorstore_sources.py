"""zarr (v2, v3, OME-Zarr), N5 and neuroglancer precomputed sources, read through tensorstore.

Files are written by each format's own library (zarr for zarr, tensorstore for N5 and
precomputed), and what a source reads is compared with what that library reads.
"""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import tensorstore as ts
import tifffile
import zarr

from ndingest.blocks import Box, Vec3
from ndingest.chunked import ReaderProcess, TensorstoreReader, tensorstore_reader
from ndingest.errors import SourceError, SpecError
from ndingest.inspection import summarize
from ndingest.plan import _stamp
from ndingest.sources import TensorstoreSource, open_source
from ndingest.spec import _resolve_source


def write_zarr(path: Path, data: np.ndarray, *, zarr_format: int, **kwargs) -> Path:
    chunks = kwargs.pop("chunks", tuple(min(s, 16) for s in data.shape))
    array = zarr.create_array(str(path), shape=data.shape, dtype=data.dtype, chunks=chunks,
                              zarr_format=zarr_format, **kwargs)
    array[...] = data
    return path


def write_n5(path: Path, data_zyx: np.ndarray) -> Path:
    """An N5 as Java tools write it: `dimensions` fastest first, [x, y, z]."""
    store = ts.open({"driver": "n5", "kvstore": {"driver": "file", "path": str(path)},
                     "metadata": {"dimensions": list(data_zyx.shape[::-1]), "blockSize": [16, 16, 8],
                                  "dataType": data_zyx.dtype.name, "compression": {"type": "gzip"}}},
                    create=True).result()
    store[...] = data_zyx.transpose(2, 1, 0)
    return path


def read_n5(path: Path) -> np.ndarray:
    """What tensorstore reads from an N5: its `dimensions` order, [x, y, z] here."""
    return ts.open({"driver": "n5", "kvstore": {"driver": "file", "path": str(path)}}).result().read().result()


def write_precomputed(path: Path, data_zyx: np.ndarray, voxel_offset=(0, 0, 0), num_channels: int = 1) -> Path:
    store = ts.open({"driver": "neuroglancer_precomputed", "kvstore": {"driver": "file", "path": str(path)},
                     "multiscale_metadata": {"type": "image", "data_type": data_zyx.dtype.name,
                                             "num_channels": num_channels},
                     "scale_metadata": {"size": list(data_zyx.shape[::-1]), "voxel_offset": list(voxel_offset),
                                        "resolution": [4, 4, 40], "encoding": "raw", "chunk_size": [16, 16, 8]}},
                    create=True).result()
    for c in range(num_channels):
        store[..., c] = data_zyx.transpose(2, 1, 0)
    return path


def read_precomputed(path: Path) -> np.ndarray:
    """What tensorstore reads from a precomputed volume, as (z, y, x)."""
    store = ts.open({"driver": "neuroglancer_precomputed", "kvstore": {"driver": "file", "path": str(path)}}).result()
    return store[..., 0].read().result().transpose(2, 1, 0)


def write_ome_zarr(path: Path, data_zyx: np.ndarray, *, zarr_format: int = 2, channels: int = 1) -> Path:
    """An OME-Zarr group (c, z, y, x) with two levels, "0" full size and "1" halved in x and y."""
    group = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    level0 = np.stack([data_zyx] * channels)
    write_zarr(path / "0", level0, zarr_format=zarr_format)
    write_zarr(path / "1", np.ascontiguousarray(level0[:, :, ::2, ::2]), zarr_format=zarr_format)
    multiscales = [{
        "version": "0.4", "name": "vol",
        "axes": [{"name": "c", "type": "channel"}, {"name": "z", "type": "space", "unit": "nanometer"},
                 {"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
        "datasets": [{"path": p, "coordinateTransformations": [{"type": "scale", "scale": [1, 40, 4 * f, 4 * f]}]}
                     for p, f in (("0", 1), ("1", 2))],
    }]
    if zarr_format == 2:
        (path / ".zattrs").write_text(json.dumps({"multiscales": multiscales}))
    else:
        group.attrs["ome"] = {"version": "0.5", "multiscales": multiscales}
    return path


@pytest.fixture(scope="module")
def volume() -> np.ndarray:
    return np.random.default_rng(11).integers(1, 65535, size=(12, 30, 35), dtype=np.uint16)  # (z, y, x)


BOX = Box(Vec3(3, 4, 2), Vec3(33, 21, 11))  # x, y, z, inside (35, 30, 12)


def expected(data_zyx: np.ndarray, box: Box = BOX) -> np.ndarray:
    return data_zyx[tuple(box.to_zyx_slices())]


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_zarr_reads_a_box_as_zarr_does(tmp_path, volume, zarr_format):
    path = write_zarr(tmp_path / "v.zarr", volume, zarr_format=zarr_format)
    source = open_source(str(path))
    assert isinstance(source, TensorstoreSource) and source.location.format == f"zarr{zarr_format}"
    assert source.shape_tzyx == (1, 12, 30, 35) and source.dtype == np.uint16 and source.axes == "zyx"
    np.testing.assert_array_equal(source.read(BOX), zarr.open_array(str(path))[...][tuple(BOX.to_zyx_slices())])
    assert source.files == [path / (".zarray" if zarr_format == 2 else "zarr.json")]


@pytest.mark.parametrize("scheme, zarr_format", [("zarr", 2), ("zarr", 3), ("zarr2", 2), ("zarr3", 3), ("file", 3)])
def test_zarr_urls_name_the_same_array(tmp_path, volume, scheme, zarr_format):
    path = write_zarr(tmp_path / "v.zarr", volume, zarr_format=zarr_format)
    url = f"{scheme}://file://{path}" if scheme != "file" else f"file://{path}"
    source = open_source(url)
    assert source.description == url
    np.testing.assert_array_equal(source.read(BOX), expected(volume))


def test_a_zarr_url_of_the_other_version_is_refused(tmp_path, volume):
    path = write_zarr(tmp_path / "v.zarr", volume, zarr_format=3)
    with pytest.raises(SourceError, match=r"not a zarr v2 folder \(no \.zarray or \.zgroup\)"):
        open_source(f"zarr2://file://{path}")


def test_n5_reads_its_dimensions_fastest_first(tmp_path, volume):
    path = write_n5(tmp_path / "v.n5", volume)
    assert json.loads((path / "attributes.json").read_text())["dimensions"] == [35, 30, 12]
    assert read_n5(path).shape == (35, 30, 12)  # tensorstore keeps N5's order: x, y, z
    source = open_source(str(path))
    assert source.shape_tzyx == (1, 12, 30, 35) and source.axes == "zyx"
    np.testing.assert_array_equal(source.read(BOX), expected(read_n5(path).transpose(2, 1, 0)))
    assert source.files == [path / "attributes.json"]


def test_n5_axes_attribute_names_the_order(tmp_path, volume):
    path = write_n5(tmp_path / "v.n5", volume)
    attrs = json.loads((path / "attributes.json").read_text())
    (path / "attributes.json").write_text(json.dumps({**attrs, "axes": ["x", "y", "z"]}))
    source = open_source(f"n5://file://{path}")
    assert source.axes == "zyx"
    np.testing.assert_array_equal(source.read(BOX), expected(volume))
    with pytest.raises(SourceError, match="axes = 'xyz' but its metadata names the axes 'zyx'"):
        open_source(str(path), axes="xyz")


def test_precomputed_reads_from_its_voxel_offset(tmp_path, volume):
    path = write_precomputed(tmp_path / "pc", volume, voxel_offset=(100, 200, 7))
    source = open_source(f"precomputed://file://{path}")
    assert source.shape_tzyx == (1, 12, 30, 35) and source.axes == "xyz"
    np.testing.assert_array_equal(source.read(BOX), expected(read_precomputed(path)))
    assert source.read(BOX).flags.c_contiguous  # read x-fastest, then a transposed view
    assert open_source(str(path)).files == [path / "info"]


def test_precomputed_with_two_channels_or_other_axes_is_refused(tmp_path, volume):
    two = write_precomputed(tmp_path / "two", volume, num_channels=2)
    with pytest.raises(SourceError, match="num_channels = 2; only single-channel"):
        open_source(str(two))
    one = write_precomputed(tmp_path / "one", volume)
    with pytest.raises(SourceError, match="read as x, y, z; axes = 'zyx' does not apply"):
        open_source(str(one), axes="zyx")


def test_time_series_zarr_has_a_t_axis(tmp_path, volume):
    series = np.stack([volume, volume[::-1]])
    source = open_source(str(write_zarr(tmp_path / "s.zarr", series, zarr_format=3)))
    assert source.shape_tzyx == (2, 12, 30, 35) and source.axes == "tzyx"
    np.testing.assert_array_equal(source.read(BOX, t=1), expected(series[1]))


def test_declared_axes_transpose_a_zarr_once(tmp_path, volume):
    path = write_zarr(tmp_path / "xyz.zarr", np.ascontiguousarray(volume.transpose(2, 1, 0)), zarr_format=2)
    source = open_source(str(path), axes="xyz")
    assert source.shape_tzyx == (1, 12, 30, 35)
    np.testing.assert_array_equal(source.read(BOX), expected(volume))


def test_zarr3_dimension_names_set_the_axes(tmp_path, volume):
    data = np.ascontiguousarray(volume.transpose(2, 1, 0))
    path = write_zarr(tmp_path / "xyz.zarr", data, zarr_format=3, dimension_names=["x", "y", "z"])
    np.testing.assert_array_equal(open_source(str(path)).read(BOX), expected(volume))


def test_wrong_number_of_axes_is_refused(tmp_path, volume):
    path = write_zarr(tmp_path / "v.zarr", volume, zarr_format=2)
    with pytest.raises(SourceError, match=r"array has 3 axes \(12, 30, 35\), but axes = 'tzyx'"):
        open_source(str(path), axes="tzyx")


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_ome_zarr_group_is_read_at_its_first_dataset(tmp_path, volume, zarr_format):
    path = write_ome_zarr(tmp_path / "ome.zarr", volume, zarr_format=zarr_format)
    source = open_source(str(path))
    assert source.shape_tzyx == (1, 12, 30, 35) and source.axes == "zyx"  # c of size 1 dropped
    np.testing.assert_array_equal(source.read(BOX), expected(zarr.open_array(str(path / "0"))[0]))
    meta = ".zarray" if zarr_format == 2 else "zarr.json"
    assert path / "0" / meta in source.files and len(source.files) >= 2


def test_ome_zarr_with_several_channels_is_refused(tmp_path, volume):
    path = write_ome_zarr(tmp_path / "ome.zarr", volume, channels=3)
    with pytest.raises(SourceError, match=r"ome.zarr/0: has 3 channels"):
        open_source(str(path))


def test_a_zarr_group_without_multiscales_lists_its_arrays(tmp_path, volume):
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w", zarr_format=2)
    write_zarr(tmp_path / "g.zarr/raw", volume, zarr_format=2)
    assert group is not None
    with pytest.raises(SourceError, match="a zarr group without OME-Zarr multiscales; name one of its arrays: raw"):
        open_source(str(tmp_path / "g.zarr"))


def test_a_folder_of_no_known_format_is_refused(tmp_path):
    (tmp_path / "plain").mkdir()
    with pytest.raises(SourceError, match=r"plain: not a zarr, N5 or neuroglancer precomputed folder"):
        open_source(str(tmp_path / "plain"))
    assert "glob" not in str(_refusal(tmp_path / "plain"))  # no TIFF pages there: no glob to suggest


def _refusal(folder) -> SourceError:
    with pytest.raises(SourceError) as info:
        open_source(str(folder))
    return info.value


def test_a_folder_of_tiff_pages_suggests_the_glob(tmp_path):
    (tmp_path / "pages").mkdir()
    tifffile.imwrite(tmp_path / "pages/s1.TIF", np.zeros((4, 5), np.uint8))
    assert f'a glob such as "{tmp_path / "pages"}/*.TIF"' in str(_refusal(tmp_path / "pages"))


def test_a_huge_array_without_a_single_chunk_is_refused_at_open(tmp_path):
    path = tmp_path / "empty.zarr"
    zarr.create_array(str(path), shape=(10_000, 10_000, 10_000), dtype="uint8", chunks=(64, 64, 64), zarr_format=2)
    with pytest.raises(SourceError, match=r"empty.zarr: holds no data for its 1,000,000,000,000 voxels"):
        open_source(str(path))


def test_a_small_all_zero_array_has_no_chunk_and_is_read(tmp_path):
    path = write_zarr(tmp_path / "zeros.zarr", np.zeros((12, 30, 35), np.uint8), zarr_format=2)
    assert sorted(p.name for p in path.iterdir()) == [".zarray", ".zattrs"]  # zarr skips fill-value chunks
    assert not open_source(str(path)).read(BOX).any()


def test_a_sparse_array_reads_its_fill_value_where_chunks_are_missing(tmp_path):
    array = zarr.create_array(str(tmp_path / "s.zarr"), shape=(8, 32, 32), dtype="uint8", chunks=(8, 16, 16),
                              zarr_format=3, fill_value=9)
    array[:, :16, :16] = 1
    block = open_source(str(tmp_path / "s.zarr")).read(Box(Vec3(0, 0, 0), Vec3(32, 32, 8)))
    assert (block[:, :16, :16] == 1).all() and (block[:, 16:, :] == 9).all()


@pytest.mark.parametrize("meta", [".zarray", "zarr.json", "attributes.json", "info"])
def test_corrupt_metadata_is_a_source_error_naming_it(tmp_path, volume, meta):
    path = tmp_path / "v"
    {".zarray": lambda: write_zarr(path, volume, zarr_format=2), "zarr.json": lambda: write_zarr(path, volume, zarr_format=3),
     "attributes.json": lambda: write_n5(path, volume), "info": lambda: write_precomputed(path, volume)}[meta]()
    (path / meta).write_text('{"shape": [1')
    with pytest.raises(SourceError, match=meta.replace(".", r"\.")):
        open_source(str(path))


@pytest.mark.parametrize("url, message", [
    ("s3://bucket/v.zarr", "unknown source URL scheme s3://"),
    ("zarr://gs://bucket/v.zarr", "only local file:// URLs are read"),
    ("n5://file://relative/v.n5", "needs an absolute path"),
    ("zarr://file:///no/such/v.zarr", "source folder not found"),
])
def test_bad_urls_are_refused(url, message):
    with pytest.raises(SourceError, match=message):
        open_source(url)


def test_sources_pickle_and_read_in_this_process_or_a_reader_process(tmp_path, volume):
    source = open_source(str(write_n5(tmp_path / "v.n5", volume)))
    copy = pickle.loads(pickle.dumps(source))
    np.testing.assert_array_equal(copy.read(BOX), expected(volume))
    assert isinstance(tensorstore_reader(), ReaderProcess)  # pytest's process is no forked worker
    local = TensorstoreReader()  # what Luigi's forked workers use
    index = (slice(2, 11), slice(4, 21), slice(3, 33))
    np.testing.assert_array_equal(local.read(source.location, index, order="C", what="a box"), expected(volume))
    assert local.describe(source.location) == tensorstore_reader().describe(source.location)


def test_a_box_outside_the_source_is_refused(tmp_path, volume):
    source = open_source(str(write_zarr(tmp_path / "v.zarr", volume, zarr_format=2)))
    with pytest.raises(SourceError, match="lies outside the source"):
        source.read(Box(Vec3(0, 0, 0), Vec3(36, 30, 12)))


def test_summary_of_a_precomputed_source(tmp_path, volume):
    summary = summarize(open_source(str(write_precomputed(tmp_path / "pc", volume, voxel_offset=(3, 2, 1)))))
    assert (summary.x_size, summary.y_size, summary.z_size) == (35, 30, 12)
    assert summary.window_range == (int(volume.min()), int(volume.max())) and summary.axes == "xyz"


def test_fingerprint_and_plan_stamp_follow_the_metadata_files(tmp_path, volume):
    path = write_ome_zarr(tmp_path / "ome.zarr", volume, zarr_format=3)
    source = open_source(str(path))
    assert [f["path"] for f in source.fingerprint()] == [str(path / "zarr.json"), str(path / "0/zarr.json")]
    before = _stamp(str(path))
    os.utime(path / "0/zarr.json", ns=(1, 1))
    assert _stamp(str(path)) != before
    url = f"zarr://file://{path}"
    assert _stamp(url) == (url, *_stamp(str(path))[1:])


def test_spec_keeps_urls_and_resolves_relative_folders(tmp_path):
    spec = tmp_path / "spec.toml"
    assert _resolve_source("zarr://file:///data/v.zarr", "channels.image.source", spec) == "zarr://file:///data/v.zarr"
    assert _resolve_source("vols/v.n5", "channels.image.source", spec) == str(tmp_path / "vols/v.n5")
    with pytest.raises(SpecError, match="a file:// URL needs an absolute path"):
        _resolve_source("precomputed://file://vols/pc", "channels.image.source", spec)
