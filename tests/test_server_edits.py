"""Edit records: what a POST leaves for `verify`, and which blocks of which level it touched."""
from __future__ import annotations

from ndingest.blocks import Box, Vec3
from ndingest.edits import latest_edit, read_edits, record_edit


def box(x, y, z) -> Box:
    return Box(Vec3(x[0], y[0], z[0]), Vec3(x[1], y[1], z[1]))


def test_records_read_back_oldest_first_with_boxes_times_key_and_mode(tmp_path):
    assert read_edits(tmp_path) == [] and latest_edit(tmp_path) is None
    record_edit(tmp_path, [box((0, 4), (0, 4), (0, 1))], key_id="abcd1234", when=100.0)
    record_edit(tmp_path, [box((5, 9), (0, 4), (2, 3))], key_id=None, when=200.0, times=[1, 2], mode="replace")
    first, second = read_edits(tmp_path)
    assert (first.boxes, first.times, first.when, first.key_id, first.mode) == (
        (box((0, 4), (0, 4), (0, 1)),), None, 100.0, "abcd1234", "overwrite")
    assert (second.times, second.key_id, second.mode) == ((1, 2), None, "replace")
    assert latest_edit(tmp_path) is not None


def test_latest_changes_with_every_record(tmp_path):
    record_edit(tmp_path, [box((0, 1), (0, 1), (0, 1))], key_id=None)
    before = latest_edit(tmp_path)
    record_edit(tmp_path, [box((0, 1), (0, 1), (0, 1))], key_id=None)
    assert latest_edit(tmp_path) != before


def test_an_edit_touches_the_level_0_blocks_it_overlaps_and_no_other(tmp_path):
    record_edit(tmp_path, [box((10, 20), (10, 20), (3, 4))], key_id=None)
    (edit,) = read_edits(tmp_path)
    f = Vec3(2, 2, 1)
    assert edit.touches(box((0, 16), (0, 16), (0, 16)), level=0, factors=f)
    assert not edit.touches(box((20, 36), (0, 16), (0, 16)), level=0, factors=f)  # half-open: x 20 is not edited
    assert not edit.touches(box((0, 16), (0, 16), (4, 16)), level=0, factors=f)


def test_an_edit_touches_upper_levels_where_its_voxels_were_reduced_into(tmp_path):
    record_edit(tmp_path, [box((11, 12), (11, 12), (3, 4))], key_id=None)  # one voxel
    (edit,) = read_edits(tmp_path)
    f = Vec3(2, 2, 1)
    assert edit.touches(box((5, 6), (5, 6), (3, 4)), level=1, factors=f)     # 11 // 2 = 5
    assert not edit.touches(box((6, 8), (5, 6), (3, 4)), level=1, factors=f)
    assert edit.touches(box((2, 3), (2, 3), (3, 4)), level=2, factors=f)     # 11 // 4 = 2


def test_a_time_series_edit_touches_only_its_time_points(tmp_path):
    record_edit(tmp_path, [box((0, 4), (0, 4), (0, 1))], key_id=None, times=[2])
    (edit,) = read_edits(tmp_path)
    whole = box((0, 64), (0, 64), (0, 16))
    assert edit.touches(whole, level=0, factors=Vec3(2, 2, 1), t=2)
    assert not edit.touches(whole, level=0, factors=Vec3(2, 2, 1), t=1)


def test_a_record_names_its_key_by_name_and_old_records_with_key_ids_still_read(tmp_path):
    import json

    from ndingest.edits import Edit, edits_dir

    record_edit(tmp_path, [box((0, 4), (0, 4), (0, 1))], key_name="ann", when=100.0)
    record_edit(tmp_path, [box((0, 4), (0, 4), (0, 1))], when=150.0)
    old = {"boxes": ["0-4_0-4_0-1"], "times": None, "when": 50.0, "key": "0ldc0ffe", "mode": "overwrite", "level": 0}
    (edits_dir(tmp_path) / "00000000000000000001-1-aaaaaaaa.json").write_text(json.dumps(old))  # before names
    first, named, nameless = read_edits(tmp_path)
    assert (first.key_id, first.key_name, first.by, first.when) == ("0ldc0ffe", None, "0ldc0ffe", 50.0)
    assert (named.key_id, named.key_name, named.by) == (None, "ann", "ann")
    assert (nameless.key_id, nameless.key_name, nameless.by) == (None, None, None)
    listed = [e.to_listing() for e in (first, named, nameless)]
    assert [e["key"] for e in listed] == [None, "ann", None]
    assert "0ldc0ffe" not in json.dumps(listed)  # no key material, an old record's id neither
    assert [Edit.from_record(e, where="listing").by for e in listed] == [None, "ann", None]  # as a remote verify reads it
