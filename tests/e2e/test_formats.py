"""Other inputs end to end: a TIFF stack, an xyz-ordered HDF5, a 4D time series; N workers."""
from __future__ import annotations

import json

import numpy as np
import pytest
import tensorstore as ts
import tifffile

from conftest import run_cli, write_h5, write_spec

VOLUME = "store/neurostorm_kat11_scale3/kat11_scale3"


def read_volume(folder, channel: str) -> np.ndarray:
    vol = ts.open({"driver": "neuroglancer_precomputed",
                   "kvstore": {"driver": "file", "path": str(folder / VOLUME / channel)}}).result()
    return vol[..., 0].read().result().transpose(2, 1, 0)


@pytest.fixture(scope="module")
def volume() -> np.ndarray:
    return np.random.default_rng(3).integers(0, 65535, size=(37, 150, 141), dtype=np.uint16)


def test_tiff_stack_ingests_bit_exact(tmp_path, volume):
    (tmp_path / "pages").mkdir()
    for z, plane in enumerate(volume):
        tifffile.imwrite(tmp_path / f"pages/slice_{z:04d}.tif", plane)
    spec = write_spec(tmp_path, image="pages/*.tif", offset=(3, 5, 7))
    result = run_cli("ingest", str(spec))
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(read_volume(tmp_path, "image"), volume)
    table = json.loads(run_cli("inspect", str(tmp_path / "pages/*.tif"), "--json").stdout)
    assert (table["x_size"], table["y_size"], table["z_size"]) == (141, 150, 37)


def test_xyz_ordered_hdf5_is_transposed_once(tmp_path, volume):
    source = write_h5(tmp_path / "xyz.h5", np.ascontiguousarray(volume.transpose(2, 1, 0)), "vol")
    spec = write_spec(tmp_path, image=source, image_extra='axes = "xyz"')
    assert run_cli("ingest", str(spec)).returncode == 0
    np.testing.assert_array_equal(read_volume(tmp_path, "image"), volume)


def test_time_series_stores_one_volume_per_time_point(tmp_path, volume):
    series = np.stack([volume[:, :60, :70], volume[:, 60:120, 70:140]])  # (t, z, y, x)
    source = write_h5(tmp_path / "series.h5", series, "series/CUTOUT")
    inspect = json.loads(run_cli("inspect", str(source), "--json").stdout)
    assert inspect["time_range"] == [0, 1] and inspect["axes"] == "tzyx"
    spec = write_spec(tmp_path, image=source, image_type="timeseries")
    result = run_cli("ingest", str(spec))
    assert result.returncode == 0, result.stderr
    for t in (0, 1):
        np.testing.assert_array_equal(read_volume(tmp_path, f"image/t{t}"), series[t])


def test_a_4d_source_declared_image_is_refused(tmp_path, volume):
    source = write_h5(tmp_path / "series.h5", np.stack([volume, volume]), "series/CUTOUT")
    result = run_cli("ingest", str(write_spec(tmp_path, image=source)))
    assert result.returncode == 3 and "timeseries" in result.stderr


def test_two_workers_write_every_block_once(tmp_path, volume):
    source = write_h5(tmp_path / "v.h5", volume)
    spec = write_spec(tmp_path, image=source, ingest="block_chunks = [1, 1, 1]\nblocks_per_task = 2")
    result = run_cli("ingest", str(spec), "--workers", "2")
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(read_volume(tmp_path, "image"), volume)
    status = json.loads(run_cli("status", str(spec), "--json").stdout)["channels"]["image"]
    assert status["done"] == status["total"] == status["verified"] == 2 * 2 * 3
    writers = {json.loads(m.read_text())["pid"] for m in (tmp_path / "store/_markers").rglob("written/**/*.json")}
    assert len(writers) > 1  # worker processes (Luigi forks one per running task), not threads of one
