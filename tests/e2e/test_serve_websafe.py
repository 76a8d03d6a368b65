"""No web page can use `ndingest serve` (issue 28): a foreign `Origin` or a cross-site
`Sec-Fetch-Site` on any write is 403 and changes nothing, form Content-Types are 415, a
Host that is not this machine's is 400 (DNS rebinding), and CORS `*` is for public projects
only. ndio, requests and curl send none of these headers: test_serve_ndio.py runs unchanged.

One store per module, made through the resource API, and one server on it with
`--allow-origin` and `--allow-host` (real processes on 127.0.0.1).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import requests

from serving import HOST, Server, free_port, serving
from test_serve_factory import wait_for
from test_serve_writes import DATASET, PROJECT, TOKEN, box_url, get, make_store, npz, resource

TRUSTED = "http://trusted.example:8000"  # --allow-origin
LAB = "lab.example"                       # --allow-host
FOREIGN = "http://evil.example"
CHANNELS = {"img": ("image", "uint8", 0, 0, 0), "keep": ("image", "uint8", 0, 0, 0)}
BOX = ((1001, 1033), (2003, 2035), (7, 11))
PRIVATE = ("pds", "ppr", "ptok")  # a dataset, project and token, none public


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("serve-websafe") / "store"
    path.mkdir()
    return path


@pytest.fixture(scope="module")
def url(store):
    with serving(store, args=("--allow-origin", TRUSTED, "--allow-host", LAB)) as server:
        make_store(server.url, channels=CHANNELS)
        ds, pr, tk = PRIVATE
        dataset = {"ximagesize": 64, "yimagesize": 64, "zimagesize": 8, "xvoxelres": 4.0, "yvoxelres": 4.0,
                   "zvoxelres": 40.0, "scalingoption": 0, "scalinglevels": 0, "public": 0}
        base = f"{server.url}/nd/resource/dataset/{ds}/"
        for where, body in [(base, dataset), (f"{base}project/{pr}/", {"public": 0}),
                            (f"{base}project/{pr}/token/{tk}/", {"public": 0}),
                            (f"{base}project/{pr}/channel/em/", {"channel_type": "image", "channel_datatype": "uint8"})]:
            assert requests.post(where, json=body, timeout=30).status_code == 201
        block = np.arange(64 * 64 * 8, dtype=np.uint8).reshape(8, 64, 64)
        assert requests.post(f"{server.url}/nd/sd/{tk}/em/npz/0/0,64/0,64/0,8/", data=npz(block),
                             timeout=30).status_code == 200
        assert requests.post(box_url(server.url, "keep", "npz", BOX), data=npz(np.ones((4, 32, 32), np.uint8)),
                             timeout=30).status_code == 200
        yield server.url


def channel(url: str, name: str) -> requests.Response:
    return requests.get(resource(url, "project", PROJECT, "channel", name), timeout=30)


def propagate(url: str, name: str) -> str:
    return requests.get(f"{url}/nd/sd/{TOKEN}/{name}/getPropagate/", timeout=30).text.strip()


def writes(url: str):
    """Every write route, each as (name, method, URL, body, Content-Type or None)."""
    nd = f"{url}/nd/sd/{TOKEN}"
    job = {"dataset": {"dataset_name": "ai_evil_ds", "imagesize": [64, 64, 8], "voxelres": [4.0, 4.0, 40.0],
                       "offset": [0, 0, 0], "scalinglevels": 0, "scaling": 0},
           "project": {"project_name": "ai_evil", "token_name": "ai_evil", "public": 1}, "metadata": "",
           "channels": {"em": {"channel_name": "em", "channel_type": "image", "datatype": "uint8",
                               "data_url": "http://127.0.0.1:9/", "file_format": "SLICE", "file_type": "tif"}}}
    return [
        ("cutout POST", "POST", box_url(url, "img", "npz", BOX), npz(np.full((4, 32, 32), 9, np.uint8)),
         "application/octet-stream"),
        ("resource POST", "POST", resource(url, "project", PROJECT, "channel", "evil"),
         json.dumps({"channel_type": "image", "channel_datatype": "uint8"}), "application/json"),
        ("resource DELETE", "DELETE", resource(url, "project", PROJECT, "channel", "keep"), None, None),
        ("channel PATCH", "PATCH", resource(url, "project", PROJECT, "channel", "keep"),
         json.dumps({"startwindow": 3, "endwindow": 7}), "application/json"),
        ("createChannel", "POST", f"{nd}/createChannel/",
         json.dumps({"channels": {"made": {"channel_name": "made", "channel_type": "image", "datatype": "uint8",
                                           "readonly": 0}}}), "application/json"),
        ("deleteChannel", "POST", f"{nd}/deleteChannel/", json.dumps({"channels": ["keep"]}), "application/json"),
        ("autoIngest", "POST", f"{url}/nd/sd/autoIngest/", json.dumps(job), None),
        ("setPropagate", "GET", f"{nd}/keep/setPropagate/1/", None, None),
    ]


def assert_unchanged(url: str, store) -> None:
    assert not get(url, "img", BOX).any()
    assert channel(url, "evil").status_code == 404 and channel(url, "made").status_code == 404
    kept = channel(url, "keep")
    assert kept.status_code == 200 and kept.json().get("startwindow") != 3
    assert get(url, "keep", BOX).all() and propagate(url, "keep") == "0"
    assert not (store / "_jobs" / "ai_evil").exists()
    assert requests.get(f"{url}/nd/sd/autoIngest/ai_evil/", timeout=30).status_code == 404


@pytest.mark.parametrize("headers", [{"Origin": FOREIGN}, {"Origin": "null"},
                                     {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"}],
                         ids=["foreign-origin", "null-origin", "cross-site", "same-site"])
def test_a_web_page_is_refused_every_write_and_changes_nothing(url, store, headers):
    for name, method, where, body, kind in writes(url):
        sent = {**headers, **({"Content-Type": kind} if kind else {})}
        reply = requests.request(method, where, data=body, headers=sent, timeout=30)
        assert reply.status_code == 403, (name, reply.status_code, reply.text)
        assert reply.text.count("\n") == 1, (name, reply.text)
        assert headers.get("Origin", headers.get("Sec-Fetch-Site")) in reply.text, (name, reply.text)
    assert_unchanged(url, store)


def test_the_servers_own_origin_and_an_allowed_one_may_write(url):
    port = url.rsplit(":", 1)[1]
    for i, origin in enumerate([url, f"http://localhost:{port}", TRUSTED]):
        name = f"by_origin_{i}"
        reply = requests.post(resource(url, "project", PROJECT, "channel", name), timeout=30,
                              json={"channel_type": "image", "channel_datatype": "uint8"},
                              headers={"Origin": origin, "Host": origin.split("//")[1] if i == 1 else f"{HOST}:{port}",
                                       "Sec-Fetch-Site": "same-origin" if i < 2 else "cross-site"})
        assert reply.status_code == 201, (origin, reply.text)
    assert requests.get(f"{url}/nd/sd/{TOKEN}/keep/setPropagate/0/", headers={"Sec-Fetch-Site": "same-origin"},
                        timeout=30).status_code == 200  # marks stale what is stale already
    # another port of this host is another origin
    reply = requests.delete(resource(url, "project", PROJECT, "channel", "by_origin_0"), timeout=30,
                            headers={"Origin": f"http://{HOST}:{int(port) + 1}"})
    assert reply.status_code == 403 and channel(url, "by_origin_0").status_code == 200


@pytest.mark.parametrize("kind", ["text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded",
                                  "multipart/form-data; boundary=x"])
def test_form_content_types_are_415_on_json_routes_and_cutout_posts(url, store, kind):
    for name, method, where, body, _ in writes(url):
        if method == "GET":
            continue
        reply = requests.request(method, where, data=body, headers={"Content-Type": kind}, timeout=30)
        assert reply.status_code == 415, (name, reply.status_code, reply.text)
        assert reply.text.count("\n") == 1 and kind.split(";")[0] in reply.text, (name, reply.text)
    assert_unchanged(url, store)


def test_json_and_no_content_type_stay_accepted(url):
    nd = f"{url}/nd/sd/{TOKEN}"
    made = {"channels": {"ct_json": {"channel_name": "ct_json", "channel_type": "image", "datatype": "uint8",
                                     "readonly": 0}}}
    assert requests.post(f"{nd}/createChannel/", json=made, timeout=30).status_code == 200
    bare = json.dumps({"channels": {"ct_bare": {"channel_type": "image", "datatype": "uint8"}}})
    reply = requests.post(f"{nd}/createChannel/", data=bare, timeout=30)  # requests sends no Content-Type
    assert reply.status_code == 200, reply.text
    assert channel(url, "ct_json").status_code == 200 and channel(url, "ct_bare").status_code == 200
    reply = requests.post(f"{nd}/deleteChannel/", data=json.dumps({"channels": ["ct_bare"]}), timeout=30)
    assert reply.status_code == 200 and channel(url, "ct_bare").status_code == 404
    reply = requests.post(f"{url}/nd/sd/autoIngest/", data=b"{not json", timeout=30)  # past the guard: the body's 400
    assert reply.status_code == 400 and reply.text.startswith("autoIngest: "), reply.text


@pytest.mark.parametrize("host", ["evil.example", "evil.example:80", f"rebound.example:{1234}", "10.0.0.1",
                                  "127.0.0.1.evil.example"])
def test_a_host_that_is_not_this_machines_is_400(url, host):
    for method, where in [("GET", f"{url}/nd/sd/public_tokens/"), ("GET", f"{url}/nd/sd/{TOKEN}/info/"),
                          ("GET", f"{url}/precomputed/{DATASET}/{PROJECT}/keep/info"),
                          ("DELETE", resource(url, "project", PROJECT, "channel", "keep"))]:
        reply = requests.request(method, where, headers={"Host": host}, timeout=30)
        assert reply.status_code == 400, (where, reply.status_code)
        assert reply.text.count("\n") == 1 and "Host" in reply.text, reply.text
    assert channel(url, "keep").status_code == 200


def test_loopback_names_and_an_allowed_host_are_answered(url):
    port = url.rsplit(":", 1)[1]
    for host in [f"localhost:{port}", f"127.0.0.1:{port}", "localhost", f"[::1]:{port}", f"{LAB}:{port}", LAB,
                 "LAB.example"]:
        reply = requests.get(f"{url}/nd/sd/{TOKEN}/info/", headers={"Host": host}, timeout=30)
        assert reply.status_code == 200, (host, reply.text)


def test_cors_star_only_for_a_public_projects_files(url):
    public = f"{url}/precomputed/{DATASET}/{PROJECT}/keep/info"
    reply = requests.get(public, headers={"Origin": FOREIGN}, timeout=30)
    assert reply.status_code == 200 and reply.headers["access-control-allow-origin"] == "*"
    ds, pr, _ = PRIVATE
    private = f"{url}/precomputed/{ds}/{pr}/em/info"
    reply = requests.get(private, headers={"Origin": FOREIGN}, timeout=30)
    assert reply.status_code == 200 and "access-control-allow-origin" not in reply.headers
    preflight = requests.options(private, timeout=30, headers={"Origin": FOREIGN, "Access-Control-Request-Method": "GET",
                                                               "Access-Control-Request-Headers": "range"})
    assert "access-control-allow-origin" not in preflight.headers
    reply = requests.get(private, headers={"Origin": TRUSTED}, timeout=30)
    assert reply.headers["access-control-allow-origin"] == TRUSTED and "Origin" in reply.headers["vary"]
    preflight = requests.options(private, timeout=30, headers={"Origin": TRUSTED, "Access-Control-Request-Method": "GET",
                                                               "Access-Control-Request-Headers": "range"})
    assert preflight.status_code == 204 and preflight.headers["access-control-allow-origin"] == TRUSTED
    assert "range" in preflight.headers["access-control-allow-headers"].lower()


def test_the_uvicorn_factory_takes_the_same_settings_from_the_environment(store, url, tmp_path):
    port = free_port()
    env = {**os.environ, "NDINGEST_STORE": str(store), "NDINGEST_ALLOW_ORIGIN": f"http://a.example, {TRUSTED}",
           "NDINGEST_ALLOW_HOST": f"other.example {LAB}", "NDINGEST_HOST": HOST}
    with open(tmp_path / "uvicorn.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "ndingest.server:app_from_env", "--factory",
                                 "--host", HOST, "--port", str(port), "--log-level", "warning"],
                                stdout=log, stderr=subprocess.STDOUT, env=env)
    server = Server(f"http://{HOST}:{port}", port, proc, tmp_path / "uvicorn.log")
    try:
        wait_for(server)
        info = f"{server.url}/nd/sd/{TOKEN}/info/"
        assert requests.get(info, headers={"Host": "evil.example"}, timeout=30).status_code == 400
        assert requests.get(info, headers={"Host": LAB}, timeout=30).status_code == 200
        where = resource(server.url, "project", PROJECT, "channel", "keep")
        assert requests.delete(where, headers={"Origin": FOREIGN}, timeout=30).status_code == 403
        assert requests.patch(where, json={}, headers={"Origin": TRUSTED}, timeout=30).status_code == 200
        assert requests.patch(where, data="{}", headers={"Content-Type": "text/plain"}, timeout=30).status_code == 415
        ds, pr, _ = PRIVATE
        reply = requests.get(f"{server.url}/precomputed/{ds}/{pr}/em/info", headers={"Origin": TRUSTED}, timeout=30)
        assert reply.headers.get("access-control-allow-origin") == TRUSTED
    finally:
        server.stop()
