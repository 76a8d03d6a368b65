"""`POST autoIngest/` against a real `ndingest serve` on 127.0.0.1, with sources on a local
`http.server` thread (127.0.0.1) and `file://` URLs: the ingest runs in the background and
`GET autoIngest/{project}/` (ours) says when it is done.

ndio's `NDIngest.__init__` downloads three JSON schemas from GitHub and then never uses
them (their checks are commented out in ndio 1.1.6), so the test makes the object without
running `__init__`; everything else — `add_dataset`, `add_project`, `add_channel`,
`nd_json`, `post_data` — is ndio's own code, unchanged.
"""
from __future__ import annotations

import functools
import http.server
import io
import json
import os
import sqlite3
import threading
import time
import zlib
from importlib import import_module

import numpy as np
import pytest
import requests
import tifffile
from ndio.remote.ndingest import NDIngest

from conftest import write_h5
from ndingest.runlock import try_lock
from serving import HOST, free_port, serving, start_server

neurodata_module = import_module("ndio.remote.neurodata")

KEY = "autoingest-test-key"
SHAPE = (12, 48, 40)        # z, y, x of the TIFF stack
OFFSET = (0, 0, 5)          # x, y, z: slices 0005.tif .. 0016.tif, as ndstore numbers them
POLL_TIMEOUT = 60.0         # s; a job of this size is done in a few


@pytest.fixture(autouse=True)
def ndio_geturl(monkeypatch):
    """The module-level getURL ndio calls but never defines (see test_serve_ndio.py)."""
    def get_url(url, token=""):
        return requests.get(url, headers={"Authorization": f"Token {token}"}, timeout=60)
    monkeypatch.setattr(neurodata_module, "getURL", get_url, raising=False)


