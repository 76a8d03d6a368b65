"""The REST target's client (`ndingest.remote`): the spec's `[store] url`, where its
markers live, the resource API as a catalog, replace-mode writes, retries and errors,
against one real `ndingest serve` with keys on 127.0.0.1 (tests/e2e/serving.py)."""
from __future__ import annotations

import logging
import os
import pickle
import sqlite3
import sys
import threading
import time
from pathlib import Path

import blosc
import numpy as np
import pytest
import requests

from ndingest import catalog
from ndingest.blocks import Box, Vec3
from ndingest.errors import CatalogConflict, RemoteError, SpecError
from ndingest.remote import Client, RemoteStore, RestCatalog, open_remote, server_folder, state_dir
from ndingest.runlock import try_lock
from ndingest.spec import ChannelSpec, DatasetSpec, ProjectSpec, parse_spec
from ndingest.targets import VolumeRef

sys.path.insert(0, str(Path(__file__).resolve().parent / "e2e"))  # the e2e tests' server helper
from serving import free_port, serving, start_server  # noqa: E402

KEY = "test-remote-key-89ab"
DS, PR, TK = "remote_ds", "remote_pr", "remote_tk"
OFFSET, SIZE = Vec3(100, 200, 10), Vec3(200, 150, 40)
SPEC = """
[dataset]
name = "d"
voxel_resolution = [4.0, 4.0, 40.0]
[project]
name = "p"
[channels.image]
type = "image"
source = "img.h5"
[store]
"""


# --- the spec and the bookkeeping folder -------------------------------------------------------
def test_a_store_url_parses_without_its_trailing_slash(tmp_path):
    spec = parse_spec(SPEC + 'url = "http://127.0.0.1:8080/nd/"\n', tmp_path / "s.toml")
    assert spec.store.url == "http://127.0.0.1:8080/nd" and spec.store.path is None


def test_a_store_with_both_path_and_url_is_refused(tmp_path):
    with pytest.raises(SpecError, match="store.path and store.url"):
        parse_spec(SPEC + 'path = "store"\nurl = "http://127.0.0.1:8080/nd"\n', tmp_path / "s.toml")


def test_a_readonly_channel_cannot_be_ingested_into_a_server(tmp_path):
    spec = parse_spec(SPEC.replace('source = "img.h5"', 'source = "img.h5"\nreadonly = true')
                      + 'url = "http://127.0.0.1:8080/nd"\n', tmp_path / "s.toml")
    with pytest.raises(SpecError, match="channels.image.readonly"):
        open_remote(spec)


def test_markers_of_two_servers_never_share_a_folder(tmp_path):
    one, two = state_dir(tmp_path / "s.toml", "http://127.0.0.1:8080/nd"), state_dir(tmp_path / "s.toml",
                                                                                       "http://127.0.0.1:8081/nd")
    assert one != two and one.parent == two.parent == tmp_path / ".ndingest"
    assert server_folder("http://127.0.0.1:8080/nd") == "127.0.0.1_8080_nd"


# --- against a server ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("remote-client")
    (folder / "store").mkdir()
    (folder / "keys.txt").write_text(KEY + "\n")
    with serving(folder / "store", api_keys=folder / "keys.txt") as running:
        rest = rest_catalog(running.url)
        rest.ensure_rows([catalog.dataset_row(DatasetSpec(DS, OFFSET, (4.0, 4.0, 40.0), "zslices", 0),
                                              size_xyz=SIZE, levels=0),
                          *catalog.project_rows(ProjectSpec(PR, TK), dataset=DS)])
        yield running


def rest_catalog(url: str, key: str | None = KEY) -> RestCatalog:
    return RestCatalog(Client(url + "/nd", key=key), dataset=DS, project=PR, token=TK, probe_channel="image")


def channel(name: str, ctype: str = "image", datatype: str = "uint16", time_range=(0, 0)) -> catalog.Row:
    return catalog.channel_row(ChannelSpec(name, ctype, "unused", datatype), project=PR, datatype=datatype,
                               time_range=time_range, window=(0.0, 0.0), default=False)


