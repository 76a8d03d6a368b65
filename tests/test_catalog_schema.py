"""Catalog schema versions: an older catalog is upgraded by a write, step by step and logged;
a read never writes; a newer one is refused. tests/fixtures/catalog_v1.sqlite is the tutorial's
kat11_scale3 catalog as ndingest wrote it before it kept a version (schema 1)."""
from __future__ import annotations

import logging
import shutil
import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa

from ndingest import catalog
from ndingest.catalog import SCHEMA_VERSION, SqlCatalog, SqliteCatalog, engine_for
from ndingest.errors import StoreError

FIXTURE = Path(__file__).parent / "fixtures" / "catalog_v1.sqlite"
TABLES = ("datasets", "projects", "tokens", "channels")


def dump(engine: sa.Engine) -> dict[str, list[dict]]:
    """Every row of the four ndstore tables, in key order."""
    with engine.connect() as conn:
        return {t: [dict(r) for r in conn.execute(sa.select(catalog.metadata.tables[t])
                                                  .order_by(*catalog.metadata.tables[t].primary_key)).mappings()]
                for t in TABLES}


def version_rows(engine: sa.Engine) -> list[int] | None:
    """The version table's rows, or None where there is no such table (schema 1)."""
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table(catalog.schema_table.name):
            return None
        return [r.version for r in conn.execute(sa.select(catalog.schema_table))]


@pytest.fixture
def v1_copy(tmp_path) -> Path:
    path = tmp_path / "store" / "catalog.sqlite"
    path.parent.mkdir()
    shutil.copyfile(FIXTURE, path)
    return path


@pytest.fixture
def v1_catalog(any_catalog_url, v1_copy) -> str:
    """The fixture's catalog on each engine: the file itself, or its rows copied into
    PostgreSQL with the tables as schema 1 created them (no version table)."""
    if any_catalog_url.startswith("sqlite"):
        return f"sqlite:///{v1_copy}"
    stored = dump(sa.create_engine(f"sqlite:///{v1_copy}"))
    target = sa.create_engine(catalog.catalog_url(any_catalog_url))
    catalog.metadata.create_all(target)
    with target.begin() as conn:
        for table in catalog.metadata.sorted_tables:
            conn.execute(sa.insert(table), stored[table.name])
    return any_catalog_url


def test_the_fixture_is_a_schema_1_catalog_of_the_tutorial():
    db = sqlite3.connect(FIXTURE)
    names = {r[0] for r in db.execute("select name from sqlite_master where type = 'table'")}
    assert names == set(TABLES)
    assert db.execute("select dataset_name, ximagesize, yimagesize, zimagesize from datasets").fetchall() == [
        ("neurostorm_kat11_scale3", 300, 200, 200)]
    assert db.execute("select channel_name, channel_datatype from channels order by id").fetchall() == [
        ("image", "uint8"), ("annotation", "uint32")]


def test_reading_a_schema_1_catalog_finds_its_rows_and_writes_nothing(v1_copy):
    before = v1_copy.read_bytes()
    rows_at = SqliteCatalog(v1_copy)
    assert rows_at.find_dataset("neurostorm_kat11_scale3")["zoffset"] == 1000
    assert rows_at.find_channel("kat11_scale3", "annotation")["endwindow"] == 2139829749.0
    assert catalog.check_schema(engine_for(v1_copy, create=False)) == 1
    assert v1_copy.read_bytes() == before


def test_a_write_upgrades_a_schema_1_catalog_once_logged_and_keeps_every_row(v1_catalog, caplog):
    before = dump(sa.create_engine(catalog.catalog_url(v1_catalog)))
    where = SqlCatalog(v1_catalog).where
    with caplog.at_level(logging.INFO, logger="ndingest.catalog"):
        engine = engine_for(v1_catalog, create=True)
    assert [r.getMessage() for r in caplog.records if "upgraded" in r.getMessage()] == [
        f"catalog {where}: upgraded schema 1 -> 2"]
    assert version_rows(engine) == [SCHEMA_VERSION] and dump(engine) == before
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ndingest.catalog"):
        engine_for(v1_catalog, create=True)
    assert not [r for r in caplog.records if "upgraded" in r.getMessage()]
    image = SqlCatalog(v1_catalog).find_channel("kat11_scale3", "image")
    assert (image["channel_type"], image["propagate"], image["endwindow"]) == ("image", 2, 254.0)


def test_a_failed_upgrade_leaves_schema_1_whole(v1_copy, monkeypatch):
    def broken_step(conn):
        catalog.schema_metadata.create_all(conn)
        raise sa.exc.OperationalError("upgrade", {}, Exception("disk I/O error"))

    monkeypatch.setitem(catalog.UPGRADES, 1, broken_step)
    with pytest.raises(StoreError, match="disk I/O error"):
        engine_for(v1_copy, create=True)
    engine = sa.create_engine(f"sqlite:///{v1_copy}")
    assert version_rows(engine) is None
    assert dump(engine) == dump(sa.create_engine(f"sqlite:///{FIXTURE}"))
    assert sqlite3.connect(v1_copy).execute("pragma integrity_check").fetchone() == ("ok",)


def test_a_new_catalog_starts_at_the_current_version(any_catalog_url):
    assert version_rows(engine_for(any_catalog_url, create=True)) == [SCHEMA_VERSION]


def test_a_catalog_newer_than_this_code_is_refused_for_reads_and_writes(any_catalog_url):
    engine = engine_for(any_catalog_url, create=True)
    with engine.begin() as conn:
        conn.execute(sa.update(catalog.schema_table).values(version=SCHEMA_VERSION + 1))
    where = SqlCatalog(any_catalog_url).where
    expected = f"catalog {where}: schema version {SCHEMA_VERSION + 1} is newer than this ndingest's {SCHEMA_VERSION}"
    for create in (False, True):
        with pytest.raises(StoreError) as info:
            engine_for(any_catalog_url, create=create)
        assert str(info.value).startswith(expected) and "\n" not in str(info.value)
        assert info.value.exit_code == 7
    with pytest.raises(StoreError, match="newer"):
        SqlCatalog(any_catalog_url).find_dataset("kat11")
    assert version_rows(engine) == [SCHEMA_VERSION + 1]
