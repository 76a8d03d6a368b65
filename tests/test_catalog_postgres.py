"""The catalog on a real PostgreSQL server (tests/postgres.py): test_catalog.py's contract
on a fresh database per test, workers creating rows at once, the URL rewrite to psycopg 3,
the advisory lock, and an ingest whose catalog is PostgreSQL."""
from __future__ import annotations

import multiprocessing
import queue
import signal
import subprocess
import sys
import threading
import time
import traceback

import pytest
import sqlalchemy as sa

from ndingest import catalog
from ndingest.blocks import Vec3
from ndingest.catalog import SqlCatalog, SqliteCatalog, catalog_url, engine_for
from ndingest.errors import CatalogConflict, SpecError, StoreError
from ndingest.spec import DatasetSpec
from test_catalog import (  # noqa: F401 (collected here again, on PostgreSQL)
    all_rows, rows, test_a_conflict_writes_none_of_the_rows_before_it,
    test_a_deleted_channel_can_be_created_again_with_other_values, test_channel_names_are_unique_within_a_project,
    test_check_rows_on_an_empty_catalog_writes_nothing, test_delete_channel_removes_only_that_channel,
    test_different_value_raises_conflict_naming_field_and_both_values,
    test_ensure_rows_creates_dataset_project_token_and_channel, test_ensure_rows_with_the_same_rows_again_is_a_no_op,
    test_find_channel_of_an_unknown_channel_is_none, test_isotropic_dataset_is_stored_as_scaling_option_one,
    test_propagate_differences_are_not_a_conflict, test_same_channel_name_in_two_projects_is_fine,
    test_token_pointing_to_another_project_is_a_conflict, test_two_channels_in_one_project_coexist,
)


@pytest.fixture
def engine(postgres_url):
    """test_catalog.py's tests above take this engine: PostgreSQL instead of SQLite."""
    return engine_for(postgres_url, create=True)


# --- URLs -----------------------------------------------------------------------------------

def test_a_plain_postgresql_url_is_rewritten_to_psycopg_3():
    assert catalog_url("postgresql://u:secret@db.example:5432/nd").drivername == "postgresql+psycopg"
    assert catalog_url("postgresql+psycopg://u@h/nd").drivername == "postgresql+psycopg"
    assert catalog_url("sqlite:////abs/catalog.sqlite").database == "/abs/catalog.sqlite"
    with pytest.raises(SpecError, match="postgresql\\+psycopg2://u:\\*\\*\\*@h/nd"):
        catalog_url("postgresql+psycopg2://u:secret@h/nd")


def test_a_catalog_names_a_server_without_its_password():
    rows_at = SqlCatalog("postgresql://u:secret@db.example:5432/nd")
    assert rows_at.where == "postgresql://u:***@db.example:5432/nd"
    assert SqliteCatalog("/s/catalog.sqlite").where == "/s/catalog.sqlite"


def test_the_engine_speaks_psycopg_3(postgres_url):
    engine = engine_for(postgres_url, create=False)
    assert (engine.dialect.name, engine.dialect.driver) == ("postgresql", "psycopg")


def test_reading_an_empty_database_finds_nothing_and_creates_no_table(postgres_url):
    rows_at = SqlCatalog(postgres_url)
    assert not rows_at.rows_present(rows())
    rows_at.check_rows(rows())
    assert rows_at.find_dataset("kat11") is None and rows_at.find_channel("kat11_scale3", "image") is None
    assert sa.inspect(sa.create_engine(catalog_url(postgres_url))).get_table_names() == []


def test_an_unreachable_server_is_a_store_error_without_the_password(postgres_server):
    url = f"postgresql://postgres:secret@127.0.0.1:{postgres_server.port}/no_such_database"
    with pytest.raises(StoreError) as info:
        SqlCatalog(url).find_dataset("kat11")
    assert "no_such_database" in str(info.value) and "secret" not in str(info.value)
    assert info.value.exit_code == 7


# --- workers creating at once --------------------------------------------------------------

def _create_at_once(url: str, barrier, *, results, xoffset: int) -> None:
    """One worker: wait for all, then create the catalog and the rows (as CreateDataset and
    CreateChannels do in Luigi's workers on several hosts)."""
    ds = DatasetSpec(name="kat11", offset_xyz=Vec3(xoffset, 2000, 1000), voxel_resolution_nm=(32.0, 32.0, 40.0),
                     scaling_option="zslices", scaling_levels=0)
    barrier.wait(30)
    try:
        SqlCatalog(url).ensure_rows(rows(dataset=ds))
        results.put((xoffset, "ok"))
    except CatalogConflict as exc:
        results.put((xoffset, str(exc)))
    except BaseException:
        results.put((xoffset, traceback.format_exc()))


def run_at_once(url: str, xoffsets: list[int]) -> list[tuple[int, str]]:
    """`_create_at_once` in one process per value (spawned, as on separate hosts)."""
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(len(xoffsets)), ctx.Queue()
    procs = [ctx.Process(target=_create_at_once, args=(url, barrier), kwargs={"results": results, "xoffset": x})
             for x in xoffsets]
    for p in procs:
        p.start()
    out = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    return out