def test_the_same_rows_again_are_a_no_op_and_other_values_a_conflict_naming_the_field(server):
    rest = rest_catalog(server.url)
    rest.ensure_rows([channel("same")])
    rest.ensure_rows([channel("same")])
    assert rest.rows_present([channel("same")])
    with pytest.raises(CatalogConflict, match="channel_datatype") as info:
        rest.ensure_rows([channel("same", datatype="uint8")])  # the server's 409 line
    assert info.value.exit_code == 4 and server.url in str(info.value)
    with pytest.raises(CatalogConflict, match="channel_datatype"):
        rest.check_rows([channel("same", datatype="uint8")])  # the same conflict, found by GET
    assert not rest.rows_present([channel("same", datatype="uint8")])


def test_a_window_set_by_patch_reaches_the_channel_row_and_only_the_window_and_readonly_may_change(server):
    rest = rest_catalog(server.url)
    rest.ensure_rows([channel("windowed")])
    rest.set_window(PR, "windowed", (3.0, 250.5))
    row = rest.find_channel(PR, "windowed")
    assert (row["startwindow"], row["endwindow"]) == (3.0, 250.5)
    url = f"{server.url}/nd/resource/dataset/{DS}/project/{PR}/channel/windowed/"
    reply = requests.patch(url, json={"startwindow": 1, "endwindow": 2, "channel_datatype": "uint16"},
                           headers={"Authorization": f"Token {KEY}"}, timeout=30)
    assert reply.status_code == 400 and "channel_datatype" in reply.text
    assert requests.patch(url, json={"startwindow": 1, "endwindow": 2}, timeout=30).status_code == 401
    assert rest.find_channel(PR, "windowed")["startwindow"] == 3.0


def test_a_wrong_key_is_refused_at_once_never_retried_and_never_named(server, caplog):
    caplog.set_level(logging.DEBUG, logger="urllib3")
    rest = rest_catalog(server.url, key="wrong-key-cdef")
    with pytest.raises(RemoteError, match="refused the key in NDINGEST_API_KEY") as info:
        rest.check_access()
    assert info.value.exit_code == 8 and server.url in str(info.value) and "wrong-key-cdef" not in str(info.value)
    assert not [r for r in caplog.records if "Retry" in r.getMessage()]  # urllib3 logs each retry so
    with pytest.raises(RemoteError, match="wants a key"):
        rest_catalog(server.url, key=None).check_access()
    rest_catalog(server.url).check_access()  # the right key: fine, though the probed channel may not exist


def test_retries_cover_5xx_and_connection_errors_for_every_method_but_never_4xx():
    retry = Client("http://127.0.0.1:1/nd").session().get_adapter("http://127.0.0.1:1/").max_retries
    assert {"GET", "POST", "PATCH", "DELETE"} <= set(retry.allowed_methods)
    assert {500, 502, 503, 504} <= set(retry.status_forcelist)
    assert not [s for s in retry.status_forcelist if 400 <= s < 500]
    assert retry.backoff_factor > 0 and retry.connect > 0 and retry.read > 0


def test_a_request_made_while_the_server_is_down_lands_once_it_is_up(tmp_path):
    (tmp_path / "store").mkdir()
    port = free_port()
    started: list = []
    starter = threading.Thread(target=lambda: (time.sleep(0.3), started.append(start_server(tmp_path / "store",
                                                                                             port=port))))
    starter.start()
    try:
        reply = Client(f"http://127.0.0.1:{port}/nd", retries=8).request("GET", f"http://127.0.0.1:{port}/nd/sd/public_tokens/")
        assert reply.json() == []
    finally:
        starter.join()
        for s in started:
            s.stop()


