"""Spec files: TOML into typed values, and every bad input a SpecError naming key and value."""
from __future__ import annotations

from pathlib import Path

import pytest

from ndingest.blocks import Vec3
from ndingest.errors import NdingestError, SpecError
from ndingest.spec import IngestOptions, load_spec, parse_spec

REPO = Path(__file__).resolve().parents[1]
TUTORIAL = REPO / "configs" / "kasthuri11_scale3.toml"

BASE = """\
[dataset]
name = "ds"
offset = [1, 2, 3]
voxel_resolution = [4.0, 4.0, 40.0]
scaling_option = "zslices"
scaling_levels = 2

[project]
name = "pr"
token = "tk"
public = false

[channels.image]
type = "image"
source = "data/img.h5"

[store]
path = "store"
"""


def edited(old: str | None = None, new: str = "", *, after: str | None = None) -> str:
    """BASE with `old` replaced by `new`, or `new` added as a line after the line `after`."""
    if after is not None:
        assert after in BASE
        return BASE.replace(after + "\n", after + "\n" + new + "\n", 1)
    assert old in BASE, old
    return BASE.replace(old, new, 1)


def parse(text: str, tmp_path: Path):
    return parse_spec(text, tmp_path / "spec.toml")


def spec_error(text: str, tmp_path: Path) -> str:
    with pytest.raises(SpecError) as info:
        parse(text, tmp_path)
    assert info.value.exit_code == 2
    return str(info.value)


# --- the tutorial spec ----------------------------------------------------------------

def test_tutorial_spec_gives_typed_values():
    spec = parse_spec(TUTORIAL.read_text(), TUTORIAL)
    ds = spec.dataset
    assert ds.name == "neurostorm_kat11_scale3"
    assert ds.offset_xyz == Vec3(1000, 2000, 1000) and isinstance(ds.offset_xyz, Vec3)
    assert ds.voxel_resolution_nm == (32.0, 32.0, 40.0)
    assert all(isinstance(v, float) for v in ds.voxel_resolution_nm)
    assert ds.scaling_option == "zslices"
    assert ds.scaling_levels == 0
    assert ds.public is True
    assert (spec.project.name, spec.project.token, spec.project.public) == ("kat11_scale3", "kat11_scale3", True)
    assert list(spec.channels) == ["image", "annotation"]
    image, annotation = spec.channels["image"], spec.channels["annotation"]
    assert (image.name, image.type, image.datatype) == ("image", "image", "uint8")
    assert (annotation.name, annotation.type, annotation.datatype) == ("annotation", "annotation", "uint32")
    assert image.window_range is None and image.axes is None and image.readonly is False
    assert spec.ingest == IngestOptions()


def test_tutorial_spec_paths_resolve_against_the_specs_folder():
    spec = parse_spec(TUTORIAL.read_text(), TUTORIAL)
    data = TUTORIAL.parent / "data"
    assert spec.channels["image"].source == str(
        data / "kasthuri11-image-hdf5-3-1000_1300-2000_2200-1000_1200-ocpcutout.h5")
    assert spec.channels["annotation"].source == str(
        data / "kat11segments-annotation-hdf5-3-1000_1300-2000_2200-1000_1200-ocpcutout.h5")
    assert spec.store.path == TUTORIAL.parent / "store"
    assert spec.store.url is None


def test_load_spec_reads_the_tutorial_file_relative_to_its_folder(tmp_path):
    copy = tmp_path / "elsewhere" / "k.toml"
    copy.parent.mkdir()
    copy.write_text(TUTORIAL.read_text())
    spec = load_spec(copy)
    assert spec.store.path == copy.parent.resolve() / "store"
    assert spec.channels["image"].source.startswith(str(copy.parent.resolve() / "data") + "/")


def test_load_spec_of_a_missing_file_is_a_spec_error(tmp_path):
    with pytest.raises(SpecError, match="nope.toml"):
        load_spec(tmp_path / "nope.toml")


def test_absolute_source_path_is_kept(tmp_path):
    spec = parse(edited('source = "data/img.h5"', 'source = "/abs/where/img.h5"'), tmp_path)
    assert spec.channels["image"].source == "/abs/where/img.h5"


def test_hdf5_source_keeps_the_dataset_part(tmp_path):
    spec = parse(edited('source = "data/img.h5"', 'source = "data/f.h5:/group/ds"'), tmp_path)
    assert spec.channels["image"].source == f"{(tmp_path / 'data' / 'f.h5').resolve()}:/group/ds"


