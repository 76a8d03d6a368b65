"""Bad input: one clear line, a distinct non-zero exit code, no traceback, nothing written."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import read_cutout, run_cli, snapshot, spec_text, write_h5, write_spec
from ndingest.sample import ANNOTATION_FILE, IMAGE_FILE


def assert_one_clear_line(result, code: int, *needles: str) -> None:
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert lines[0].startswith("ndingest: error: ")
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.mark.parametrize("field, kwargs, needle", [
    ("dataset", {"dataset": "neurostorm kat11"}, "dataset.name = 'neurostorm kat11'"),
    ("project", {"project": "kat11-scale3!"}, "project.name = 'kat11-scale3!'"),
    ("offset", {"offset": (-1, 2000, 1000)}, "dataset.offset"),
])
def test_bad_names_and_offsets_exit_2_and_write_nothing(tmp_path, tutorial_data, field, kwargs, needle):
    spec = write_spec(tmp_path, image=tutorial_data / IMAGE_FILE, **kwargs)
    assert_one_clear_line(run_cli("ingest", str(spec)), 2, needle)
    assert not (tmp_path / "store").exists()


def test_channel_name_with_special_characters_exits_2(tmp_path, tutorial_data):
    text = spec_text(image=tutorial_data / IMAGE_FILE).replace("[channels.image]", '[channels."em image"]')
    (tmp_path / "spec.toml").write_text(text)
    assert_one_clear_line(run_cli("ingest", str(tmp_path / "spec.toml")), 2, "em image")
    assert not (tmp_path / "store").exists()


def test_unknown_spec_key_is_named(tmp_path, tutorial_data):
    spec = write_spec(tmp_path, image=tutorial_data / IMAGE_FILE, extra_dataset="voxel_resolutoin = [1, 1, 1]")
    assert_one_clear_line(run_cli("ingest", str(spec)), 2, "dataset.voxel_resolutoin")
    assert not (tmp_path / "store").exists()


def test_datatype_that_differs_from_the_source_is_an_error_not_a_cast(tmp_path, tutorial_data):
    spec = write_spec(tmp_path, image=tutorial_data / IMAGE_FILE, image_extra='datatype = "uint16"')
    assert_one_clear_line(run_cli("ingest", str(spec)), 2, "uint16", "uint8", IMAGE_FILE)
    assert not (tmp_path / "store").exists()


def test_missing_source_exits_3_naming_the_file(tmp_path):
    spec = write_spec(tmp_path, image=tmp_path / "nowhere.h5")
    assert_one_clear_line(run_cli("ingest", str(spec)), 3, "nowhere.h5", "not found")
    assert not (tmp_path / "store").exists()


def test_corrupt_source_exits_3_naming_the_file(tmp_path):
    bad = tmp_path / "corrupt.h5"
    bad.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(range(256)) * 8)
    spec = write_spec(tmp_path, image=bad)
    assert_one_clear_line(run_cli("ingest", str(spec)), 3, "corrupt.h5")
    assert_one_clear_line(run_cli("inspect", str(bad)), 3, "corrupt.h5")
    assert not (tmp_path / "store").exists()


def test_ambiguous_hdf5_lists_the_candidates(tmp_path):
    path = write_h5(tmp_path / "two.h5", np.zeros((4, 5, 6), np.uint8), "a/vol")
    import h5py

    with h5py.File(path, "a") as f:
        f.create_dataset("b/vol", data=np.ones((4, 5, 6), np.uint8))
    spec = write_spec(tmp_path, image=path)
    assert_one_clear_line(run_cli("ingest", str(spec)), 3, "ambiguous", "/a/vol", "/b/vol")
    assert_one_clear_line(run_cli("inspect", str(path)), 3, "/a/vol", "/b/vol")
    assert not (tmp_path / "store").exists()
    # naming one resolves it
    picked = run_cli("inspect", f"{path}:/b/vol", "--json")
    assert picked.returncode == 0 and '"window_range": [\n  1,\n  1\n ]' in picked.stdout


def test_unknown_channel_for_restart_exits_2(tutorial_spec):
    assert_one_clear_line(run_cli("ingest", str(tutorial_spec), "--restart", "imgae"), 2, "imgae", "image")


@pytest.mark.parametrize("change, needle", [
    ({"resolution": (4.0, 4.0, 40.0)}, "xvoxelres"),
    ({"offset": (0, 0, 0)}, "xoffset"),
])
def test_redefining_an_existing_dataset_exits_4_and_leaves_the_data_verified(tmp_path, tutorial_data, change, needle):
    first = write_spec(tmp_path, image=tutorial_data / IMAGE_FILE, annotation=tutorial_data / ANNOTATION_FILE)
    assert run_cli("ingest", str(first)).returncode == 0
    before = snapshot(tmp_path / "store")
    other = write_spec(tmp_path, "other.toml", image=tutorial_data / IMAGE_FILE,
                       annotation=tutorial_data / ANNOTATION_FILE, project="kat11_other", **change)
    assert_one_clear_line(run_cli("ingest", str(other)), 4, "neurostorm_kat11_scale3", needle)
    assert snapshot(tmp_path / "store") == before
    assert run_cli("verify", str(first)).returncode == 0


def test_redefining_a_project_or_channel_exits_4(tmp_path, tutorial_data):
    first = write_spec(tmp_path, image=tutorial_data / IMAGE_FILE)
    assert run_cli("ingest", str(first)).returncode == 0
    before = snapshot(tmp_path / "store")
    # the same project name under another dataset
    moved = write_spec(tmp_path, "moved.toml", image=tutorial_data / IMAGE_FILE, dataset="another_dataset")
    assert_one_clear_line(run_cli("ingest", str(moved)), 4, "kat11_scale3", "dataset")
    # the same channel, now declared a time series
    retyped = write_spec(tmp_path, "retyped.toml", image=tutorial_data / IMAGE_FILE, image_type="timeseries")
    assert_one_clear_line(run_cli("ingest", str(retyped)), 4, "image", "channel_type")
    assert snapshot(tmp_path / "store") == before
    assert run_cli("verify", str(first)).returncode == 0


def test_a_channel_whose_size_differs_from_the_dataset_exits_3(tmp_path, tutorial_data):
    small = write_h5(tmp_path / "small.h5", read_cutout(tutorial_data / ANNOTATION_FILE)[:100], "annotation/CUTOUT")
    spec = write_spec(tmp_path, image=tutorial_data / IMAGE_FILE, annotation=small)
    assert_one_clear_line(run_cli("ingest", str(spec)), 3, "small.h5", "z100", "z200")
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize("where", ["after", "before"])
def test_debug_shows_the_traceback(tmp_path, where):
    spec = write_spec(tmp_path, image=tmp_path / "nowhere.h5")
    args = ["ingest", str(spec), "--debug"] if where == "after" else ["--debug", "ingest", str(spec)]
    result = run_cli(*args)
    assert result.returncode == 3 and "Traceback" in result.stderr
    assert "nowhere.h5" in result.stderr.strip().splitlines()[-1]


def test_without_debug_there_is_no_traceback(tmp_path):
    spec = write_spec(tmp_path, image=tmp_path / "nowhere.h5")
    result = run_cli("ingest", str(spec))
    assert result.returncode == 3 and "Traceback" not in result.stderr


@pytest.mark.parametrize("old, new, needle", [
    ('name = "neurostorm_kat11_scale3"', 'name = "info"', "dataset.name = 'info'"),
    ('name = "kat11_scale3"', 'name = "_markers"', "project.name = '_markers'"),
    ('token = "kat11_scale3"', 'token = "nd"', "project.token = 'nd'"),
    ("[channels.image]", "[channels._reports]", "channels._reports = '_reports'"),
    ("[channels.image]", "[channels.createChannel]", "channels.createChannel = 'createChannel'"),
    ('token = "kat11_scale3"', 'token = "Public_Tokens"', "project.token = 'Public_Tokens'"),
])
def test_names_the_store_or_the_rest_api_use_exit_2_and_write_nothing(tmp_path, tutorial_data, old, new, needle):
    text = spec_text(image=tutorial_data / IMAGE_FILE)
    assert old in text
    (tmp_path / "spec.toml").write_text(text.replace(old, new, 1))
    assert_one_clear_line(run_cli("ingest", str(tmp_path / "spec.toml")), 2, needle, "reserved")
    assert not (tmp_path / "store").exists()


def test_more_levels_than_the_volume_has_exit_2_and_write_nothing(tmp_path):
    """70 x 60 voxels: y is 1 voxel wide at level 6, so 6 is built and 7 or 12 refused."""
    source = write_h5(tmp_path / "small.h5", np.arange(5 * 60 * 70, dtype=np.uint32).reshape(5, 60, 70).astype(np.uint8))
    spec = tmp_path / "spec.toml"
    for levels, needle in ((12, "largest allowed is 6"), (7, "1 voxel wide in y at level 6")):
        spec.write_text(spec_text(image=source, offset=(0, 0, 0)).replace("scaling_levels = 0",
                                                                          f"scaling_levels = {levels}"))
        assert_one_clear_line(run_cli("ingest", str(spec)), 2, f"dataset.scaling_levels = {levels}", needle)
        assert_one_clear_line(run_cli("inspect", str(spec)), 2, f"dataset.scaling_levels = {levels}", needle)
        assert not (tmp_path / "store").exists()
    spec.write_text(spec_text(image=source, offset=(0, 0, 0)).replace("scaling_levels = 0", "scaling_levels = 6"))
    result = run_cli("ingest", str(spec))
    assert result.returncode == 0, result.stderr
    info = json.loads((tmp_path / "store/neurostorm_kat11_scale3/kat11_scale3/image/info").read_text())
    assert [s["size"] for s in info["scales"]][-2:] == [[3, 2, 5], [2, 1, 5]]


@pytest.mark.parametrize("command", [["slice", "image", "xy", "1100"], ["view"]])
def test_slice_and_view_before_an_ingest_are_usage_errors(tmp_path, tutorial_data, command):
    spec = write_spec(tmp_path, image=tutorial_data / IMAGE_FILE)
    result = run_cli(command[0], str(spec), *command[1:])
    assert_one_clear_line(result, 2, "run ingest first", "image")
    assert not (tmp_path / "store").exists()