def test_replace_mode_writes_erase_labels_that_an_ordinary_post_keeps(server):
    rest = rest_catalog(server.url)
    rest.delete_channel(PR, "labels")
    rest.ensure_rows([channel("labels", ctype="annotation", datatype="uint32")])
    store, ref = RemoteStore(Client(server.url + "/nd", key=KEY), token=TK), VolumeRef(DS, PR, "labels")
    box = Box(OFFSET, OFFSET + Vec3(64, 32, 8))
    store.write(ref, 0, box, np.full((8, 32, 64), 7, np.uint32))
    zeros = np.zeros((8, 32, 64), np.uint32)
    ordinary = requests.post(store.cutout_url(ref, 0, box), data=blosc.pack_array(zeros[np.newaxis]),
                             headers={"Authorization": f"Token {KEY}"}, timeout=30)
    assert ordinary.status_code == 200 and (store.read(ref, 0, box) == 7).all()
    store.write(ref, 0, box, zeros)
    assert not store.read(ref, 0, box).any()


@pytest.mark.parametrize("fmt", ["blosc", "npz"])
def test_time_points_round_trip_in_either_format(server, fmt):
    rest = rest_catalog(server.url)
    rest.delete_channel(PR, f"frames_{fmt}")
    rest.ensure_rows([channel(f"frames_{fmt}", ctype="timeseries", time_range=(0, 2))])
    store = RemoteStore(Client(server.url + "/nd", key=KEY), token=TK, fmt=fmt)
    box = Box(OFFSET + Vec3(128, 128, 16), OFFSET + SIZE)  # an edge box
    data = {t: np.random.default_rng(t).integers(0, 60000, tuple(box.shape)[::-1], dtype=np.uint16) for t in (1, 2)}
    for t, voxels in data.items():
        store.write(VolumeRef(DS, PR, f"frames_{fmt}", t), 0, box, voxels)
    for t, voxels in data.items():
        np.testing.assert_array_equal(store.read(VolumeRef(DS, PR, f"frames_{fmt}", t), 0, box), voxels)
    assert not store.read(VolumeRef(DS, PR, f"frames_{fmt}", 0), 0, box).any()


def test_a_store_pickles_without_its_sessions_and_never_shows_its_key(server):
    store = RemoteStore(Client(server.url + "/nd", key=KEY), token=TK)
    store.info(VolumeRef(DS, PR, "same"))
    clone = pickle.loads(pickle.dumps(store))
    assert clone.client._sessions == {} and clone.client.key == KEY
    assert KEY not in repr(store) and KEY not in repr(store.client)
    assert clone.info(VolumeRef(DS, PR, "same"))["data_type"] == "uint16"


def test_build_levels_waits_for_the_server_to_say_built(server):
    rest = rest_catalog(server.url)
    rest.ensure_rows([channel("built")])
    rest.build_levels("built", timeout=60)
    assert rest.propagate_state("built") == catalog.PROPAGATE_DONE
    rest.build_levels("built", timeout=0)  # built already: no wait, no 409


def test_build_levels_gives_up_after_its_timeout_naming_the_channel_and_a_rerun_waits_again(server):
    """A rebuild that does not end in time (here: another builder holds the channel's
    build lock, so the server's answers stay 1) is one line saying to rerun, not a hang."""
    rest = rest_catalog(server.url)
    rest.ensure_rows([channel("slow")])
    store = server.log_path.parent / "store"
    fd = try_lock(store / "_markers" / DS / PR / "slow" / "build.lock")
    assert fd is not None
    try:
        db = sqlite3.connect(store / "catalog.sqlite")
        with db:
            db.execute("UPDATE channels SET propagate = 1 WHERE channel_name = 'slow'")
        db.close()
        started = time.monotonic()
        with pytest.raises(RemoteError, match="channel slow's levels are still being built after 1 s; rerun"):
            rest.build_levels("slow", timeout=1.0)
        assert 1.0 <= time.monotonic() - started < 10
        assert rest.propagate_state("slow") == catalog.PROPAGATE_UNDER_WAY
    finally:
        os.close(fd)
    rest.build_levels("slow", timeout=60)  # the lock let go: the server's next getPropagate builds them
    assert rest.propagate_state("slow") == catalog.PROPAGATE_DONE