def test_glob_source_resolves_its_folder(tmp_path):
    spec = parse(edited('source = "data/img.h5"', 'source = "pages/*.tif"'), tmp_path)
    assert spec.channels["image"].source == str(tmp_path.resolve() / "pages" / "*.tif")


def test_optional_channel_values_are_typed(tmp_path):
    text = edited(after='source = "data/img.h5"',
                  new='datatype = "uint16"\nwindow_range = [0, 4000]\nreadonly = true\naxes = "xyz"')
    image = parse(text, tmp_path).channels["image"]
    assert (image.datatype, image.window_range, image.readonly, image.axes) == ("uint16", (0, 4000), True, "xyz")


def test_integer_voxel_resolution_becomes_floats(tmp_path):
    res = parse(edited("[4.0, 4.0, 40.0]", "[4, 4, 40]"), tmp_path).dataset.voxel_resolution_nm
    assert res == (4.0, 4.0, 40.0) and all(isinstance(v, float) for v in res)


def test_scaling_levels_auto_is_accepted(tmp_path):
    assert parse(edited("scaling_levels = 2", 'scaling_levels = "auto"'), tmp_path).dataset.scaling_levels == "auto"


def test_token_defaults_to_the_project_name(tmp_path):
    assert parse(edited('token = "tk"\n', ""), tmp_path).project.token == "pr"


def test_isotropic_scaling_option_is_accepted(tmp_path):
    assert parse(edited('"zslices"', '"isotropic"'), tmp_path).dataset.scaling_option == "isotropic"


def test_ingest_table_sets_block_options(tmp_path):
    spec = parse(BASE + "\n[ingest]\nblock_chunks = [1, 2, 3]\nblocks_per_task = 7\n", tmp_path)
    assert spec.ingest == IngestOptions(block_chunks=Vec3(1, 2, 3), blocks_per_task=7)


def test_the_old_name_blocks_per_shard_is_read_as_blocks_per_task_and_both_are_refused(tmp_path, caplog):
    spec = parse(BASE + "\n[ingest]\nblocks_per_shard = 7\n", tmp_path)
    assert spec.ingest.blocks_per_task == 7
    assert "ingest.blocks_per_shard is now called ingest.blocks_per_task" in caplog.text
    message = spec_error(BASE + "\n[ingest]\nblocks_per_shard = 7\nblocks_per_task = 8\n", tmp_path)
    assert "ingest.blocks_per_shard and ingest.blocks_per_task both given" in message


def test_spec_error_is_also_a_value_error():
    assert issubclass(SpecError, ValueError) and issubclass(SpecError, NdingestError)
    assert SpecError.exit_code == 2


# --- bad inputs -----------------------------------------------------------------------

def test_unknown_top_level_key_is_named(tmp_path):
    message = spec_error("colour = 3\n" + BASE, tmp_path)
    assert "colour" in message


def test_unknown_top_level_table_is_named(tmp_path):
    assert "extras" in spec_error(BASE + "\n[extras]\na = 1\n", tmp_path)


def test_unknown_dataset_key_is_named(tmp_path):
    assert "dataset.ofset" in spec_error(edited(after='name = "ds"', new="ofset = [0, 0, 0]"), tmp_path)


def test_unknown_project_key_is_named(tmp_path):
    assert "project.tokn" in spec_error(edited(after='token = "tk"', new='tokn = "x"'), tmp_path)


def test_unknown_channel_key_is_named(tmp_path):
    message = spec_error(edited(after='type = "image"', new='data_type = "uint8"'), tmp_path)
    assert "channels.image.data_type" in message


def test_unknown_store_key_is_named(tmp_path):
    assert "store.bucket" in spec_error(edited(after='path = "store"', new='bucket = "b"'), tmp_path)


@pytest.mark.parametrize("old, new, key, value", [
    ('name = "ds"', 'name = "my dataset"', "dataset.name", "my dataset"),
    ('name = "ds"', 'name = "ds-1"', "dataset.name", "ds-1"),
    ('name = "ds"', 'name = "dätä"', "dataset.name", "dätä"),
    ('name = "ds"', 'name = ""', "dataset.name", "''"),
    ('name = "pr"', 'name = "my project"', "project.name", "my project"),
    ('name = "pr"', 'name = "pr/x"', "project.name", "pr/x"),
    ('token = "tk"', 'token = "tok en"', "project.token", "tok en"),
    ('token = "tk"', 'token = "tk.1"', "project.token", "tk.1"),
    ("[channels.image]", '[channels."my image"]', "channels.my image", "my image"),
    ("[channels.image]", '[channels."img$"]', "channels.img$", "img$"),
])
def test_bad_names_are_spec_errors_naming_key_and_value(tmp_path, old, new, key, value):
    message = spec_error(edited(old, new), tmp_path)
    assert key in message and value in message


