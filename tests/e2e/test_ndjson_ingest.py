"""ndstore's auto-ingest JSON, as ndio's own `NDIngest` makes it, run two ways: by
`ndingest ingest ND.json --store DIR` and by `POST /nd/sd/autoIngest/` to a real `ndingest
serve`, the slices served by `python -m http.server` on 127.0.0.1.

ndio's `NDIngest()` downloads JSON schemas from GitHub that it never uses and posts to its
own host: the test answers the schema requests itself (nothing leaves 127.0.0.1) and points
its `oo` at the server. ndio's path check (`output_json`) numbers the first slice from the
x offset, so the bodies use equal x and z offsets.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
import types
import urllib.request
from importlib import import_module

import numpy as np
import pytest
import requests
import tensorstore as ts
import tifffile
from PIL import Image

from conftest import run_cli
from serving import HOST, free_port, serving

ndingest_module = import_module("ndio.remote.ndingest")
neurodata_module = import_module("ndio.remote.neurodata")

SHAPE = (6, 40, 48)       # z, y, x of every slice stack
OFFSET = (3, 0, 3)        # x, y, z: x = z, as ndio's path check wants
POLL_TIMEOUT = 60.0       # s; each job here is done in a few


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """(base URL, folder) of `python -m http.server` on 127.0.0.1 over a folder of slices."""
    folder = tmp_path_factory.mktemp("nd-slices")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", HOST, str(port)], cwd=folder,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://{HOST}:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            urllib.request.urlopen(base + "/", timeout=2).close()
            break
        except OSError:
            assert time.monotonic() < deadline and proc.poll() is None, "http.server did not start"
            time.sleep(0.1)
    yield base, folder
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def ndio(monkeypatch):
    """ndio's NDIngest as it is, its schema downloads answered here (never GitHub)."""
    real = requests.get

    def get(url, *args, **kwargs):
        if url.startswith(ndingest_module.SCHEMA_BASE):
            return types.SimpleNamespace(status_code=200, text="{}")
        return real(url, *args, **kwargs)

    monkeypatch.setattr(ndingest_module, "requests", types.SimpleNamespace(get=get, post=requests.post,
                                                                           head=requests.head))
    return ndingest_module.NDIngest


def write_slices(folder, token: str, channel: str, *, seed: int, ext: str = "tif", times: int | None = None,
                 dtype=np.uint8) -> np.ndarray:
    """ndstore's SLICE layout: {data_url}/{token}/{channel}/[time{t:04d}/]{z:04d}.{ext}, z from the offset."""
    shape = SHAPE if times is None else (times, *SHAPE)
    data = np.random.default_rng(seed).integers(0, np.iinfo(dtype).max, shape, dtype=dtype)
    stacks = [(folder / token / channel, data)] if times is None else [
        (folder / token / channel / f"time{t:04d}", data[t]) for t in range(times)]
    for where, stack in stacks:
        where.mkdir(parents=True, exist_ok=True)
        for i, page in enumerate(stack):
            path = where / f"{OFFSET[2] + i:04d}.{ext}"
            Image.fromarray(page).save(path) if ext == "png" else tifffile.imwrite(path, page)
    return data


def read_store(store, dataset: str, project: str, channel: str, t: int | None = None) -> np.ndarray:
    """Level 0 of a channel (or of its time point t), (z, y, x), read by tensorstore alone."""
    where = store / dataset / project / channel / ("" if t is None else f"t{t}")
    volume = ts.open({"driver": "neuroglancer_precomputed", "scale_index": 0,
                      "kvstore": {"driver": "file", "path": f"{where}/"}}).result()
    return np.asarray(volume[..., 0].read().result()).transpose(2, 1, 0)


def status_json(spec) -> dict:
    run = run_cli("status", str(spec), "--json")
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)["channels"]


def test_ingest_of_ndios_output_json_reads_png_slices_over_http(ndio, files, tmp_path):
    base, folder = files
    data = write_slices(folder, "nd_cli", "em", seed=1, ext="png")
    nd = ndio(f"{HOST}:9")
    nd.add_dataset("nd_cli_ds", (SHAPE[2], SHAPE[1], SHAPE[0]), (4.0, 4.0, 40.0), offset=OFFSET,
                   scalinglevels=1, scaling=0)
    nd.add_project("nd_cli", "nd_cli", 1)
    nd.add_channel("em", "uint8", "image", base, "SLICE", "png")
    nd.output_json(str(tmp_path / "ND.json"))  # checks the first slice over HTTP; writes str(dict)
    assert (tmp_path / "ND.json").read_text().startswith("{'")
    store = tmp_path / "store"
    run = run_cli("ingest", str(tmp_path / "ND.json"), "--store", str(store))
    assert run.returncode == 0, run.stderr
    spec = store / "_jobs" / "nd_cli.toml"
    assert spec.exists()
    assert np.array_equal(read_store(store, "nd_cli_ds", "nd_cli", "em"), data)
    em = status_json(spec)["em"]
    assert em["done"] == em["total"] > 0
    assert not (store / "_jobs" / "nd_cli" / "sources").exists()  # read over HTTP where they are, never copied
    again = run_cli("ingest", str(tmp_path / "ND.json"), "--store", str(store))  # resumes: nothing left
    assert again.returncode == 0, again.stderr


