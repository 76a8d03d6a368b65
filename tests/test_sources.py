"""Sources on small generated HDF5 and TIFF files: layout discovery, axes, boxes, pickling."""
from __future__ import annotations

import functools
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile

from ndingest.blocks import Box, Vec3
from ndingest.errors import SourceError
from ndingest.sources import HDF5Source, TiffSource, open_source, window_range

SHAPE_ZYX = (6, 10, 14)


def random_zyx(shape=SHAPE_ZYX, dtype=np.uint16, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 60000, size=shape).astype(dtype)


def write_cutout(path: Path, data: np.ndarray, channel: str = "image") -> Path:
    """ndstore's HDF5 cutout layout: GROUP/CUTOUT in (z, y, x), CHANNELTYPE, DATATYPE."""
    with h5py.File(path, "w") as f:
        group = f.create_group(channel)
        group.create_dataset("CUTOUT", data=data, chunks=True, compression="gzip")
        group.create_dataset("CHANNELTYPE", data=channel)
        group.create_dataset("DATATYPE", data=data.dtype.name)
    return path


def write_h5(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    with h5py.File(path, "w") as f:
        for name, data in arrays.items():
            f.create_dataset(name, data=data)
    return path


def write_stack(folder: Path, data: np.ndarray) -> str:
    folder.mkdir()
    for z, plane in enumerate(data):
        tifffile.imwrite(folder / f"z{z:04d}.tif", plane)
    return str(folder / "*.tif")


def make_source(kind: str, tmp_path: Path, data: np.ndarray) -> str:
    if kind == "hdf5":
        return str(write_cutout(tmp_path / "cutout.h5", data))
    if kind == "tiff-stack":
        return write_stack(tmp_path / "pages", data)
    path = tmp_path / "volume.tif"
    if kind == "tiff-pagewise":  # one series per page, as a writer appending page by page leaves it
        for plane in data:
            tifffile.imwrite(path, plane, append=True)
    elif kind == "tiff-strips":  # uncompressed, strips of 4 rows: rows are read from several strips
        tifffile.imwrite(path, data, rowsperstrip=4)
    elif kind == "tiff-imagej":
        tifffile.imwrite(path, data, imagej=True, metadata={"axes": "ZYX"})
    else:
        tifffile.imwrite(path, data)
    return str(path)


KINDS = ["hdf5", "tiff-stack", "tiff-multipage", "tiff-pagewise", "tiff-strips", "tiff-imagej"]


@pytest.fixture(params=KINDS)
def source_and_data(request, tmp_path):
    data = random_zyx(seed=KINDS.index(request.param))
    return open_source(make_source(request.param, tmp_path, data)), data


def box(b, e) -> Box:
    return Box(Vec3(*b), Vec3(*e))


def full_box(data: np.ndarray) -> Box:
    z, y, x = data.shape
    return box((0, 0, 0), (x, y, z))


def source_error(tmp_path_source: str, **kwargs) -> SourceError:
    with pytest.raises(SourceError) as info:
        open_source(tmp_path_source, **kwargs)
    assert info.value.exit_code == 3
    return info.value


# --- every format ---------------------------------------------------------------------

def test_source_reports_shape_dtype_and_one_time_point(source_and_data):
    source, data = source_and_data
    assert source.shape_tzyx == (1, *data.shape)
    assert source.size_xyz == Vec3(data.shape[2], data.shape[1], data.shape[0])
    assert source.dtype == data.dtype
    assert source.time_points == 1
    assert source.axes == "zyx"


def test_reading_the_whole_extent_returns_the_data(source_and_data):
    source, data = source_and_data
    np.testing.assert_array_equal(source.read(source.extent), data)


@pytest.mark.parametrize("b, e", [((0, 0, 0), (1, 1, 1)), ((3, 2, 1), (11, 9, 5)), ((13, 9, 5), (14, 10, 6)),
                                  ((0, 4, 2), (14, 5, 3))])
def test_reading_a_box_returns_exactly_that_slice(source_and_data, b, e):
    source, data = source_and_data
    (x0, y0, z0), (x1, y1, z1) = b, e
    out = source.read(box(b, e))
    assert out.dtype == data.dtype
    np.testing.assert_array_equal(out, data[z0:z1, y0:y1, x0:x1])


@pytest.mark.parametrize("b, e", [((0, 0, 0), (15, 10, 6)), ((-1, 0, 0), (2, 2, 2)), ((0, 0, 5), (1, 1, 7))])
def test_reading_a_box_outside_the_source_raises(source_and_data, b, e):
    source, _ = source_and_data
    with pytest.raises(SourceError, match="outside"):
        source.read(box(b, e))


def test_reading_a_time_point_outside_the_source_raises(source_and_data):
    source, _ = source_and_data
    with pytest.raises(SourceError):
        source.read(box((0, 0, 0), (1, 1, 1)), t=1)


def test_window_range_equals_data_min_and_max(source_and_data):
    source, data = source_and_data
    assert window_range(source) == (data.min(), data.max())


def test_window_range_in_tiny_boxes_equals_data_min_and_max(source_and_data, monkeypatch):
    source, data = source_and_data
    monkeypatch.setattr(source, "scan_boxes", functools.partial(type(source).scan_boxes, source, max_bytes=16))
    assert len(source.scan_boxes()) > 10
    assert window_range(source) == (int(data.min()), int(data.max()))


def test_source_pickles_after_a_read_and_reads_the_same(source_and_data):
    source, data = source_and_data
    sub = box((2, 3, 1), (9, 8, 4))
    first = source.read(sub)
    clone = pickle.loads(pickle.dumps(source))
    np.testing.assert_array_equal(clone.read(sub), first)
    np.testing.assert_array_equal(clone.read(clone.extent), data)
    assert clone.shape_tzyx == source.shape_tzyx and clone.dtype == source.dtype


def test_fingerprint_names_every_file_with_its_size(source_and_data):
    source, _ = source_and_data
    prints = source.fingerprint()
    assert [p["path"] for p in prints] == [str(f) for f in source.files]
    assert all(p["size"] == Path(p["path"]).stat().st_size for p in prints)


# --- scan_boxes ---------------------------------------------------------------------

def painted(extent: Box, boxes) -> np.ndarray:
    counts = np.zeros(tuple(extent.shape)[::-1], dtype=np.int32)
    for b in boxes:
        counts[b.to_zyx_slices()] += 1
    return counts


@pytest.mark.parametrize("max_bytes", [1, 2, 16, 100, 280, 281, 10**9])
def test_scan_boxes_tile_the_volume_within_the_budget(tmp_path, max_bytes):
    data = random_zyx()  # uint16: one plane is 14 * 10 * 2 = 280 bytes
    source = open_source(str(write_cutout(tmp_path / "c.h5", data)))
    boxes = source.scan_boxes(max_bytes=max_bytes)
    assert (painted(source.extent, boxes) == 1).all()
    budget = max(max_bytes, data.itemsize)
    assert all(b.shape.volume * data.itemsize <= budget for b in boxes)


# --- HDF5 layouts -------------------------------------------------------------------

def test_ndstore_cutout_layout_is_found_automatically(tmp_path):
    data = random_zyx(dtype=np.uint8)
    source = open_source(str(write_cutout(tmp_path / "c.h5", data, channel="annotation")))
    assert isinstance(source, HDF5Source)
    assert source.dataset == "/annotation/CUTOUT"
    np.testing.assert_array_equal(source.read(source.extent), data)


def test_cutout_is_preferred_over_other_arrays(tmp_path):
    path = write_cutout(tmp_path / "c.h5", random_zyx())
    with h5py.File(path, "a") as f:
        f.create_dataset("extra/mask", data=np.zeros((2, 2, 2), np.uint8))
    assert open_source(str(path)).dataset == "/image/CUTOUT"


def test_a_single_3d_array_anywhere_is_found(tmp_path):
    data = random_zyx(seed=4)
    path = write_h5(tmp_path / "deep.h5", {"a/b/volume": data, "a/meta": np.arange(5)})
    source = open_source(str(path))
    assert source.dataset == "/a/b/volume"
    np.testing.assert_array_equal(source.read(source.extent), data)


def test_two_arrays_are_ambiguous_and_both_candidates_are_listed(tmp_path):
    path = write_h5(tmp_path / "two.h5", {"raw": random_zyx(), "seg/labels": random_zyx(seed=1)})
    error = source_error(str(path))
    assert "/raw" in str(error) and "/seg/labels" in str(error) and str(path) in str(error)


def test_two_cutouts_are_ambiguous_and_both_are_listed(tmp_path):
    path = write_cutout(tmp_path / "c.h5", random_zyx(), channel="image")
    with h5py.File(path, "a") as f:
        f.create_dataset("annotation/CUTOUT", data=random_zyx(seed=2))
    error = source_error(str(path))
    assert "/image/CUTOUT" in str(error) and "/annotation/CUTOUT" in str(error)


def test_file_colon_path_picks_one_array(tmp_path):
    raw, labels = random_zyx(), random_zyx(seed=1, dtype=np.uint32)
    path = write_h5(tmp_path / "two.h5", {"raw": raw, "seg/labels": labels})
    source = open_source(f"{path}:/seg/labels")
    assert source.dataset == "/seg/labels" and source.dtype == np.uint32
    np.testing.assert_array_equal(source.read(source.extent), labels)


def test_missing_dataset_path_lists_what_exists(tmp_path):
    path = write_h5(tmp_path / "two.h5", {"raw": random_zyx(), "seg/labels": random_zyx(seed=1)})
    error = source_error(f"{path}:/seg/nope")
    assert "/seg/nope" in str(error) and "/raw" in str(error) and "/seg/labels" in str(error)


def test_dataset_path_naming_a_group_lists_what_exists(tmp_path):
    path = write_h5(tmp_path / "two.h5", {"raw": random_zyx(), "seg/labels": random_zyx(seed=1)})
    assert "/seg/labels" in str(source_error(f"{path}:/seg"))


def test_hdf5_without_a_3d_array_is_a_source_error(tmp_path):
    path = write_h5(tmp_path / "flat.h5", {"plane": np.zeros((4, 4), np.uint8)})
    assert str(path) in str(source_error(str(path)))


def test_missing_file_is_a_source_error_naming_it(tmp_path):
    missing = tmp_path / "missing.h5"
    assert str(missing) in str(source_error(str(missing)))
    assert str(missing) in str(source_error(f"{missing}:/image/CUTOUT"))


def test_folder_is_a_source_error_naming_it(tmp_path):
    folder = tmp_path / "volume"
    folder.mkdir()
    assert str(folder) in str(source_error(str(folder)))


@pytest.mark.parametrize("name", ["garbage.h5", "garbage.bin"])
def test_non_hdf5_file_is_a_source_error_naming_it(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(np.random.default_rng(0).integers(0, 256, size=4096, dtype=np.uint8).tobytes())
    assert str(path) in str(source_error(str(path)))
    assert str(path) in str(source_error(f"{path}:/image/CUTOUT"))


def test_garbage_tiff_is_a_source_error_naming_it(tmp_path):
    path = tmp_path / "bad.tif"
    path.write_bytes(b"not a tiff at all" * 100)
    assert str(path) in str(source_error(str(path)))


def test_wrong_number_of_axes_is_a_source_error(tmp_path):
    path = write_cutout(tmp_path / "c.h5", random_zyx())
    error = source_error(str(path), axes="tzyx")
    assert "axes" in str(error)


# --- axes ---------------------------------------------------------------------------

@pytest.mark.parametrize("axes", ["xyz", "yxz", "zxy"])
def test_3d_axes_are_read_back_as_zyx(tmp_path, axes):
    zyx = random_zyx(seed=7)
    stored = np.ascontiguousarray(np.transpose(zyx, ["zyx".index(a) for a in axes]))
    path = write_h5(tmp_path / "v.h5", {"vol": stored})
    source = open_source(str(path), axes=axes)
    assert source.shape_tzyx == (1, *zyx.shape)
    np.testing.assert_array_equal(source.read(source.extent), zyx)
    np.testing.assert_array_equal(source.read(box((2, 1, 3), (12, 7, 5))), zyx[3:5, 1:7, 2:12])


def test_xyz_file_reads_as_the_numpy_transpose(tmp_path):
    xyz = random_zyx(shape=(14, 10, 6), seed=8)  # stored x slowest
    path = write_h5(tmp_path / "v.h5", {"vol": xyz})
    source = open_source(str(path), axes="xyz")
    assert source.size_xyz == Vec3(14, 10, 6)
    np.testing.assert_array_equal(source.read(source.extent), xyz.T)
    np.testing.assert_array_equal(source.read(box((1, 2, 3), (5, 9, 6))), xyz[1:5, 2:9, 3:6].T)


@pytest.mark.parametrize("axes", [None, "tzyx"])
def test_4d_tzyx_file_gives_time_points_and_reads_each(tmp_path, axes):
    tzyx = random_zyx(shape=(3, *SHAPE_ZYX), seed=9)
    path = write_h5(tmp_path / "ts.h5", {"series": tzyx})
    source = open_source(str(path), axes=axes)
    assert source.axes == "tzyx"
    assert source.shape_tzyx == tzyx.shape and source.time_points == 3
    for t in range(3):
        np.testing.assert_array_equal(source.read(source.extent, t), tzyx[t])
        np.testing.assert_array_equal(source.read(box((4, 2, 1), (9, 8, 3)), t), tzyx[t, 1:3, 2:8, 4:9])
    with pytest.raises(SourceError):
        source.read(source.extent, 3)


def test_4d_xyzt_file_reads_as_tzyx(tmp_path):
    tzyx = random_zyx(shape=(2, *SHAPE_ZYX), seed=10)
    path = write_h5(tmp_path / "ts.h5", {"series": np.ascontiguousarray(np.transpose(tzyx, (3, 2, 1, 0)))})
    source = open_source(str(path), axes="xyzt")
    assert source.shape_tzyx == tzyx.shape
    np.testing.assert_array_equal(source.read(box((1, 1, 1), (5, 5, 5)), 1), tzyx[1, 1:5, 1:5, 1:5])


def test_window_range_covers_every_time_point(tmp_path):
    tzyx = np.full((3, 4, 5, 6), 100, dtype=np.uint16)
    tzyx[2, 3, 4, 5], tzyx[1, 0, 0, 0] = 60000, 7
    source = open_source(str(write_h5(tmp_path / "ts.h5", {"series": tzyx})))
    assert window_range(source) == (7, 60000)


def test_window_range_of_float_data(tmp_path):
    data = np.random.default_rng(3).normal(size=SHAPE_ZYX).astype(np.float32)
    source = open_source(str(write_h5(tmp_path / "f.h5", {"vol": data})))
    assert window_range(source) == (float(data.min()), float(data.max()))


# --- TIFF ---------------------------------------------------------------------------

def test_tiff_stack_and_multipage_tiff_read_back_equal(tmp_path):
    data = random_zyx(seed=11, dtype=np.uint8)
    stack = open_source(write_stack(tmp_path / "pages", data))
    tifffile.imwrite(tmp_path / "v.tif", data)
    single = open_source(str(tmp_path / "v.tif"))
    assert isinstance(stack, TiffSource) and isinstance(single, TiffSource)
    assert len(stack.files) == data.shape[0] and len(single.files) == 1
    np.testing.assert_array_equal(stack.read(stack.extent), single.read(single.extent))
    np.testing.assert_array_equal(stack.read(stack.extent), data)


def test_tiff_stack_pages_are_ordered_by_name(tmp_path):
    data = random_zyx(seed=12, dtype=np.uint8)
    folder = tmp_path / "pages"
    folder.mkdir()
    for z in reversed(range(data.shape[0])):  # written out of order
        tifffile.imwrite(folder / f"slice_{z:03d}.tiff", data[z])
    source = open_source(str(folder / "*.tiff"))
    np.testing.assert_array_equal(source.read(source.extent), data)


def test_glob_matching_nothing_is_a_source_error(tmp_path):
    assert "*.tif" in str(source_error(str(tmp_path / "none" / "*.tif")))


def test_glob_of_non_tiff_files_is_a_source_error(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    source_error(str(tmp_path / "*.png"))


def test_tiff_rejects_axes_other_than_zyx(tmp_path):
    path = tmp_path / "v.tif"
    tifffile.imwrite(path, random_zyx(dtype=np.uint8))
    assert "xyz" in str(source_error(str(path), axes="xyz"))


def test_single_2d_tiff_is_a_one_slice_volume(tmp_path):
    plane = random_zyx(shape=(10, 14), dtype=np.uint8)
    path = tmp_path / "one.tif"
    tifffile.imwrite(path, plane)
    source = open_source(str(path))
    assert source.shape_tzyx == (1, 1, 10, 14)
    np.testing.assert_array_equal(source.read(source.extent), plane[None])


def test_tiff_stack_page_with_another_shape_is_refused_at_open_naming_it(tmp_path):
    """Refused when opened (build_plan opens every source before anything is written),
    not when a block first reaches the odd page."""
    pattern = write_stack(tmp_path / "pages", random_zyx(dtype=np.uint8))
    tifffile.imwrite(tmp_path / "pages" / "z0003.tif", np.zeros((3, 3), np.uint8))
    error = str(source_error(pattern))
    assert "z0003.tif" in error and "x3 y3" in error and "x14 y10" in error


@pytest.mark.parametrize("kind", ["tiff-stack", "tiff-multipage"])
def test_compressed_tiff_reads_back_equal(tmp_path, kind):
    data = random_zyx(seed=13, dtype=np.uint8)
    if kind == "tiff-stack":
        (tmp_path / "pages").mkdir()
        for z, plane in enumerate(data):
            tifffile.imwrite(tmp_path / "pages" / f"z{z:04d}.tif", plane, compression="zlib")
        source = open_source(str(tmp_path / "pages" / "*.tif"))
    else:
        tifffile.imwrite(tmp_path / "v.tif", data, compression="zlib")
        source = open_source(str(tmp_path / "v.tif"))
    np.testing.assert_array_equal(source.read(source.extent), data)
    np.testing.assert_array_equal(source.read(box((3, 2, 1), (11, 9, 5))), data[1:5, 2:9, 3:11])


def test_a_forked_process_reads_through_a_handle_of_its_own(tmp_path):
    """Luigi forks its workers after the CLI's preflight has read from the same source."""
    import os

    data = np.arange(4 * 5 * 6, dtype=np.uint16).reshape(4, 5, 6)
    path = tmp_path / "a.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("image/CUTOUT", data=data)
    source = HDF5Source(path, "/image/CUTOUT")
    box = Box(Vec3(1, 1, 1), Vec3(5, 4, 3))
    np.testing.assert_array_equal(source.read(box), data[1:3, 1:4, 1:5])
    parents = source._handle[1]
    pid = os.fork()
    if pid == 0:  # the child: same answer, read through a file it opened itself
        ok = np.array_equal(source.read(box), data[1:3, 1:4, 1:5]) and source._handle[1] is not parents
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert source._handle[1] is parents  # the parent keeps its own


# --- TIFF: every page read exactly, or refused at open ------------------------------

def test_tiff_stack_with_mixed_dtypes_is_refused_naming_the_file_and_both_dtypes(tmp_path):
    data = random_zyx(dtype=np.uint8)
    pattern = write_stack(tmp_path / "pages", data)
    tifffile.imwrite(tmp_path / "pages" / "z0002.tif", np.full(data.shape[1:], 1000, np.uint16))
    error = str(source_error(pattern))
    assert "z0002.tif" in error and "uint16" in error and "uint8" in error and "z0000.tif" in error


@pytest.mark.parametrize("odd", [np.zeros((10, 13), np.uint16), np.zeros((10, 14), np.uint8)])
def test_multipage_tiff_with_a_page_that_differs_is_refused_naming_the_page(tmp_path, odd):
    data = random_zyx()
    path = tmp_path / "v.tif"
    with tifffile.TiffWriter(path) as tif:
        for z, plane in enumerate(data):
            tif.write(odd if z == 4 else plane)
    error = str(source_error(str(path)))
    assert str(path) in error and "page 4" in error


def test_multipage_tiff_written_one_page_at_a_time_reads_every_page(tmp_path):
    """Each tifffile.imwrite(append=True) starts a series of its own: series[0] is one page."""
    data = random_zyx(shape=(40, 10, 14))
    path = tmp_path / "v.tif"
    for plane in data:
        tifffile.imwrite(path, plane, append=True)
    source = open_source(str(path))
    assert source.shape_tzyx == (1, 40, 10, 14)
    np.testing.assert_array_equal(source.read(source.extent), data)
    np.testing.assert_array_equal(source.read(box((2, 3, 17), (9, 8, 33))), data[17:33, 3:8, 2:9])


@pytest.mark.parametrize("shape", [(10, 14, 3), (6, 10, 14, 3)])
def test_rgb_tiff_is_refused_naming_the_samples_per_pixel(tmp_path, shape):
    path = tmp_path / "rgb.tif"
    tifffile.imwrite(path, np.zeros(shape, np.uint8), photometric="rgb")
    error = str(source_error(str(path)))
    assert str(path) in error and "3 samples per pixel" in error


def test_imagej_hyperstack_of_channels_is_refused(tmp_path):
    data = random_zyx(dtype=np.uint16)
    tifffile.imwrite(tmp_path / "zc.tif", np.stack([data, data], axis=1), imagej=True, metadata={"axes": "ZCYX"})
    assert "2 channels" in str(source_error(str(tmp_path / "zc.tif")))


@pytest.mark.parametrize("keep", [0.5, 0.99])
def test_truncated_tiff_is_refused_at_open(tmp_path, keep):
    """Cut in half, the chain of page headers breaks (tifffile only logs it and reads one
    page); cut near the end, the last page's data lies past the end of the file."""
    path = tmp_path / "v.tif"
    tifffile.imwrite(path, random_zyx(dtype=np.uint8))
    with open(path, "r+b") as f:
        f.truncate(int(path.stat().st_size * keep))
    assert "truncated" in str(source_error(str(path)))


def test_glob_is_sorted_naturally_and_the_listing_shows_it(tmp_path):
    data = random_zyx(shape=(12, 10, 14), dtype=np.uint8)
    (tmp_path / "pages").mkdir()
    for z, plane in enumerate(data, start=1):
        tifffile.imwrite(tmp_path / "pages" / f"s{z}.tif", plane)
    source = open_source(str(tmp_path / "pages" / "s*.tif"))
    assert [f.name for f in source.files][:3] == ["s1.tif", "s2.tif", "s3.tif"]
    np.testing.assert_array_equal(source.read(source.extent), data)
    assert source.file_listing == "12: s1.tif ... s12.tif"


@pytest.mark.parametrize("tiled", [False, True])
def test_a_small_box_of_a_compressed_tiff_decodes_only_the_strips_it_meets(tmp_path, tiled):
    """The whole file was decoded for every block: 64 blocks of 16 MiB decoded 1 GiB."""
    import tracemalloc

    ramp = np.add.outer(np.arange(512), np.arange(512)).astype(np.uint8)
    data = ramp[None] + np.arange(64, dtype=np.uint8)[:, None, None]
    path = tmp_path / "v.tif"  # 16 MiB of voxels
    tifffile.imwrite(path, data, compression="zlib", rowsperstrip=64, tile=(64, 64) if tiled else None)
    source = open_source(str(path))
    tracemalloc.start()
    try:
        out = source.read(box((70, 130, 10), (200, 200, 14)))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(out, data[10:14, 130:200, 70:200])
    assert peak < 2 * 2**20, peak  # 4 pages of two 32 KiB strips each (or tiles), not 16 MiB
    np.testing.assert_array_equal(source.read(source.extent), data)


def test_block_reads_of_a_deflate_tiff_hold_at_most_the_strip_cache_not_the_file(tmp_path):
    """The whole file was decoded for every block. Blocks in ingest order (x fastest) keep
    at most SEGMENT_CACHE_BYTES of decoded strips: the reader's peak stays within that, a
    block and the check's temporaries, well under the 128 MiB the file decodes to. (Counted by tracemalloc, which
    sees numpy's and the codecs' buffers: what ndingest holds, not what the kernel maps.)"""
    import tracemalloc

    from ndingest.tiff import SEGMENT_CACHE_BYTES

    side, pages = 1024, 128
    ramp = (np.add.outer(np.arange(side), np.arange(side)) // 8).astype(np.uint8)
    data = ramp[None] + np.arange(pages, dtype=np.uint8)[:, None, None]
    path = tmp_path / "v.tif"
    tifffile.imwrite(path, data, compression="zlib")  # 128 MiB of voxels, 8 rows per strip
    source = open_source(str(path))
    step = Vec3(256, 256, 64)  # the ingest's default block
    tracemalloc.start()
    try:
        for z in range(0, pages, step.z):
            for y in range(0, side, step.y):
                for x in range(0, side, step.x):
                    b = box((x, y, z), (x + step.x, y + step.y, z + step.z))
                    block = source.read(b)
                    assert np.array_equal(block, data[z:z + step.z, y:y + step.y, x:x + step.x]), b
                    del block
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < SEGMENT_CACHE_BYTES + 32 * 2**20, peak / 2**20  # 72.8 MiB here; a whole-file decode: >= 128


# --- HDF5: refused at open from metadata alone ---------------------------------------

@pytest.mark.parametrize("dtype, needle", [
    (np.dtype([("a", np.uint8), ("b", np.float32)]), "compound (a, b)"),
    (np.dtype("S4"), "string"),
])
def test_hdf5_array_of_a_non_numeric_type_is_refused_naming_its_dtype(tmp_path, dtype, needle):
    path = write_h5(tmp_path / "c.h5", {"vol": np.zeros((2, 3, 4), dtype)})
    for name in (str(path), f"{path}:/vol"):
        error = str(source_error(name))
        assert f"{path}:/vol" in error and needle in error


def test_empty_hdf5_array_is_refused_at_open(tmp_path):
    path = write_h5(tmp_path / "c.h5", {"vol": np.zeros((0, 3, 4), np.uint8)})
    assert "empty" in str(source_error(str(path)))


def test_2d_hdf5_array_says_a_volume_needs_3_or_4_axes(tmp_path):
    path = write_h5(tmp_path / "flat.h5", {"plane": np.zeros((4, 5), np.uint8)})
    error = str(source_error(f"{path}:/plane"))
    assert "2D" in error and "3 axes" in error and "(4, 5)" in error
    assert "/plane (4, 5)" in str(source_error(str(path)))


def test_chunked_hdf5_array_without_stored_data_is_refused(tmp_path):
    path = tmp_path / "huge.h5"
    with h5py.File(path, "w") as f:  # claims 10^12 voxels; the file is a few KiB
        f.create_dataset("vol", shape=(10**4, 10**4, 10**4), dtype=np.uint8, chunks=(64, 64, 64))
    error = str(source_error(str(path)))
    assert "holds no data" in error and "1,000,000,000,000 voxels" in error


def test_hdf5_header_claiming_more_than_the_file_holds_is_refused_naming_the_dataset(tmp_path):
    path = write_h5(tmp_path / "forged.h5", {"vol": np.ones((100, 100, 100), np.uint8)})
    raw = path.read_bytes()
    dims, nbytes = np.array([100] * 3, "<u8").tobytes(), np.array([10**6], "<u8").tobytes()
    assert raw.count(dims) == 2 and raw.count(nbytes) == 1  # dataspace size and maximum; layout size
    forged = raw.replace(dims, np.array([10**4] * 3, "<u8").tobytes())
    path.write_bytes(forged.replace(nbytes, np.array([10**12], "<u8").tobytes()))  # 10^12 voxels claimed
    for name in (str(path), f"{path}:/vol"):
        assert f"{path}:/vol: cannot open" in str(source_error(name))
