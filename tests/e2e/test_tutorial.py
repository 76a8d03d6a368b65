"""The tutorial end to end through the real CLI, read back by independent readers."""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess

import numpy as np
import pytest
import tensorstore as ts

from conftest import LUIGI, REPO, ingest_tutorial, read_cutout, run_cli, snapshot, write_spec
from ndingest.sample import ANNOTATION_FILE, IMAGE_FILE

CHANNEL_DIR = "store/neurostorm_kat11_scale3/kat11_scale3"


@pytest.fixture(scope="module")
def ingested(tmp_path_factory, tutorial_data):
    """One finished tutorial ingest, shared by the read-only checks below."""
    folder = tmp_path_factory.mktemp("tutorial")
    return (folder, *ingest_tutorial(folder, tutorial_data))


def test_sample_writes_the_tutorial_cutouts_in_ndstore_layout(tmp_path):
    result = run_cli("sample", str(tmp_path))
    assert result.returncode == 0, result.stderr
    import h5py

    with h5py.File(tmp_path / IMAGE_FILE) as f:
        assert f["image/CUTOUT"].shape == (200, 200, 300) and f["image/CUTOUT"].dtype == np.uint8
        assert f["image/CHANNELTYPE"][()].decode() == "image"
        assert f["image/DATATYPE"][()].decode() == "uint8"
        image = f["image/CUTOUT"][()]
    assert (image.min(), image.max()) == (0, 254)
    with h5py.File(tmp_path / ANNOTATION_FILE) as f:
        labels = f["annotation/CUTOUT"][()]
        assert f["annotation/CHANNELTYPE"][()].decode() == "annotation"
    assert labels.dtype == np.uint32 and labels.shape == (200, 200, 300)
    assert (labels == 0).any() and len(np.unique(labels)) > 10


def test_inspect_file_reads_cutout_as_zyx(tutorial_data):
    result = run_cli("inspect", str(tutorial_data / IMAGE_FILE), "--json")
    assert result.returncode == 0, result.stderr
    table = json.loads(result.stdout)
    assert table == {"x_size": 300, "y_size": 200, "z_size": 200, "time_range": [0, 0], "datatype": "uint8",
                     "window_range": [0, 254], "axes": "zyx"}
    text = run_cli("inspect", str(tutorial_data / IMAGE_FILE)).stdout
    assert "x size" in text and "| 300" in text and "zyx" in text


def test_inspect_spec_prints_the_tutorials_full_table(tutorial_spec):
    result = run_cli("inspect", str(tutorial_spec))
    assert result.returncode == 0, result.stderr
    for expected in ("neurostorm_kat11_scale3", "x size", "| 300", "(0, 0)", "uint8", "(0, 254)", "x offset",
                     "| 1000", "| 2000", "scaling levels", "zslices", "32 nm", "40 nm", "[annotation]", "uint32"):
        assert expected in result.stdout
    assert not (tutorial_spec.parent / "store").exists(), "inspect must not write the store"


def test_ingest_writes_every_block_and_verifies(ingested):
    folder, spec, result = ingested
    assert "image: 8/8 blocks written, 8/8 verified" in result.stdout
    status = json.loads(run_cli("status", str(spec), "--json").stdout)
    for name in ("image", "annotation"):
        assert status["channels"][name]["done"] == status["channels"][name]["total"] == 8
    report = (folder / "store/_reports/neurostorm_kat11_scale3/kat11_scale3/verify.csv").read_text().splitlines()
    assert len(report) == 1 + 16 and all(",ok," in line for line in report[1:])


@pytest.mark.parametrize("channel, file", [("image", IMAGE_FILE), ("annotation", ANNOTATION_FILE)])
def test_fresh_tensorstore_reads_back_the_source(ingested, tutorial_data, channel, file):
    folder, _, _ = ingested
    vol = ts.open({"driver": "neuroglancer_precomputed",
                   "kvstore": {"driver": "file", "path": str(folder / CHANNEL_DIR / channel)}}).result()
    assert list(vol.domain.inclusive_min[:3]) == [1000, 2000, 1000]
    assert list(vol.domain.exclusive_max[:3]) == [1300, 2200, 1200]
    stored_xyz = vol[..., 0].read().result()
    np.testing.assert_array_equal(stored_xyz.transpose(2, 1, 0), read_cutout(tutorial_data / file))


@pytest.mark.parametrize("channel, file, layer", [("image", IMAGE_FILE, "image"),
                                                  ("annotation", ANNOTATION_FILE, "segmentation")])
def test_cloudvolume_opens_each_channel_as_is(ingested, tutorial_data, channel, file, layer):
    from cloudvolume import CloudVolume

    folder, _, _ = ingested
    cv = CloudVolume(f"file://{folder / CHANNEL_DIR / channel}", mip=0, parallel=1, progress=False,
                     fill_missing=False)
    assert cv.layer_type == layer
    assert list(cv.voxel_offset) == [1000, 2000, 1000] and list(cv.resolution) == [32, 32, 40]
    xyz = np.asarray(cv[1000:1300, 2000:2200, 1000:1200])[..., 0]
    np.testing.assert_array_equal(xyz.transpose(2, 1, 0), read_cutout(tutorial_data / file))
    # an off-grid window, absolute coordinates as the tutorial's URLs use them
    part = np.asarray(cv[1100:1137, 2050:2099, 1013:1050])[..., 0].transpose(2, 1, 0)
    np.testing.assert_array_equal(part, read_cutout(tutorial_data / file)[13:50, 50:99, 100:137])