@pytest.mark.parametrize("old, new", [
    ('name = "ds"', 'name = "ds\\n"'),
    ('name = "pr"', 'name = "pr\\n"'),
    ('token = "tk"', 'token = "tk\\n"'),
    ("[channels.image]", '[channels."image\\n"]'),
])
def test_names_with_a_trailing_newline_are_rejected(tmp_path, old, new):
    spec_error(edited(old, new), tmp_path)


@pytest.mark.parametrize("old, new, key, value", [
    ("offset = [1, 2, 3]", "offset = [-1, 2, 3]", "dataset.offset", "-1"),
    ("offset = [1, 2, 3]", "offset = [1, 2]", "dataset.offset", "[1, 2]"),
    ("offset = [1, 2, 3]", "offset = [1, 2, 3, 4]", "dataset.offset", "[1, 2, 3, 4]"),
    ("offset = [1, 2, 3]", "offset = [1.5, 2, 3]", "dataset.offset", "1.5"),
    ("offset = [1, 2, 3]", 'offset = "1,2,3"', "dataset.offset", "1,2,3"),
    ("voxel_resolution = [4.0, 4.0, 40.0]", "voxel_resolution = [0.0, 4.0, 40.0]", "dataset.voxel_resolution", "0.0"),
    ("voxel_resolution = [4.0, 4.0, 40.0]", "voxel_resolution = [4.0, -4.0, 40.0]", "dataset.voxel_resolution", "-4.0"),
    ("voxel_resolution = [4.0, 4.0, 40.0]", "voxel_resolution = [4.0, 4.0]", "dataset.voxel_resolution", "[4.0, 4.0]"),
    ('scaling_option = "zslices"', 'scaling_option = "xyz"', "dataset.scaling_option", "xyz"),
    ("scaling_levels = 2", "scaling_levels = -1", "dataset.scaling_levels", "-1"),
    ("scaling_levels = 2", "scaling_levels = 1.5", "dataset.scaling_levels", "1.5"),
    ("scaling_levels = 2", 'scaling_levels = "all"', "dataset.scaling_levels", "all"),
    ("scaling_levels = 2", "scaling_levels = true", "dataset.scaling_levels", "True"),
    ('type = "image"', 'type = "img"', "channels.image.type", "img"),
    ('type = "image"', 'type = "segmentation"', "channels.image.type", "segmentation"),
    ("public = false", "public = 0", "project.public", "0"),
    ('source = "data/img.h5"', "source = 3", "channels.image.source", "3"),
    ('source = "data/img.h5"', 'source = ""', "channels.image.source", "''"),
])
def test_bad_dataset_and_channel_values_name_key_and_value(tmp_path, old, new, key, value):
    message = spec_error(edited(old, new), tmp_path)
    assert key in message and value in message


@pytest.mark.parametrize("line, key, value", [
    ('datatype = "int8"', "channels.image.datatype", "int8"),
    ('datatype = "float64"', "channels.image.datatype", "float64"),
    ("window_range = [255, 0]", "channels.image.window_range", "[255, 0]"),
    ("window_range = [0]", "channels.image.window_range", "[0]"),
    ("window_range = [0, 1, 2]", "channels.image.window_range", "[0, 1, 2]"),
    ('window_range = "0,255"', "channels.image.window_range", "0,255"),
    ('axes = "zy"', "channels.image.axes", "zy"),
    ('axes = "zzy"', "channels.image.axes", "zzy"),
    ('axes = "abc"', "channels.image.axes", "abc"),
    ('axes = "ztyx"', "channels.image.axes", "ztyx"),
    ('axes = "ttzyx"', "channels.image.axes", "ttzyx"),
    ('readonly = "yes"', "channels.image.readonly", "yes"),
])
def test_bad_optional_channel_values_name_key_and_value(tmp_path, line, key, value):
    message = spec_error(edited(after='source = "data/img.h5"', new=line), tmp_path)
    assert key in message and value in message


def test_boolean_window_range_is_rejected(tmp_path):
    spec_error(edited(after='source = "data/img.h5"', new="window_range = [false, true]"), tmp_path)


def test_axes_with_a_trailing_newline_are_rejected(tmp_path):
    spec_error(edited(after='source = "data/img.h5"', new='axes = "zyx\\n"'), tmp_path)


def test_missing_store_path_names_the_key(tmp_path):
    assert "store.path" in spec_error(edited('path = "store"\n', ""), tmp_path)