class Files(http.server.SimpleHTTPRequestHandler):
    """A folder over HTTP; a path under `slow/` waits for `gate` first (a job kept running)."""

    gate = threading.Event()

    def do_GET(self):
        if "/slow/" in self.path:
            self.gate.wait(30)
        super().do_GET()

    def log_message(self, *args):  # quiet
        pass


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """(base URL, folder) of a ThreadingHTTPServer on 127.0.0.1 over a folder of sources."""
    folder = tmp_path_factory.mktemp("autoingest-sources")
    server = http.server.ThreadingHTTPServer((HOST, free_port()), functools.partial(Files, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://{HOST}:{server.server_address[1]}", folder
    Files.gate.set()
    server.shutdown()
    server.server_close()


def tiff_stack(folder, token: str, channel: str, seed: int):
    """ndstore's SLICE layout: {data_url}/{token}/{channel}/{z:04d}.tif from the z offset on."""
    data = np.random.default_rng(seed).integers(0, 256, SHAPE, dtype=np.uint8)
    for i, page in enumerate(data):
        path = folder / token / channel / f"{OFFSET[2] + i:04d}.tif"
        path.parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(path, page)
    return data


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("serve-autoingest") / "store"
    path.mkdir()
    return path


def reading_test_files(tmp_path_factory) -> tuple[str, ...]:
    """What lets a job read this session's test files: `file://` URLs under pytest's temp
    folder (each test's `tmp_path`), and the file server on 127.0.0.1."""
    return ("--allow-files", str(tmp_path_factory.getbasetemp()), "--fetch-from", HOST)


@pytest.fixture(scope="module")
def url(store, tmp_path_factory):
    with serving(store, args=reading_test_files(tmp_path_factory)) as server:
        yield server.url


@pytest.fixture(scope="module")
def keyed_url(store, url, tmp_path_factory):
    keys = tmp_path_factory.mktemp("autoingest-keys") / "keys.txt"
    keys.write_text(f"{KEY}\n")
    with serving(store, api_keys=keys, args=reading_test_files(tmp_path_factory)) as server:
        yield server.url


def status(base: str, project: str, headers=None) -> requests.Response:
    return requests.get(f"{base}/nd/sd/autoIngest/{project}/", headers=headers, timeout=30)


def wait_until_finished(base: str, project: str, headers=None) -> dict:
    deadline = time.monotonic() + POLL_TIMEOUT
    while True:
        reply = status(base, project, headers)
        assert reply.status_code == 200, reply.text
        state = reply.json()
        if state["state"] not in ("queued", "running"):
            return state
        assert time.monotonic() < deadline, state
        time.sleep(0.2)


def npz_cutout(base: str, token: str, channel: str, shape_zyx, offset_xyz) -> np.ndarray:
    (z, y, x), (ox, oy, oz) = shape_zyx, offset_xyz
    reply = requests.get(f"{base}/nd/sd/{token}/{channel}/npz/0/{ox},{ox + x}/{oy},{oy + y}/{oz},{oz + z}/",
                         timeout=60)
    assert reply.status_code == 200, reply.text
    return np.load(io.BytesIO(zlib.decompress(reply.content)))[0]


def ndio_ingest(base: str) -> NDIngest:
    """ndio's NDIngest posting to `base` (its __init__ skipped: see the module's docstring)."""
    ingest = NDIngest.__new__(NDIngest)
    ingest.channels, ingest.dataset, ingest.project, ingest.metadata = {}, [], [], ""
    ingest.oo = neurodata_module.neurodata("", hostname=base.split("://", 1)[1], protocol="http")
    return ingest


def body(dataset: str, project: str, channels: dict, *, size=(SHAPE[2], SHAPE[1], SHAPE[0]), offset=OFFSET) -> dict:
    """A JSON body as ndio's `nd_json` writes it."""
    return {"dataset": {"dataset_name": dataset, "imagesize": list(size), "voxelres": [4.0, 4.0, 40.0],
                        "offset": list(offset), "scalinglevels": 0, "scaling": 0},
            "project": {"project_name": project, "token_name": project, "public": 1},
            "metadata": "", "channels": channels}


def test_ndio_autoingest_of_a_tiff_stack_over_http(url, files, store):
    base, folder = files
    data = tiff_stack(folder, "ai_tiff", "em", seed=1)
    nd = ndio_ingest(url)
    nd.add_dataset("ai_tiff_ds", (SHAPE[2], SHAPE[1], SHAPE[0]), (4.0, 4.0, 40.0), offset=OFFSET,
                   scalinglevels=1, scaling=0)
    nd.add_project("ai_tiff", "ai_tiff", 1)
    nd.add_channel("em", "uint8", "image", base, "SLICE", "tif")
    nd.post_data()  # ndio asserts a 200
    state = wait_until_finished(url, "ai_tiff")
    assert state["state"] == "done", state
    assert np.array_equal(npz_cutout(url, "ai_tiff", "em", SHAPE, OFFSET), data)
    info = requests.get(f"{url}/nd/sd/ai_tiff/info/", timeout=30).json()
    assert info["dataset"]["imagesize"]["0"] == [SHAPE[2], SHAPE[1], SHAPE[0]]
    assert info["dataset"]["offset"]["0"] == list(OFFSET)
    job = store / "_jobs"  # the spec at _jobs/TOKEN.toml, the job's files beside it
    assert (job / "ai_tiff.toml").exists() and state["spec"] == str(job / "ai_tiff.toml")
    assert {"ingest.log", "nd.json", "status.json"} <= {p.name for p in (job / "ai_tiff").iterdir()}
    assert not (job / "ai_tiff" / "sources").exists()  # the slices were read where they are, not copied


def test_autoingest_of_an_hdf5_file_url_into_an_annotation_channel(url, tmp_path):
    labels = np.random.default_rng(2).integers(0, 9, SHAPE, dtype=np.uint32)
    source = write_h5(tmp_path / "labels.h5", labels, "anno/CUTOUT")
    job = body("ai_h5_ds", "ai_h5", {"anno": {"channel_name": "anno", "channel_type": "annotation",
                                              "datatype": "uint32", "data_url": source.as_uri(),
                                              "file_format": "HDF5", "file_type": "h5"}}, offset=(0, 0, 0))
    reply = requests.post(f"{url}/ocp/ca/autoIngest/", json=job, timeout=30)
    assert reply.status_code == 200, reply.text
    state = wait_until_finished(url, "ai_h5")
    assert state["state"] == "done", state
    assert np.array_equal(npz_cutout(url, "ai_h5", "anno", SHAPE, (0, 0, 0)), labels)


def test_a_source_of_another_size_than_imagesize_fails_before_the_ingest(url, tmp_path, store):
    source = write_h5(tmp_path / "small.h5", np.zeros((4, 8, 8), dtype=np.uint8))
    job = body("ai_size_ds", "ai_size", {"em": {"channel_name": "em", "channel_type": "image", "datatype": "uint8",
                                                "data_url": source.as_uri(), "file_format": "HDF5", "file_type": "h5"}})
    assert requests.post(f"{url}/nd/sd/autoIngest/", json=job, timeout=30).status_code == 200
    state = wait_until_finished(url, "ai_size")
    assert state["state"] == "failed" and "dataset.imagesize" in state["message"], state
    assert requests.get(f"{url}/nd/sd/ai_size/info/", timeout=30).status_code == 404  # nothing was ingested


GOOD_CHANNEL = {"channel_name": "em", "channel_type": "image", "datatype": "uint8",
                "data_url": "http://127.0.0.1:9/", "file_format": "SLICE", "file_type": "tif"}


@pytest.mark.parametrize("raw", [
    b"{not json",
    b"[]",
    b'{"project": {"project_name": "p"}, "channels": {}}',
    pytest.param({"data_url": "ftp://127.0.0.1/stack/"}, id="ftp-url"),
    pytest.param({"data_url": "file://elsewhere/stack/"}, id="file-url-with-host"),
    pytest.param({"file_format": "CATMAID"}, id="catmaid"),
    pytest.param({"channel_type": "timeseries"}, id="timeseries-without-timerange"),
    pytest.param({"datatype": "int7"}, id="datatype"),
    pytest.param({"channel_name": "../x"}, id="channel-name"),
])
def test_a_bad_body_is_400_with_one_line(url, raw):
    if isinstance(raw, dict):
        raw = json.dumps(body("ai_bad_ds", "ai_bad", {"em": {**GOOD_CHANNEL, **raw}}))
    reply = requests.post(f"{url}/nd/sd/autoIngest/", data=raw, timeout=30)
    assert reply.status_code == 400, reply.text
    assert reply.text.count("\n") == 1 and reply.text.startswith("autoIngest: "), reply.text
    assert status(url, "ai_bad").status_code == 404  # nothing was started


def test_without_a_key_a_keyed_server_refuses_401_and_with_it_the_job_runs(keyed_url):
    job = body("ai_keyed_ds", "ai_keyed", {"em": {**GOOD_CHANNEL, "data_url": f"http://{HOST}:{free_port()}"}})
    reply = requests.post(f"{keyed_url}/nd/sd/autoIngest/", json=job, timeout=30)
    assert reply.status_code == 401, reply.text
    headers = {"Authorization": f"Token {KEY}"}
    assert status(keyed_url, "ai_keyed", headers).status_code == 404
    reply = requests.post(f"{keyed_url}/nd/sd/autoIngest/", json=job, headers=headers, timeout=30)
    assert reply.status_code == 200, reply.text
    state = wait_until_finished(keyed_url, "ai_keyed", headers)  # nothing listens there: the download fails
    assert state["state"] == "failed" and "0005.tif" in state["message"], state


def test_one_job_per_project_at_a_time_and_a_channel_is_not_ingested_twice(url, files):
    base, folder = files
    data = tiff_stack(folder / "slow", "ai_once", "em", seed=3)
    job = body("ai_once_ds", "ai_once", {"em": {**GOOD_CHANNEL, "data_url": f"{base}/slow"}})
    Files.gate.clear()
    reply = requests.post(f"{url}/nd/sd/autoIngest/", json=job, timeout=30)
    assert reply.status_code == 200, reply.text
    assert status(url, "ai_once").json()["state"] == "running"
    again = requests.post(f"{url}/nd/sd/autoIngest/", json=job, timeout=30)
    assert again.status_code == 409 and "is running" in again.text, again.text
    Files.gate.set()
    assert wait_until_finished(url, "ai_once")["state"] == "done"
    assert np.array_equal(npz_cutout(url, "ai_once", "em", SHAPE, OFFSET), data)
    twice = requests.post(f"{url}/nd/sd/autoIngest/", json=job, timeout=30)
    assert twice.status_code == 409 and "already exists" in twice.text, twice.text


def test_the_state_of_an_unknown_project_is_404(url):
    assert status(url, "no_such_project").status_code == 404


def test_a_token_whose_job_is_another_projects_is_409(url):
    first = body("ai_tok_ds", "ai_tok_a", {"em": {**GOOD_CHANNEL, "data_url": f"http://{HOST}:{free_port()}"}})
    first["project"]["token_name"] = "ai_tok_shared"
    assert requests.post(f"{url}/nd/sd/autoIngest/", json=first, timeout=30).status_code == 200
    assert wait_until_finished(url, "ai_tok_a")["state"] == "failed"  # nothing listens there
    second = {**first, "project": {"project_name": "ai_tok_b", "token_name": "ai_tok_shared", "public": 1}}
    reply = requests.post(f"{url}/nd/sd/autoIngest/", json=second, timeout=30)
    assert reply.status_code == 409 and "is taken" in reply.text and "ai_tok_a" not in reply.text, reply.text


# --- taking a token, and answers that tell nothing of other projects --------------------------------
PRIVATE_DATASET = {"ximagesize": 40, "yimagesize": 48, "zimagesize": 12, "xvoxelres": 4, "yvoxelres": 4,
                   "zvoxelres": 40}  # a dataset row of the resource API (no public token: private)
HOLD = 1.0  # s the catalog stays locked while the racing POSTs arrive (only the old code needs them to meet)


def nowhere_job(dataset: str, project: str, token: str, public: int = 1) -> dict:
    """A job whose slices no one serves: it starts, then fails at once."""
    job = body(dataset, project, {"em": {**GOOD_CHANNEL, "data_url": f"http://{HOST}:{free_port()}"}})
    job["project"].update(token_name=token, public=public)
    return job


def taken_line(reply: requests.Response, token: str, project: str) -> str:
    """The reply's line with the request's own names made generic: alike for every taken case."""
    assert reply.status_code == 409, reply.text
    return reply.text.replace(repr(token), "T").replace(repr(project), "P")


def test_posts_of_one_token_for_other_projects_at_once_one_wins_and_owns_the_folder(url, store):
    resource = f"{url}/nd/resource/dataset/ai_race_ds/"  # (so that the catalog exists)
    assert requests.post(resource, json=PRIVATE_DATASET, timeout=30).status_code == 201
    jobs = [nowhere_job("ai_race_ds", f"ai_race_{side}", "ai_race") for side in "abcd"]
    replies = [None] * len(jobs)

    def post(i):
        replies[i] = requests.post(f"{url}/nd/sd/autoIngest/", json=jobs[i], timeout=60)

    threads = [threading.Thread(target=post, args=(i,)) for i in range(len(jobs))]
    # the catalog locked: every POST stops at its first catalog read, so they all meet there
    # (before the claim, three of them had passed the owner check by then)
    catalog = sqlite3.connect(store / "catalog.sqlite", isolation_level=None)
    try:
        catalog.execute("BEGIN EXCLUSIVE")
        for t in threads:
            t.start()
        time.sleep(HOLD)
    finally:
        catalog.rollback()
        catalog.close()
    for t in threads:
        t.join()
    codes = [r.status_code for r in replies]
    assert sorted(codes) == [200, 409, 409, 409], [r.text for r in replies]
    winner = jobs[codes.index(200)]["project"]["project_name"]
    folder = store / "_jobs" / "ai_race"
    assert json.loads((folder / "nd.json").read_text())["project"]["project_name"] == winner
    assert json.loads((folder / "status.json").read_text())["project"] == winner  # (it fails: nothing listens)


def test_a_taken_token_and_a_private_project_answer_one_same_line(url, files):
    base, _ = files
    resource = f"{url}/nd/resource/dataset/ai_priv_ds/"
    assert requests.post(resource, json=PRIVATE_DATASET, timeout=30).status_code == 201
    assert requests.post(f"{resource}project/ai_priv/", json={"public": 0}, timeout=30).status_code == 201
    assert requests.post(f"{resource}project/ai_priv/token/ai_priv_tok/", json={"public": 0},
                         timeout=30).status_code == 201
    Files.gate.clear()  # ai_alike_a's job waits for its first slice (not there: it then fails) until the end
    try:
        running = body("ai_alike_ds", "ai_alike_a", {"em": {**GOOD_CHANNEL, "data_url": f"{base}/slow"}})
        running["project"]["token_name"] = "ai_alike_tok"
        assert requests.post(f"{url}/nd/sd/autoIngest/", json=running, timeout=30).status_code == 200
        lines = []
        for project, token, owner in [
                ("ai_alike_b", "ai_alike_tok", "ai_alike_a"),  # another project's job's token
                ("ai_alike_c", "ai_priv_tok", "ai_priv"),  # another project's token in the catalog
                ("ai_priv", "ai_alike_new", None),  # a private project
                ("ai_alike_a", "ai_alike_other", "ai_alike_tok")]:  # a project whose job runs under another token
            reply = requests.post(f"{url}/nd/sd/autoIngest/", json=nowhere_job("ai_alike_ds", project, token),
                                  timeout=30)
            assert owner is None or repr(owner) not in reply.text, reply.text
            lines.append(taken_line(reply, token, project))
    finally:
        Files.gate.set()
    assert set(lines) == {"autoIngest: token T or project P is taken; choose another token_name or project_name\n"}, \
        lines


def test_a_keyed_servers_job_state_answers_alike_for_a_private_project_and_a_missing_one(keyed_url):
    headers = {"Authorization": f"Token {KEY}"}
    job = nowhere_job("ai_hidden_ds", "ai_hidden", "ai_hidden", public=0)
    assert requests.post(f"{keyed_url}/nd/sd/autoIngest/", json=job, headers=headers, timeout=30).status_code == 200
    for project in ("ai_hidden", "ai_never_posted"):
        assert status(keyed_url, project).status_code == 401
        assert status(keyed_url, project, {"Authorization": "Token wrong"}).status_code == 403
    assert status(keyed_url, "ai_never_posted", headers).status_code == 404
    again = {**job, "project": {**job["project"], "project_name": "ai_hidden_other"}}  # its token is taken
    assert requests.post(f"{keyed_url}/nd/sd/autoIngest/", json=again, timeout=30).status_code == 401


# --- job slots: --max-jobs -------------------------------------------------------------------------
LOCK_TIMEOUT = 60.0  # s for an orphaned ingest (its server killed) to finish


def start_queue_server(store):
    """`serve --max-jobs 1` on `store`: the one place these tests start a one-slot server (its
    jobs read the file server on 127.0.0.1)."""
    return start_server(store, args=("--max-jobs", "1", "--fetch-from", HOST))


@pytest.fixture(scope="module")
def queue_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("serve-autoingest-queue") / "store"
    path.mkdir()
    return path


@pytest.fixture(scope="module")
def queue_url(queue_store):
    server = start_queue_server(queue_store)
    yield server.url
    server.stop()


def slice_job(base: str, project: str) -> dict:
    return body(f"{project}_ds", project, {"em": {**GOOD_CHANNEL, "data_url": base}})


def test_with_one_job_slot_a_second_job_queues_until_the_first_is_done(queue_url, files):
    base, folder = files
    first = tiff_stack(folder / "slow", "ai_q1", "em", seed=4)
    second = tiff_stack(folder, "ai_q2", "em", seed=5)
    Files.gate.clear()  # the first job's slices wait: it holds the one slot until the test lets go
    try:
        assert requests.post(f"{queue_url}/nd/sd/autoIngest/", json=slice_job(f"{base}/slow", "ai_q1"),
                             timeout=30).status_code == 200
        assert status(queue_url, "ai_q1").json()["state"] == "running"
        assert requests.post(f"{queue_url}/nd/sd/autoIngest/", json=slice_job(base, "ai_q2"),
                             timeout=30).status_code == 200
        queued = status(queue_url, "ai_q2").json()
        assert queued["state"] == "queued" and queued["place"] == 1 and "--max-jobs" in queued["message"], queued
    finally:
        Files.gate.set()
    assert wait_until_finished(queue_url, "ai_q1")["state"] == "done"
    assert wait_until_finished(queue_url, "ai_q2")["state"] == "done"
    assert np.array_equal(npz_cutout(queue_url, "ai_q1", "em", SHAPE, OFFSET), first)
    assert np.array_equal(npz_cutout(queue_url, "ai_q2", "em", SHAPE, OFFSET), second)


def test_slots_are_shared_by_the_stores_servers_and_a_queued_job_whose_server_died_reads_failed(
        queue_url, queue_store, files):
    base, _ = files
    Files.gate.clear()
    doomed = start_queue_server(queue_store)  # a second server process of the store, killed below
    try:
        # the first job's ingest waits for its first slice (which is not there: it then fails at once)
        for job in (slice_job(f"{base}/slow", "ai_d1"), slice_job(base, "ai_d2")):
            assert requests.post(f"{doomed.url}/nd/sd/autoIngest/", json=job, timeout=30).status_code == 200
        assert status(doomed.url, "ai_d2").json()["state"] == "queued"
        assert requests.post(f"{queue_url}/nd/sd/autoIngest/", json=slice_job(base, "ai_d3"),
                             timeout=30).status_code == 200
        third = status(queue_url, "ai_d3").json()  # the other process's slot is taken, and ai_d2 came first
        assert third["state"] == "queued" and third["place"] == 2, third
        doomed.kill()
        state = status(queue_url, "ai_d2").json()  # the store's other server reads it
        assert state["state"] == "failed" and "post the same body again" in state["message"], state
    finally:
        doomed.kill()
        Files.gate.set()
    # ai_d1's ingest outlives its server and keeps the slot; then ai_d3 runs (and fails: no slices there)
    state = wait_until_finished(queue_url, "ai_d3")
    assert state["state"] == "failed" and "ai_d3/em/0005.tif" in state["message"], state
    deadline = time.monotonic() + LOCK_TIMEOUT
    while (fd := try_lock(queue_store / "_jobs" / "ai_d1.lock")) is None:
        assert time.monotonic() < deadline, "the orphaned ingest of ai_d1 did not end"
        time.sleep(0.1)
    os.close(fd)