def test_a_window_range_given_in_the_spec_is_kept(tmp_path, tutorial_data):
    spec = write_spec(tmp_path, image=tutorial_data / IMAGE_FILE, image_extra="window_range = [10, 200]")
    assert (first := run_cli("ingest", str(spec))).returncode == 0, first.stderr
    assert (again := run_cli("ingest", str(spec))).returncode == 0, again.stderr
    db = sqlite3.connect(tmp_path / "store/catalog.sqlite")
    assert db.execute("select startwindow, endwindow from channels where channel_name = 'image'").fetchone() == (10, 200)


def test_catalog_holds_the_tutorial_data_model(ingested):
    folder, _, _ = ingested
    db = sqlite3.connect(folder / "store/catalog.sqlite")
    db.row_factory = sqlite3.Row
    ds = dict(db.execute("select * from datasets").fetchone())
    assert ds == {"dataset_name": "neurostorm_kat11_scale3", "ximagesize": 300, "yimagesize": 200, "zimagesize": 200,
                  "xoffset": 1000, "yoffset": 2000, "zoffset": 1000, "xvoxelres": 32.0, "yvoxelres": 32.0,
                  "zvoxelres": 40.0, "scalingoption": 0, "scalinglevels": 0, "public": 1}
    assert dict(db.execute("select * from tokens").fetchone()) == {
        "token_name": "kat11_scale3", "project": "kat11_scale3", "public": 1}
    channels = {r["channel_name"]: dict(r) for r in db.execute("select * from channels")}
    assert channels["image"]["channel_datatype"] == "uint8"
    assert (channels["image"]["startwindow"], channels["image"]["endwindow"]) == (0, 254)
    assert channels["annotation"]["channel_type"] == "annotation"
    assert channels["annotation"]["channel_datatype"] == "uint32"
    assert (channels["image"]["starttime"], channels["image"]["endtime"]) == (0, 0)


def test_every_chunk_is_a_file_including_all_zero_ones(ingested):
    folder, _, _ = ingested
    chunks = list((folder / CHANNEL_DIR / "annotation" / "32_32_40").iterdir())
    assert len(chunks) == 3 * 2 * 13  # ceil(300/128) * ceil(200/128) * ceil(200/16)


def test_rerun_of_a_finished_ingest_touches_nothing(ingested):
    folder, spec, _ = ingested
    before = snapshot(folder / "store" / "neurostorm_kat11_scale3")
    markers_before = snapshot(folder / "store" / "_markers" / "neurostorm_kat11_scale3" / "kat11_scale3" / "image")
    result = run_cli("ingest", str(spec))
    assert result.returncode == 0, result.stderr
    assert snapshot(folder / "store" / "neurostorm_kat11_scale3") == before
    assert snapshot(folder / "store" / "_markers" / "neurostorm_kat11_scale3" / "kat11_scale3" / "image") == markers_before


def test_verify_command_rereads_and_passes(ingested):
    _, spec, _ = ingested
    result = run_cli("verify", str(spec))
    assert result.returncode == 0, result.stderr
    assert "all 16 blocks equal" in result.stdout


def test_runs_the_luigi_way_with_the_shipped_luigi_cfg(tmp_path, tutorial_data):
    spec = write_spec(tmp_path, image=tutorial_data / IMAGE_FILE, annotation=tutorial_data / ANNOTATION_FILE)
    proc = subprocess.run([LUIGI, "--module", "ndingest.tasks", "Verify", "--spec", str(spec), "--local-scheduler"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, "LUIGI_CONFIG_PATH": str(REPO / "configs/luigi.cfg")})
    assert proc.returncode == 0, proc.stderr
    status = json.loads(run_cli("status", str(spec), "--json").stdout)
    assert status["channels"]["image"]["verified"] == 8


def test_the_luigi_way_exits_non_zero_when_a_task_fails(tmp_path, tutorial_data):
    """Luigi's retcodes default to 0 on failure; ndingest.tasks sets them."""
    spec = write_spec(tmp_path, image=tutorial_data / IMAGE_FILE)
    run = run_cli("ingest", str(spec))
    assert run.returncode == 0, run.stderr
    chunk = next((tmp_path / CHANNEL_DIR / "image" / "32_32_40").iterdir())
    chunk.write_bytes(bytes(len(chunk.read_bytes())))  # zeroes: readable, wrong
    for marker in (tmp_path / "store/_markers").rglob("verified"):
        import shutil

        shutil.rmtree(marker)
    proc = subprocess.run([LUIGI, "--module", "ndingest.tasks", "Verify", "--spec", str(spec), "--local-scheduler"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode != 0
