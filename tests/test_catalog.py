"""The catalog on a real SQLite file: create once, no-op on the same values, conflict otherwise."""
from __future__ import annotations

import sqlite3
import threading
import time

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from ndingest import catalog
from ndingest.blocks import Vec3
from ndingest.catalog import (
    PROPAGATE_DONE, PROPAGATE_NOT, channel_row, check_rows, dataset_row, delete_channel, engine_for,
    ensure_rows, find_channel, project_rows, set_propagate,
)
from ndingest.errors import CatalogConflict, NdingestError, StoreError
from ndingest.spec import ChannelSpec, DatasetSpec, ProjectSpec

DATASET = DatasetSpec(name="kat11", offset_xyz=Vec3(1000, 2000, 1000), voxel_resolution_nm=(32.0, 32.0, 40.0),
                      scaling_option="zslices", scaling_levels=0)
PROJECT = ProjectSpec(name="kat11_scale3", token="kat11_tok")
IMAGE = ChannelSpec(name="image", type="image", source="/data/img.h5")
SIZE = Vec3(300, 200, 200)


def rows(*, dataset=DATASET, project=PROJECT, channel=IMAGE, datatype="uint8", size=SIZE,
         window=(0.0, 254.0), time_range=(0, 0), default=True):
    return [
        dataset_row(dataset, size_xyz=size, levels=0),
        *project_rows(project, dataset=dataset.name),
        channel_row(channel, project=project.name, datatype=datatype, time_range=time_range,
                    window=window, default=default),
    ]


def all_rows(engine, table):
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.select(table)).mappings()]


@pytest.fixture
def engine(tmp_path):
    return engine_for(tmp_path / "store" / "catalog.sqlite", create=True)


def test_engine_for_creates_the_file_and_tables(tmp_path):
    path = tmp_path / "new" / "catalog.sqlite"
    engine = engine_for(path, create=True)
    assert path.is_file()
    assert set(sa.inspect(engine).get_table_names()) == {"datasets", "projects", "tokens", "channels",
                                                         "ndingest_schema"}


def test_engine_for_without_create_on_a_missing_file_is_none_and_creates_nothing(tmp_path):
    path = tmp_path / "missing" / "catalog.sqlite"
    assert engine_for(path, create=False) is None
    assert not path.exists() and not path.parent.exists()


def test_check_rows_never_creates_the_catalog(tmp_path):
    path = tmp_path / "catalog.sqlite"
    check_rows(engine_for(path, create=False), rows())
    assert not path.exists()


def test_ensure_rows_creates_dataset_project_token_and_channel(engine):
    ensure_rows(engine, rows())
    [ds] = all_rows(engine, catalog.datasets)
    assert ds == {
        "dataset_name": "kat11", "ximagesize": 300, "yimagesize": 200, "zimagesize": 200,
        "xoffset": 1000, "yoffset": 2000, "zoffset": 1000, "xvoxelres": 32.0, "yvoxelres": 32.0,
        "zvoxelres": 40.0, "scalingoption": 0, "scalinglevels": 0, "public": 1,
    }
    [pr] = all_rows(engine, catalog.projects)
    assert (pr["project_name"], pr["dataset"], pr["public"]) == ("kat11_scale3", "kat11", 1)
    [tk] = all_rows(engine, catalog.tokens)
    assert (tk["token_name"], tk["project"]) == ("kat11_tok", "kat11_scale3")
    [ch] = all_rows(engine, catalog.channels)
    assert {k: ch[k] for k in ("project", "channel_name", "channel_type", "channel_datatype", "propagate",
                               "readonly", "starttime", "endtime", "startwindow", "endwindow", "default")} == {
        "project": "kat11_scale3", "channel_name": "image", "channel_type": "image", "channel_datatype": "uint8",
        "propagate": PROPAGATE_NOT, "readonly": 0, "starttime": 0, "endtime": 0, "startwindow": 0.0,
        "endwindow": 254.0, "default": 1,
    }


def test_ensure_rows_with_the_same_rows_again_is_a_no_op(engine):
    ensure_rows(engine, rows())
    before = {t.name: all_rows(engine, t) for t in catalog.metadata.sorted_tables}
    ensure_rows(engine, rows())
    check_rows(engine, rows())
    assert {t.name: all_rows(engine, t) for t in catalog.metadata.sorted_tables} == before


def test_isotropic_dataset_is_stored_as_scaling_option_one(engine):
    iso = DatasetSpec(name="iso", offset_xyz=Vec3(0, 0, 0), voxel_resolution_nm=(4.0, 4.0, 4.0),
                      scaling_option="isotropic", scaling_levels=0, public=False)
    ensure_rows(engine, [dataset_row(iso, size_xyz=Vec3(10, 10, 10), levels=3)])
    [ds] = all_rows(engine, catalog.datasets)
    assert (ds["scalingoption"], ds["scalinglevels"], ds["public"]) == (1, 3, 0)


