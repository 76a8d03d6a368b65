"""TIFF and HDF5 inputs end to end: every voxel stored exactly as tifffile or h5py reads
it from the source, or the input refused with exit 3, one line, and nothing written."""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import tensorstore as ts
import tifffile

from conftest import run_cli, write_spec

VOLUME = "store/neurostorm_kat11_scale3/kat11_scale3"


def read_store(folder: Path, channel: str = "image") -> np.ndarray:
    """Level 0 of a channel as (z, y, x), read by tensorstore, not by ndingest."""
    vol = ts.open({"driver": "neuroglancer_precomputed",
                   "kvstore": {"driver": "file", "path": str(folder / VOLUME / channel)}}).result()
    return vol[..., 0].read().result().transpose(2, 1, 0)


def refused(result, *needles: str) -> str:
    """Exit 3 with one `ndingest: error:` line naming every needle; returns the line."""
    assert result.returncode == 3, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ndingest: error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def write_pages(folder: Path, planes, name: str = "s{}.tif", start: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for z, plane in enumerate(planes, start=start):
        tifffile.imwrite(folder / name.format(z), plane)


@pytest.fixture(scope="module")
def volume() -> np.ndarray:
    return np.random.default_rng(5).integers(0, 255, size=(40, 150, 141), dtype=np.uint8)


# --- TIFF -----------------------------------------------------------------------------

def test_a_stack_of_mixed_dtypes_exits_3_naming_the_file_and_both_dtypes(tmp_path, volume):
    planes = [p for p in volume[:6]]
    planes[3] = np.full(volume.shape[1:], 1000, np.uint16)  # was stored as 232, exit 0
    write_pages(tmp_path / "pages", planes)
    spec = write_spec(tmp_path, image="pages/*.tif")
    refused(run_cli("ingest", str(spec)), "s3.tif", "uint16", "uint8")
    assert not (tmp_path / "store").exists()


def test_a_page_of_another_size_is_refused_before_anything_is_written_even_with_a_window_range(tmp_path, volume):
    write_pages(tmp_path / "pages", [*volume[:5], volume[5, :100]])
    spec = write_spec(tmp_path, image="pages/*.tif", image_extra="window_range = [0, 255]")
    refused(run_cli("ingest", str(spec)), "s5.tif", "y100", "y150")
    assert not (tmp_path / "store").exists()


def test_a_tiff_written_one_page_at_a_time_ingests_every_page(tmp_path, volume):
    path = tmp_path / "pagewise.tif"
    for plane in volume:
        tifffile.imwrite(path, plane, append=True, compression="zlib")  # one series per page
    with tifffile.TiffFile(path) as tif:
        expected = np.stack([page.asarray() for page in tif.pages])
    assert expected.shape == volume.shape
    assert json.loads(run_cli("inspect", str(path), "--json").stdout)["z_size"] == len(volume)
    result = run_cli("ingest", str(write_spec(tmp_path, image=path)))
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(read_store(tmp_path), expected)


@pytest.mark.parametrize("compression, tile", [("lzw", None), ("zlib", (64, 64)), ("lzw", (32, 48))])
def test_lzw_and_tiled_tiffs_ingest_bit_exact(tmp_path, volume, compression, tile):
    """Acquisition software writes LZW and tiles as often as deflate strips."""
    labels = (volume.astype(np.uint32) * 70_001)  # annotation ids past 16 bits
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, labels, compression=compression, tile=tile)
    with tifffile.TiffFile(path) as tif:
        expected = np.stack([page.asarray() for page in tif.pages])
    result = run_cli("ingest", str(write_spec(tmp_path, image=path, image_type="annotation")))
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(read_store(tmp_path), expected)


def test_an_rgb_tiff_exits_3_naming_the_samples_per_pixel(tmp_path, volume):
    path = tmp_path / "rgb.tif"
    tifffile.imwrite(path, np.stack([volume[0]] * 3, axis=-1), photometric="rgb")
    refused(run_cli("inspect", str(path)), "rgb.tif", "3 samples per pixel")
    refused(run_cli("ingest", str(write_spec(tmp_path, image=path))), "rgb.tif", "3 samples per pixel")
    assert not (tmp_path / "store").exists()


def test_a_stack_is_read_in_natural_order_and_inspect_shows_it(tmp_path, volume):
    planes = volume[:12]
    write_pages(tmp_path / "pages", planes, start=1)  # s1.tif ... s12.tif: a text sort puts s10 after s1
    listing = "12: s1.tif ... s12.tif"
    assert listing in run_cli("inspect", str(tmp_path / "pages/*.tif")).stdout
    spec = write_spec(tmp_path, image="pages/*.tif")
    assert listing in run_cli("inspect", str(spec)).stdout
    result = run_cli("ingest", str(spec))
    assert result.returncode == 0, result.stderr
    expected = np.stack([tifffile.imread(tmp_path / f"pages/s{z}.tif") for z in range(1, 13)])
    np.testing.assert_array_equal(read_store(tmp_path), expected)


# --- HDF5 -----------------------------------------------------------------------------

def write_h5(path: Path, name: str, **kwargs) -> Path:
    with h5py.File(path, "w") as f:
        f.create_dataset(name, **kwargs)
    return path


@pytest.mark.parametrize("kind, kwargs, needles", [
    ("compound", {"data": np.zeros((4, 5, 6), [("a", "u1"), ("b", "f4")])}, ["compound (a, b)"]),
    ("string", {"data": np.zeros((4, 5, 6), "S3")}, ["string"]),
    ("empty", {"shape": (0, 5, 6), "dtype": "u1"}, ["empty"]),
    ("no data", {"shape": (10**4,) * 3, "dtype": "u1", "chunks": (64, 64, 64)},
     ["holds no data", "1,000,000,000,000 voxels"]),
])
def test_an_hdf5_array_that_holds_no_voxels_exits_3_at_open(tmp_path, kind, kwargs, needles):
    path = write_h5(tmp_path / "bad.h5", "image/CUTOUT", **kwargs)
    refused(run_cli("inspect", str(path)), "bad.h5:/image/CUTOUT", *needles)
    refused(run_cli("ingest", str(write_spec(tmp_path, image=path))), "bad.h5:/image/CUTOUT", *needles)
    assert not (tmp_path / "store").exists()


def test_a_2d_hdf5_array_says_a_volume_needs_3_or_4_axes(tmp_path):
    path = write_h5(tmp_path / "flat.h5", "plane", data=np.zeros((5, 6), np.uint8))
    refused(run_cli("inspect", f"{path}:/plane"), "flat.h5:/plane", "2D", "3 axes")
    refused(run_cli("inspect", str(path)), "flat.h5", "/plane (5, 6)")


@pytest.mark.parametrize("dtype", [">u2", ">f4", ">u8"])
def test_a_big_endian_hdf5_is_stored_as_its_values(tmp_path, dtype):
    """h5py returns a big-endian dataset's bytes as they are: stored and checksummed as
    values, not bytes (it was stored right, then failed verify on its markers' checksums)."""
    values = np.random.default_rng(9).integers(0, 60_000, size=(20, 50, 60)).astype(dtype)
    path = tmp_path / "be.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("vol", data=values, chunks=True, compression="lzf")
    with h5py.File(path, "r") as f:
        expected, stored_dtype = f["vol"][...], f["vol"].dtype
    assert stored_dtype.byteorder == ">"
    result = run_cli("ingest", str(write_spec(tmp_path, image=path)))
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(read_store(tmp_path), expected)
    assert read_store(tmp_path).dtype == expected.dtype.newbyteorder("=")