def test_a_slice_changed_on_its_server_stops_the_rerun_and_restart_ingests_it_again(files, tmp_path):
    base, folder = files
    write_slices(folder, "nd_chg", "em", seed=4)
    body = {"dataset": {"dataset_name": "nd_chg_ds", "imagesize": [SHAPE[2], SHAPE[1], SHAPE[0]],
                        "voxelres": [4.0, 4.0, 40.0], "offset": list(OFFSET), "scalinglevels": 1, "scaling": 0},
            "project": {"project_name": "nd_chg", "token_name": "nd_chg", "public": 1},
            "channels": {"em": {"channel_name": "em", "datatype": "uint8", "channel_type": "image",
                                "data_url": base, "file_format": "SLICE", "file_type": "tif"}}}
    (tmp_path / "chg.json").write_text(json.dumps(body))
    store = tmp_path / "store"
    assert run_cli("ingest", str(tmp_path / "chg.json"), "--store", str(store)).returncode == 0
    time.sleep(1.1)  # Last-Modified counts whole seconds
    data = write_slices(folder, "nd_chg", "em", seed=5)  # every slice rewritten on the server
    spec = store / "_jobs" / "nd_chg.toml"
    changed = run_cli("ingest", str(spec))
    assert changed.returncode == 3, changed.stderr
    assert f"{base}/nd_chg/em/" in changed.stderr and "changed" in changed.stderr, changed.stderr
    restarted = run_cli("ingest", str(spec), "--restart", "em")
    assert restarted.returncode == 0, restarted.stderr
    assert np.array_equal(read_store(store, "nd_chg_ds", "nd_chg", "em"), data)


def test_ingest_of_a_time_series_reads_its_time_folders(files, tmp_path):
    base, folder = files
    data = write_slices(folder, "nd_ts", "ts", seed=2, times=2, dtype=np.uint16)
    body = {"dataset": {"dataset_name": "nd_ts_ds", "imagesize": [SHAPE[2], SHAPE[1], SHAPE[0]],
                        "voxelres": [4.0, 4.0, 40.0], "offset": list(OFFSET), "timerange": [0, 1],
                        "scalinglevels": 0, "scaling": 0},
            "project": {"project_name": "nd_ts", "token_name": "nd_ts", "public": 1}, "metadata": "",
            "channels": {"ts": {"channel_name": "ts", "datatype": "uint16", "channel_type": "timeseries",
                                "data_url": base, "file_format": "SLICE", "file_type": "tif"}}}
    (tmp_path / "ts.json").write_text(json.dumps(body))
    store = tmp_path / "store"
    run = run_cli("ingest", str(tmp_path / "ts.json"), "--store", str(store))
    assert run.returncode == 0, run.stderr
    for t in range(2):
        assert np.array_equal(read_store(store, "nd_ts_ds", "nd_ts", "ts", t), data[t])


def test_ndio_posts_to_serve_which_runs_the_ingest_as_a_job_under_store_jobs(ndio, files, tmp_path):
    base, folder = files
    data = write_slices(folder, "nd_post", "em", seed=3)
    store = tmp_path / "store"
    store.mkdir()
    with serving(store, args=("--fetch-from", HOST)) as server:  # its file server is on 127.0.0.1
        nd = ndio(server.url.split("://", 1)[1])
        nd.oo = neurodata_module.neurodata("", hostname=server.url.split("://", 1)[1], protocol="http")
        nd.add_dataset("nd_post_ds", (SHAPE[2], SHAPE[1], SHAPE[0]), (4.0, 4.0, 40.0), offset=OFFSET,
                       scalinglevels=1, scaling=0)
        nd.add_project("nd_post", "nd_post", 1)
        nd.add_channel("em", "uint8", "image", base, "SLICE", "tif")
        nd.post_data()  # ndio asserts a 200
        spec = store / "_jobs" / "nd_post.toml"
        assert spec.exists()  # written before the answer
        propagate = f"{server.url}/nd/sd/nd_post/em/getPropagate/"
        deadline = time.monotonic() + POLL_TIMEOUT
        while requests.get(propagate, timeout=30).text != "2":
            job = requests.get(f"{server.url}/nd/sd/autoIngest/nd_post/", timeout=30).json()
            assert job["state"] != "failed", job
            assert time.monotonic() < deadline, (job, server.log())
            time.sleep(0.2)
        job = requests.get(f"{server.url}/nd/sd/autoIngest/nd_post/", timeout=30).json()
        deadline = time.monotonic() + POLL_TIMEOUT
        while job["state"] == "running" and time.monotonic() < deadline:  # the subprocess's last lines
            time.sleep(0.1)
            job = requests.get(f"{server.url}/nd/sd/autoIngest/nd_post/", timeout=30).json()
        assert job["state"] == "done" and job["spec"] == str(spec), job
    em = status_json(spec)["em"]
    assert em["done"] == em["total"] == em["verified"] > 0
    assert np.array_equal(read_store(store, "nd_post_ds", "nd_post", "em"), data)
    assert (store / "_jobs" / "nd_post" / "ingest.log").exists()