def run_in_threads(url: str, xoffsets: list[int]) -> list[tuple[int, str]]:
    """`_create_at_once` in one thread per value, each with its own connections: a database
    (and SQLite's file locks) sees them as it sees processes, at a fraction of the cost."""
    barrier, results = threading.Barrier(len(xoffsets)), queue.Queue()
    threads = [threading.Thread(target=_create_at_once, args=(url, barrier), kwargs={"results": results, "xoffset": x})
               for x in xoffsets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return [results.get_nowait() for _ in threads]


def assert_one_of_each(url: str, results: list[tuple[int, str]]) -> None:
    assert [r for _, r in results] == ["ok"] * len(results)
    engine = engine_for(url, create=False)
    for table in catalog.metadata.sorted_tables:
        assert len(all_rows(engine, table)) == 1, table.name
    assert all_rows(engine, catalog.schema_table) == [{"version": catalog.SCHEMA_VERSION}]


def test_eight_processes_creating_the_same_rows_at_once_make_one_of_each(postgres_url):
    assert_one_of_each(postgres_url, run_at_once(postgres_url, [1000] * 8))


def test_eight_sqlite_connections_creating_the_same_rows_at_once_make_one_of_each(tmp_path):
    url = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    assert_one_of_each(url, run_in_threads(url, [1000] * 8))


def test_sessions_creating_other_values_at_once_get_a_conflict_naming_the_field(postgres_url):
    results = run_in_threads(postgres_url, [1000, 1000, 1001, 1001])
    [stored] = all_rows(engine_for(postgres_url, create=False), catalog.datasets)
    for xoffset, result in results:
        if xoffset == stored["xoffset"]:
            assert result == "ok"
        else:
            assert "xoffset" in result and str(stored["xoffset"]) in result and str(xoffset) in result, result


# --- the advisory lock ---------------------------------------------------------------------

HOLD = """
import sys, time
from ndingest.catalog import SqlCatalog
lock = SqlCatalog(sys.argv[1]).try_lock("ingest:kat11")
print("held" if lock else "refused", flush=True)
time.sleep(600)
"""


def test_a_lock_is_held_by_one_process_and_freed_when_it_is_killed(postgres_url):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, postgres_url], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        rows_at = SqlCatalog(postgres_url)
        assert rows_at.try_lock("ingest:kat11") is None
        other = rows_at.try_lock("ingest:other")  # another name is another lock
        assert other is not None
        other.release()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
    deadline = time.monotonic() + 10
    while (lock := rows_at.try_lock("ingest:kat11")) is None:
        assert time.monotonic() < deadline, "the killed holder's lock was never freed"
        time.sleep(0.05)
    lock.release()
    again = rows_at.try_lock("ingest:kat11")  # released: free for the next holder
    assert again is not None
    with again:
        assert rows_at.try_lock("ingest:kat11") is None
    assert rows_at.try_lock("ingest:kat11") is not None


def test_a_sqlite_catalog_has_no_lock_of_its_own(tmp_path):
    with pytest.raises(NotImplementedError, match="runlock"):
        SqliteCatalog(tmp_path / "catalog.sqlite").try_lock("ingest")


# --- an ingest into a local store with its catalog in PostgreSQL ---------------------------

def test_ingest_and_verify_keep_the_catalog_in_postgresql_and_no_sqlite_file(tmp_path, postgres_url):
    # imported here: the spawned workers above import this module, and need neither
    import numpy as np
    import psycopg
    from conftest import run_cli, spec_text, write_h5

    image = write_h5(tmp_path / "image.h5", np.arange(16 * 64 * 64, dtype=np.uint8).reshape(16, 64, 64))
    spec = tmp_path / "spec.toml"
    spec.write_text(spec_text(image=image, offset=(0, 0, 0)) + f'catalog = "{postgres_url}"\n')
    for command in ("ingest", "verify"):
        result = run_cli(command, str(spec))
        assert result.returncode == 0, result.stderr
        if command == "ingest":  # the catalog it names is the database, its password hidden
            shown = postgres_url.split("@")[-1]
            assert "(catalog postgresql://" in result.stdout and shown in result.stdout, result.stdout
    assert not (tmp_path / "store/catalog.sqlite").exists()
    assert (tmp_path / "store").is_dir()
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("select dataset_name, ximagesize, yimagesize, zimagesize from datasets").fetchall() == [
            ("neurostorm_kat11_scale3", 64, 64, 16)]
        assert conn.execute("select token_name, project from tokens").fetchall() == [("kat11_scale3", "kat11_scale3")]
        assert conn.execute("select channel_name, channel_datatype, propagate, endwindow from channels").fetchall() \
            == [("image", "uint8", 2, 255.0)]
        assert conn.execute("select version from ndingest_schema").fetchall() == [(catalog.SCHEMA_VERSION,)]
