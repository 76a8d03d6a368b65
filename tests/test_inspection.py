"""summarize() and the tutorial's table: x/y/z from (z, y, x) cutouts, never swapped."""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from ndingest.inspection import SourceSummary, format_table, source_table, spec_table, summarize
from ndingest.sources import open_source
from ndingest.spec import parse_spec

TUTORIAL = Path(__file__).resolve().parents[1] / "configs" / "kasthuri11_scale3.toml"
JSON_KEYS = {"x_size", "y_size", "z_size", "time_range", "datatype", "window_range", "axes"}


def cutout_file(path: Path, data: np.ndarray) -> Path:
    """ndstore's cutout layout: image/CUTOUT (z, y, x) or (t, z, y, x), CHANNELTYPE, DATATYPE."""
    with h5py.File(path, "w") as f:
        group = f.create_group("image")
        group.create_dataset("CUTOUT", data=data)
        group.create_dataset("CHANNELTYPE", data="image")
        group.create_dataset("DATATYPE", data=data.dtype.name)
    return path


@pytest.fixture
def cutout_2_3_5(tmp_path) -> np.ndarray:
    data = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5) + 10  # (z, y, x)
    cutout_file(tmp_path / "c.h5", data)
    return data


def test_sizes_come_from_the_zyx_cutout_in_the_right_order(tmp_path, cutout_2_3_5):
    summary = summarize(open_source(str(tmp_path / "c.h5")))
    assert (summary.x_size, summary.y_size, summary.z_size) == (5, 3, 2)


@pytest.mark.parametrize("fill, window", [(np.nan, (-2.5, 7.0)), (np.inf, (-2.5, 7.0))])
def test_a_float_window_range_counts_finite_values_only(tmp_path, fill, window):
    data = np.full((2, 3, 5), fill, np.float32)
    data[0, 1, 2], data[1, 2, 4] = -2.5, 7.0
    assert summarize(open_source(str(cutout_file(tmp_path / "f.h5", data)))).window_range == window
    all_nan = np.full((2, 3, 5), np.nan, np.float32)
    assert summarize(open_source(str(cutout_file(tmp_path / "n.h5", all_nan)))).window_range == (0, 0)


def test_3d_summary_has_time_range_zero_dtype_window_and_axes(tmp_path, cutout_2_3_5):
    summary = summarize(open_source(str(tmp_path / "c.h5")))
    assert summary == SourceSummary(x_size=5, y_size=3, z_size=2, time_range=(0, 0), datatype="uint8",
                                    window_range=(10, 39), axes="zyx")


def test_4d_summary_has_time_range_to_last_time_point(tmp_path):
    data = np.random.default_rng(1).integers(0, 5000, size=(4, 2, 3, 5)).astype(np.uint16)
    summary = summarize(open_source(str(cutout_file(tmp_path / "ts.h5", data))))
    assert (summary.x_size, summary.y_size, summary.z_size) == (5, 3, 2)
    assert summary.time_range == (0, 3)
    assert summary.datatype == "uint16"
    assert summary.window_range == (data.min(), data.max())
    assert summary.axes == "tzyx"


def test_xyz_file_summary_reports_x_from_the_first_axis(tmp_path):
    xyz = np.zeros((5, 3, 2), np.float32)  # stored x slowest
    xyz[4, 2, 1], xyz[0, 0, 0] = 2.5, -1.5
    with h5py.File(tmp_path / "v.h5", "w") as f:
        f.create_dataset("vol", data=xyz)
    summary = summarize(open_source(str(tmp_path / "v.h5"), axes="xyz"))
    assert (summary.x_size, summary.y_size, summary.z_size) == (5, 3, 2)
    assert summary.axes == "xyz"
    assert summary.datatype == "float32" and summary.window_range == (-1.5, 2.5)


def test_given_window_is_used_as_is(tmp_path, cutout_2_3_5):
    summary = summarize(open_source(str(tmp_path / "c.h5")), window=(0, 255))
    assert summary.window_range == (0, 255)


def test_progress_reports_every_voxel_once(tmp_path, cutout_2_3_5):
    seen: list[int] = []
    summarize(open_source(str(tmp_path / "c.h5")), progress=seen.append)
    assert sum(seen) == cutout_2_3_5.size


def test_source_table_names_each_value(tmp_path, cutout_2_3_5):
    rows = dict(source_table(summarize(open_source(str(tmp_path / "c.h5")))))
    assert rows["x size"] == "5" and rows["y size"] == "3" and rows["z size"] == "2"
    assert rows["time range"] == "(0, 0)"
    assert rows["data type"] == "uint8"
    assert rows["window range"] == "(10, 39)"
    assert "zyx" in rows.values()


def test_format_table_contains_every_row(tmp_path, cutout_2_3_5):
    rows = source_table(summarize(open_source(str(tmp_path / "c.h5"))))
    text = format_table(rows)
    lines = text.splitlines()
    assert len(lines) == len(rows) + 2  # header and rule
    for (key, value), line in zip(rows, lines[2:]):
        assert line.startswith(key) and line.rstrip().endswith(value)
        assert " | " in line


def test_format_table_aligns_the_value_column():
    text = format_table([("a", "1"), ("longer key", "2")])
    bars = {line.index("|") for line in text.splitlines()}
    assert len(bars) == 1


def test_spec_table_gives_the_tutorials_rows(tmp_path, cutout_2_3_5):
    spec = parse_spec(TUTORIAL.read_text(), TUTORIAL)
    summary = summarize(open_source(str(tmp_path / "c.h5")))
    rows = spec_table(spec, "image", summary, levels=0)
    text = format_table(rows)
    for key, value in rows:
        assert key in text and value in text
    named = dict(rows)
    assert named["dataset name"] == "neurostorm_kat11_scale3"
    assert (named["x offset"], named["y offset"], named["z offset"]) == ("1000", "2000", "1000")
    assert (named["x size"], named["y size"], named["z size"]) == ("5", "3", "2")
    assert named["z voxel resolution"] == "40 nm"
    assert named["scaling option"] == "zslices"
    assert named["axes (file order, slowest first)"] == "zyx"


def test_summary_json_has_exactly_the_inspect_keys(tmp_path, cutout_2_3_5):
    d = summarize(open_source(str(tmp_path / "c.h5"))).to_json()
    assert set(d) == JSON_KEYS
    assert d["time_range"] == [0, 0] and d["window_range"] == [10, 39]
    assert d["x_size"] == 5 and d["y_size"] == 3 and d["z_size"] == 2


def test_summary_round_trips_through_json_text(tmp_path):
    data = np.random.default_rng(2).integers(0, 2**31, size=(3, 2, 3, 5)).astype(np.uint32)
    summary = summarize(open_source(str(cutout_file(tmp_path / "ts.h5", data))))
    again = SourceSummary.from_json(json.loads(json.dumps(summary.to_json())))
    assert again == summary
    assert isinstance(again.time_range, tuple) and isinstance(again.window_range, tuple)