@pytest.mark.parametrize("change, field, stored, requested", [
    (dict(size=Vec3(301, 200, 200)), "ximagesize", "300", "301"),
    (dict(dataset=DatasetSpec(name="kat11", offset_xyz=Vec3(1000, 2000, 1001),
                              voxel_resolution_nm=(32.0, 32.0, 40.0), scaling_option="zslices",
                              scaling_levels=0)), "zoffset", "1000", "1001"),
    (dict(dataset=DatasetSpec(name="kat11", offset_xyz=Vec3(1000, 2000, 1000),
                              voxel_resolution_nm=(32.0, 32.0, 50.0), scaling_option="zslices",
                              scaling_levels=0)), "zvoxelres", "40.0", "50.0"),
    (dict(project=ProjectSpec(name="kat11_scale3", token="kat11_tok", public=False)), "public", "1", "0"),
    (dict(datatype="uint16"), "channel_datatype", "'uint8'", "'uint16'"),
    (dict(window=(0.0, 255.0)), "endwindow", "254.0", "255.0"),
    (dict(channel=ChannelSpec(name="image", type="annotation", source="/x.h5")),
     "channel_type", "'image'", "'annotation'"),
    (dict(time_range=(0, 3)), "endtime", "0", "3"),
])
def test_different_value_raises_conflict_naming_field_and_both_values(engine, change, field, stored, requested):
    ensure_rows(engine, rows())
    before = {t.name: all_rows(engine, t) for t in catalog.metadata.sorted_tables}
    for attempt in (ensure_rows, check_rows):
        with pytest.raises(CatalogConflict) as info:
            attempt(engine, rows(**change))
        message = str(info.value)
        assert field in message and stored in message and requested in message
        assert info.value.exit_code == 4 and isinstance(info.value, NdingestError)
    assert {t.name: all_rows(engine, t) for t in catalog.metadata.sorted_tables} == before


def test_token_pointing_to_another_project_is_a_conflict(engine):
    ensure_rows(engine, rows())
    other = ProjectSpec(name="other", token="kat11_tok")
    with pytest.raises(CatalogConflict, match="kat11_tok") as info:
        ensure_rows(engine, rows(project=other))
    assert "project" in str(info.value) and "'other'" in str(info.value)


def test_a_conflict_writes_none_of_the_rows_before_it(engine):
    ensure_rows(engine, rows())
    new_project = ProjectSpec(name="second", token="second")
    batch = [*project_rows(new_project, dataset="kat11"),
             dataset_row(DATASET, size_xyz=Vec3(1, 1, 1), levels=0)]  # conflicts after the new rows
    with pytest.raises(CatalogConflict):
        ensure_rows(engine, batch)
    assert [p["project_name"] for p in all_rows(engine, catalog.projects)] == ["kat11_scale3"]
    assert [t["token_name"] for t in all_rows(engine, catalog.tokens)] == ["kat11_tok"]


def test_check_rows_on_an_empty_catalog_writes_nothing(engine):
    check_rows(engine, rows())
    assert all(all_rows(engine, t) == [] for t in catalog.metadata.sorted_tables)


def test_propagate_differences_are_not_a_conflict(engine):
    ensure_rows(engine, rows())
    set_propagate(engine, "kat11_scale3", "image", PROPAGATE_DONE)
    ensure_rows(engine, rows())
    check_rows(engine, rows())
    assert find_channel(engine, "kat11_scale3", "image")["propagate"] == PROPAGATE_DONE


def test_same_channel_name_in_two_projects_is_fine(engine):
    ensure_rows(engine, rows())
    second = ProjectSpec(name="second", token="second_tok")
    ensure_rows(engine, rows(project=second, datatype="uint16"))
    assert find_channel(engine, "kat11_scale3", "image")["channel_datatype"] == "uint8"
    assert find_channel(engine, "second", "image")["channel_datatype"] == "uint16"


def test_channel_names_are_unique_within_a_project(engine):
    ensure_rows(engine, rows())
    stored = find_channel(engine, "kat11_scale3", "image")
    duplicate = {k: v for k, v in stored.items() if k != "id"}
    with pytest.raises(IntegrityError):
        with engine.begin() as conn:
            conn.execute(sa.insert(catalog.channels).values(**duplicate))
    assert len(all_rows(engine, catalog.channels)) == 1


def test_two_channels_in_one_project_coexist(engine):
    annotation = ChannelSpec(name="annotation", type="annotation", source="/a.h5")
    ensure_rows(engine, rows())
    ensure_rows(engine, rows(channel=annotation, datatype="uint32", default=False))
    names = sorted(c["channel_name"] for c in all_rows(engine, catalog.channels))
    assert names == ["annotation", "image"]


def test_find_channel_of_an_unknown_channel_is_none(engine):
    ensure_rows(engine, rows())
    assert find_channel(engine, "kat11_scale3", "nope") is None
    assert find_channel(engine, "nope", "image") is None


