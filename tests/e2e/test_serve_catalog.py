"""`ndingest serve --store DIR --catalog postgresql://…`: a store whose catalog is in
PostgreSQL (as `[store] catalog` makes it for many hosts), served by a real `serve` on
127.0.0.1, its database a real PostgreSQL started by the tests. Answers are judged with
h5py (the tutorial's cutout) and SQLAlchemy reading the database directly."""
from __future__ import annotations

import io

import h5py
import numpy as np
import requests
import sqlalchemy as sa

from conftest import read_cutout, run_cli, spec_text
from ndingest.sample import IMAGE_FILE
from serving import TUTORIAL, serving

DATASET, TOKEN = TUTORIAL


def test_a_store_with_a_postgresql_catalog_is_served_from_it(tutorial_data, tmp_path, postgres_url):
    spec = tmp_path / "tutorial.toml"
    spec.write_text(spec_text(image=tutorial_data / IMAGE_FILE) + f'catalog = "{postgres_url}"\n')
    result = run_cli("ingest", str(spec))
    assert result.returncode == 0, result.stderr
    store = tmp_path / "store"
    assert not (store / "catalog.sqlite").exists()
    with serving(store, args=("--catalog", postgres_url)) as server:
        assert TOKEN in requests.get(f"{server.url}/nd/sd/public_tokens/", timeout=30).json()
        info = requests.get(f"{server.url}/nd/sd/{TOKEN}/info/", timeout=30).json()
        assert info["dataset"]["offset"]["0"] == [1000, 2000, 1000] and "image" in info["channels"]
        reply = requests.get(f"{server.url}/ocp/ca/{TOKEN}/image/hdf5/0/1000,1300/2000,2200/1000,1200/", timeout=60)
        assert reply.status_code == 200, reply.text + server.log()
        with h5py.File(io.BytesIO(reply.content), "r") as f:
            assert np.array_equal(f["image"]["CUTOUT"][()], read_cutout(tutorial_data / IMAGE_FILE))
        made = requests.post(f"{server.url}/nd/sd/{TOKEN}/createChannel/",
                             json={"channels": {"labels": {"channel_name": "labels", "channel_type": "annotation",
                                                           "datatype": "uint32", "readonly": 0}}}, timeout=30)
        assert made.status_code == 200, made.text + server.log()
        job = requests.post(f"{server.url}/nd/sd/autoIngest/", json={}, timeout=30)
        assert job.status_code in (400, 501), job.text  # a bad body, or one this server cannot run: never 500
    engine = sa.create_engine(postgres_url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.connect() as conn:
        names = sorted(conn.execute(sa.text("SELECT channel_name FROM channels")).scalars())
    engine.dispose()
    assert names == ["image", "labels"]  # written by the server into PostgreSQL, not a new SQLite file
    assert not (store / "catalog.sqlite").exists()


def test_autoingest_on_a_server_with_a_postgresql_catalog_is_501_naming_it(tmp_path, postgres_url):
    store = tmp_path / "store"
    store.mkdir()
    body = {"dataset": {"dataset_name": "ds", "imagesize": [8, 6, 3], "voxelres": [4.0, 4.0, 40.0]},
            "project": {"project_name": "pr"},
            "channels": {"em": {"channel_name": "em", "datatype": "uint8", "channel_type": "image",
                                "data_url": "http://127.0.0.1:9/files", "file_format": "SLICE", "file_type": "tif"}}}
    with serving(store, args=("--catalog", postgres_url)) as server:
        reply = requests.post(f"{server.url}/nd/sd/autoIngest/", json=body, timeout=30)
    assert reply.status_code == 501, reply.text
    assert "postgresql://" in reply.text and "password" not in reply.text.lower()
    assert not (store / "_jobs").exists()


def test_a_catalog_that_is_not_a_url_is_one_line_at_start(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    result = run_cli("serve", "--store", str(store), "--catalog", "mysql://h/db", "--port", "0")
    assert result.returncode == 2 and "not a catalog URL" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_uvicorns_app_factory_takes_the_catalog_from_the_environment(tmp_path, monkeypatch):
    from ndingest.server import app_from_env

    monkeypatch.setenv("NDINGEST_STORE", str(tmp_path))
    monkeypatch.setenv("NDINGEST_CATALOG", "postgresql://u:secret@127.0.0.1:9/db")
    ctx = app_from_env().state.ctx
    assert ctx.catalog_url == "postgresql://u:secret@127.0.0.1:9/db"
    assert ctx.catalog_name == "postgresql://u:***@127.0.0.1:9/db"  # how messages name it
    monkeypatch.delenv("NDINGEST_CATALOG")
    assert app_from_env().state.ctx.catalog_url is None


# --- the server's catalog connections are pooled ----------------------------------------------
DATASET_BODY = {"ximagesize": 64, "yimagesize": 48, "zimagesize": 8, "xvoxelres": 4.0, "yvoxelres": 4.0,
                "zvoxelres": 40.0, "public": 1}


def dataset_status(base: str, name: str) -> int:
    return requests.get(f"{base}/nd/resource/dataset/{name}/", timeout=30).status_code


def make_dataset(base: str, name: str) -> None:
    reply = requests.post(f"{base}/nd/resource/dataset/{name}/", json=DATASET_BODY, timeout=30)
    assert reply.status_code == 201, reply.text


def test_a_sqlite_catalog_moved_or_replaced_under_the_server_is_read_anew(tmp_path):
    """Pooled connections keep their file open: a catalog renamed away, made again and put
    back must each be what the next request reads, as with a connection per request."""
    store = tmp_path / "store"
    store.mkdir()
    catalog_file, aside = store / "catalog.sqlite", tmp_path / "aside.sqlite"
    with serving(store) as server:
        make_dataset(server.url, "first")
        assert dataset_status(server.url, "first") == 200
        catalog_file.rename(aside)
        assert dataset_status(server.url, "first") == 404, server.log()  # no catalog: nothing there
        make_dataset(server.url, "second")  # a new catalog file
        assert (dataset_status(server.url, "first"), dataset_status(server.url, "second")) == (404, 200)
        aside.replace(catalog_file)  # the first one back, over the second
        assert (dataset_status(server.url, "first"), dataset_status(server.url, "second")) == (200, 404)


def test_a_server_keeps_its_postgresql_connections_between_requests(tmp_path, postgres_url):
    """One connection per query cost 4.4 ms against 0.55 ms pooled: the server's connections
    (named "ndingest serve" in pg_stat_activity) stay the same across requests."""
    store = tmp_path / "store"
    store.mkdir()
    engine = sa.create_engine(postgres_url.replace("postgresql://", "postgresql+psycopg://"), poolclass=sa.pool.NullPool)

    def server_backends() -> set[int]:
        with engine.connect() as conn:
            return set(conn.execute(sa.text("SELECT pid FROM pg_stat_activity WHERE application_name = 'ndingest serve' "
                                            "AND datname = current_database()")).scalars())

    with serving(store, args=("--catalog", postgres_url)) as server:
        make_dataset(server.url, "pooled")
        for _ in range(5):
            assert dataset_status(server.url, "pooled") == 200
        kept = server_backends()
        for _ in range(20):
            assert dataset_status(server.url, "pooled") == 200
        assert kept and server_backends() == kept, (kept, server_backends())
    engine.dispose()
