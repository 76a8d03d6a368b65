"""`ndingest view`'s own file server serves the spec's channel folders and nothing else of
the store, under `serve`'s Host and CORS rules, and admits its viewer's page, so a private
project still shows. A real `ndingest view` process on 127.0.0.1 over a tiny private
project (made through `serve`'s resource API and a cutout POST, as an ingest would leave
it); judged with requests (no browser needed)."""
from __future__ import annotations

import re
import subprocess

import numpy as np
import pytest
import requests

pytest.importorskip("neuroglancer", reason="the view extra: pip install 'ndingest[view]'")
pytest.importorskip("selenium", reason="the view extra: pip install 'ndingest[view]'")

from conftest import NDINGEST, spec_text, write_h5  # noqa: E402
from serving import serving  # noqa: E402

DS, PR = "vds", "vpriv"
ELSEWHERE = "https://elsewhere.example"


@pytest.fixture(scope="module")
def viewing(tmp_path_factory):
    """The private spec's store, another project's file put beside it,
    and `ndingest view` running: (viewer URL, store server URL, store folder)."""
    folder = tmp_path_factory.mktemp("view-files")
    source = write_h5(folder / "img.h5", np.arange(32 * 32 * 4, dtype=np.uint8).reshape(4, 32, 32))
    spec = folder / "spec.toml"
    spec.write_text(spec_text(image=source, dataset=DS, project=PR, offset=(0, 0, 0), resolution=(4.0, 4.0, 40.0))
                    .replace("public = true", "public = false"))
    store = folder / "store"
    store.mkdir()
    with serving(store) as server:  # the store as an ingest leaves it, made without Luigi's start-up
        base = f"{server.url}/nd/resource/dataset/{DS}/"
        for url, body in [(base, {"ximagesize": 32, "yimagesize": 32, "zimagesize": 4, "xvoxelres": 4.0,
                                  "yvoxelres": 4.0, "zvoxelres": 40.0, "public": 0}),
                          (f"{base}project/{PR}/", {"public": 0}), (f"{base}project/{PR}/token/{PR}/", {"public": 0}),
                          (f"{base}project/{PR}/channel/image/", {"channel_type": "image", "channel_datatype": "uint8"})]:
            assert requests.post(url, json=body, timeout=30).status_code == 201
        reply = requests.post(f"{server.url}/nd/sd/{PR}/image/raw/0/0,32/0,32/0,4/", timeout=30,
                              data=np.arange(32 * 32 * 4, dtype=np.uint8).tobytes())
        assert reply.status_code == 200, reply.text
    (store / DS / "other" / "image").mkdir(parents=True)
    (store / DS / "other" / "image" / "info").write_text('{"secret": 1}')
    proc = subprocess.Popen([NDINGEST, "view", str(spec)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        viewer = proc.stdout.readline().split(": ", 1)[1].strip()
        served = re.search(r"store served at (\S+)", proc.stderr.readline()).group(1)
        yield viewer, served, store
    finally:
        proc.terminate()
        proc.wait(10)


def viewer_origin(viewer: str) -> str:
    return "/".join(viewer.split("/")[:3])


def test_a_channel_file_is_served_to_the_viewers_page_only(viewing):
    viewer, served, store = viewing
    info = requests.get(f"{served}/{DS}/{PR}/image/info", headers={"Origin": viewer_origin(viewer)}, timeout=10)
    assert info.status_code == 200 and info.json()["type"] == "image"
    assert info.headers["Access-Control-Allow-Origin"] == viewer_origin(viewer)
    scale = info.json()["scales"][0]["key"]
    chunk = next(p.name for p in (store / DS / PR / "image" / scale).iterdir())
    part = requests.get(f"{served}/{DS}/{PR}/image/{scale}/{chunk}", headers={"Range": "bytes=0-3"}, timeout=10)
    assert part.status_code == 206 and len(part.content) == 4
    foreign = requests.get(f"{served}/{DS}/{PR}/image/info", headers={"Origin": ELSEWHERE}, timeout=10)
    assert foreign.status_code == 200 and "Access-Control-Allow-Origin" not in foreign.headers  # private: no CORS
    preflight = requests.options(f"{served}/{DS}/{PR}/image/info", timeout=10, headers={
        "Origin": ELSEWHERE, "Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "range"})
    assert "Access-Control-Allow-Origin" not in preflight.headers


@pytest.mark.parametrize("path", [
    "/catalog.sqlite",
    f"/{DS}/other/image/info",                   # another project
    f"/_markers/{DS}/{PR}/image/level0",         # markers (a folder) and what is in it
    f"/{DS}/{PR}/image/../../../catalog.sqlite",
    f"/{DS}/{PR}/image/%2e%2e/%2e%2e/%2e%2e/catalog.sqlite",
    "/", f"/{DS}/", f"/{DS}/{PR}/image/",       # folder listings
    f"/{DS}/{PR}/image",
])
def test_nothing_else_of_the_store_is_served(viewing, path):
    viewer, served, store = viewing
    reply = requests.get(served + path, timeout=10)
    assert reply.status_code in (403, 404), (path, reply.status_code)
    assert b"SQLite format" not in reply.content and b"secret" not in reply.content
    assert b"Directory listing" not in reply.content


def test_a_marker_file_is_refused(viewing):
    viewer, served, store = viewing
    marker = next(p for p in (store / "_markers").rglob("*") if p.is_file())
    reply = requests.get(f"{served}/{marker.relative_to(store).as_posix()}", timeout=10)
    assert reply.status_code == 404


def test_a_foreign_host_is_400(viewing):
    viewer, served, store = viewing
    reply = requests.get(f"{served}/{DS}/{PR}/image/info", headers={"Host": "rebound.example"}, timeout=10)
    assert reply.status_code == 400 and b'"type"' not in reply.content
    assert requests.get(f"{served}/{DS}/{PR}/image/info", headers={"Host": "localhost:1"}, timeout=10).status_code == 200