def test_delete_channel_removes_only_that_channel(engine):
    annotation = ChannelSpec(name="annotation", type="annotation", source="/a.h5")
    ensure_rows(engine, rows())
    ensure_rows(engine, rows(channel=annotation, datatype="uint32", default=False))
    delete_channel(engine, "kat11_scale3", "image")
    assert find_channel(engine, "kat11_scale3", "image") is None
    assert find_channel(engine, "kat11_scale3", "annotation") is not None
    assert len(all_rows(engine, catalog.projects)) == 1


def test_a_deleted_channel_can_be_created_again_with_other_values(engine):
    ensure_rows(engine, rows())
    delete_channel(engine, "kat11_scale3", "image")
    ensure_rows(engine, rows(datatype="uint16"))
    assert find_channel(engine, "kat11_scale3", "image")["channel_datatype"] == "uint16"


def test_delete_channel_without_a_catalog_is_a_no_op():
    delete_channel(None, "kat11_scale3", "image")


def test_catalog_persists_across_engines_on_the_same_file(tmp_path):
    path = tmp_path / "catalog.sqlite"
    ensure_rows(engine_for(path, create=True), rows())
    reopened = engine_for(path, create=False)
    assert reopened is not None
    assert find_channel(reopened, "kat11_scale3", "image")["channel_type"] == "image"
    with pytest.raises(CatalogConflict):
        check_rows(reopened, rows(datatype="float32"))


def _hold_exclusive_lock(path, seconds: float) -> threading.Thread:
    """A second, real SQLite connection that locks the whole catalog for `seconds`."""
    locked = threading.Event()

    def hold():
        other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        other.execute("BEGIN EXCLUSIVE")
        locked.set()
        time.sleep(seconds)
        other.execute("COMMIT")
        other.close()

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert locked.wait(10)
    return thread


def _impatient(path):
    """An engine whose SQLite driver gives up on a lock at once ("database is locked")."""
    return sa.create_engine(f"sqlite:///{path}", connect_args={"timeout": 0.01}, poolclass=sa.pool.NullPool)


def test_check_rows_waits_for_a_locked_catalog_and_still_finds_the_conflict(tmp_path):
    path = tmp_path / "catalog.sqlite"
    ensure_rows(engine_for(path, create=True), rows())
    holder = _hold_exclusive_lock(path, 1.0)
    started = time.monotonic()
    with pytest.raises(CatalogConflict, match="xvoxelres"):
        check_rows(_impatient(path), rows(dataset=DatasetSpec(
            name="kat11", offset_xyz=Vec3(1000, 2000, 1000), voxel_resolution_nm=(4.0, 32.0, 40.0),
            scaling_option="zslices", scaling_levels=0)))
    assert time.monotonic() - started >= 0.5  # it waited for the lock, not skipped the check
    holder.join()


def test_check_rows_on_a_catalog_locked_for_too_long_is_a_store_error_not_a_pass(tmp_path):
    path = tmp_path / "catalog.sqlite"
    ensure_rows(engine_for(path, create=True), rows())
    holder = _hold_exclusive_lock(path, 2.0)
    with pytest.raises(StoreError, match="locked") as info:
        check_rows(_impatient(path), rows(), patience=0.3)
    assert info.value.exit_code == 7
    holder.join()


def test_check_rows_treats_only_a_missing_table_as_nothing_stored(tmp_path):
    """A catalog from before the channels table existed: its other rows are still checked.
    Any other failure to read (here a file that is not a database) stops with a store error."""
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"not a database, " * 512)
    with pytest.raises(StoreError, match="garbage.sqlite"):
        check_rows(_impatient(garbage), rows())
    path = tmp_path / "catalog.sqlite"
    engine = _impatient(path)
    catalog.datasets.create(engine)
    ensure_rows(engine, rows()[:1])
    check_rows(engine, rows())  # same dataset, no channels table: no conflict
    with pytest.raises(CatalogConflict, match="xoffset"):
        check_rows(engine, rows(dataset=DatasetSpec(
            name="kat11", offset_xyz=Vec3(0, 2000, 1000), voxel_resolution_nm=(32.0, 32.0, 40.0),
            scaling_option="zslices", scaling_levels=0)))


def test_find_dataset_waits_for_a_locked_catalog_rather_than_finding_nothing(tmp_path):
    """The size check before a run reads the dataset row: a busy catalog is not an empty one."""
    path = tmp_path / "catalog.sqlite"
    assert catalog.find_dataset(None, "kat11") is None and catalog.find_dataset(_impatient(path), "kat11") is None
    ensure_rows(engine_for(path, create=True), rows())
    holder = _hold_exclusive_lock(path, 1.0)
    started = time.monotonic()
    assert catalog.find_dataset(_impatient(path), "kat11")["zimagesize"] == 200
    assert time.monotonic() - started >= 0.5
    holder.join()
    holder = _hold_exclusive_lock(path, 2.0)
    with pytest.raises(StoreError, match="locked"):
        catalog.find_dataset(_impatient(path), "kat11", patience=0.3)
    holder.join()