def test_store_url_that_is_not_an_http_url_is_rejected(tmp_path):
    message = spec_error(edited('path = "store"', 'url = "localhost:8000/nd"'), tmp_path)
    assert "store.url" in message and "localhost:8000/nd" in message


def test_store_path_as_an_s3_url_needs_a_catalog_url_and_other_urls_are_rejected(tmp_path):
    message = spec_error(edited('path = "store"', 'path = "s3://bucket/prefix"'), tmp_path)
    assert "store.path" in message and "s3://bucket/prefix" in message and "needs store.catalog" in message
    message = spec_error(edited('path = "store"', 'path = "gs://bucket/prefix"'), tmp_path)
    assert "store.path" in message and "gs://bucket/prefix" in message
    message = spec_error(edited('path = "store"', 'path = "s3:///prefix"\ncatalog = "postgresql://h/db"'), tmp_path)
    assert "store.path" in message and "s3:///prefix" in message


def test_store_path_as_an_s3_url_with_a_catalog_is_the_buckets_prefix(tmp_path):
    text = edited('path = "store"', 'path = "s3://bucket/pre/fix"\ncatalog = "postgresql://u:p@h:5432/db"')
    spec = parse_spec(text, tmp_path / "spec.toml")
    assert str(spec.store.path) == "s3://bucket/pre/fix" and spec.store.catalog == "postgresql://u:p@h:5432/db"


@pytest.mark.parametrize("table", ["dataset", "project", "channels", "store"])
def test_missing_table_is_named(tmp_path, table):
    lines = BASE.split("\n\n")
    text = "\n\n".join(part for part in lines if not part.startswith(f"[{table}"))
    assert f"[{table}]" in spec_error(text, tmp_path)


def test_channel_that_is_not_a_table_is_named(tmp_path):
    text = BASE.replace('[channels.image]\ntype = "image"\nsource = "data/img.h5"\n', '[channels]\nimage = "x.h5"\n')
    assert "channels.image" in spec_error(text, tmp_path)


def test_channels_table_without_a_channel_is_an_error(tmp_path):
    text = BASE.replace('[channels.image]\ntype = "image"\nsource = "data/img.h5"\n', "[channels]\n")
    assert "channels" in spec_error(text, tmp_path)


def test_missing_required_keys_are_named(tmp_path):
    assert "dataset.name" in spec_error(edited('name = "ds"\n', ""), tmp_path)
    assert "dataset.voxel_resolution" in spec_error(edited("voxel_resolution = [4.0, 4.0, 40.0]\n", ""), tmp_path)
    assert "channels.image.type" in spec_error(edited('type = "image"\n', ""), tmp_path)
    assert "channels.image.source" in spec_error(edited('source = "data/img.h5"\n', ""), tmp_path)


def test_invalid_toml_is_a_spec_error_naming_the_file(tmp_path):
    message = spec_error(BASE + "\n[dataset\nname = ", tmp_path)
    assert "spec.toml" in message and "TOML" in message


def test_spec_errors_can_be_caught_as_value_errors(tmp_path):
    with pytest.raises(ValueError):
        parse(edited('"zslices"', '"xyz"'), tmp_path)


RESERVED = ["_markers", "_reports", "info", "createChannel", "deleteChannel", "public_tokens", "public_datasets",
            "autoIngest", "resource", "ocp", "nd"]


@pytest.mark.parametrize("reserved", RESERVED)
@pytest.mark.parametrize("old, template, key", [
    ('name = "ds"', 'name = "{}"', "dataset.name"),
    ('name = "pr"', 'name = "{}"', "project.name"),
    ('token = "tk"', 'token = "{}"', "project.token"),
    ("[channels.image]", "[channels.{}]", "channels.{}"),
])
def test_names_the_store_or_the_rest_api_use_are_refused(tmp_path, reserved, old, template, key):
    message = spec_error(edited(old, template.format(reserved)), tmp_path)
    assert key.format(reserved) in message and repr(reserved) in message and "reserved" in message


@pytest.mark.parametrize("name", ["INFO", "_Markers", "Nd", "createchannel"])
def test_reserved_names_are_refused_in_any_case(tmp_path, name):
    """A case-insensitive file system would make `_Markers` the store's markers folder."""
    message = spec_error(edited('name = "pr"', f'name = "{name}"'), tmp_path)
    assert "project.name" in message and repr(name) in message


@pytest.mark.parametrize("name", ["information", "nd1", "my_markers", "ocp_data", "resources"])
def test_names_that_only_contain_a_reserved_word_are_fine(tmp_path, name):
    assert parse(edited('name = "pr"', f'name = "{name}"'), tmp_path).project.name == name
