"""`/precomputed/…`: each channel's files over HTTP for CloudVolume and neuroglancer.

A real `ndingest serve` on 127.0.0.1 over a store the CLI ingested (module-scoped). Paths
that try to leave a channel's folder are sent byte for byte with http.client (requests
and browsers would normalise `..` away before sending).
"""
from __future__ import annotations

import http.client
import os

import numpy as np
import pytest
import requests

from conftest import read_cutout
from ndingest.sample import IMAGE_FILE
from serving import TIMESERIES, TS_OFFSET, ingest_store, serving

DS, PR = "neurostorm_kat11_scale3", "kat11_scale3"
IMAGE = f"/precomputed/{DS}/{PR}/image"
CHUNK = "32_32_40/1000-1128_2000-2128_1096-1112"  # a whole chunk holding z = 1100


@pytest.fixture(scope="module")
def store(tmp_path_factory, tutorial_data):
    return ingest_store(tmp_path_factory.mktemp("serve-precomputed"), tutorial_data, timeseries=True)


@pytest.fixture(scope="module")
def server(store):
    with serving(store["store"]) as running:
        yield running


def raw_get(server, target: str, headers: dict | None = None) -> tuple[int, bytes]:
    """GET `target` exactly as written (no client-side normalisation of `..` or `%2e`)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.putrequest("GET", target, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        conn.endheaders()
        reply = conn.getresponse()
        return reply.status, reply.read()
    finally:
        conn.close()


def test_cloudvolume_reads_the_channel_over_http_equal_to_the_source(server, tutorial_data):
    from cloudvolume import CloudVolume

    cv = CloudVolume(f"precomputed://{server.url}{IMAGE}", mip=0, parallel=1, progress=False, fill_missing=False)
    assert list(cv.voxel_offset) == [1000, 2000, 1000] and list(cv.shape[:3]) == [300, 200, 200]
    source = read_cutout(tutorial_data / IMAGE_FILE)  # (z, y, x)
    got = np.asarray(cv[1000:1300, 2000:2200, 1090:1130])[..., 0]  # (x, y, z)
    np.testing.assert_array_equal(got.transpose(2, 1, 0), source[90:130])


def test_a_range_request_gets_206_and_exactly_those_bytes(server, store):
    whole = (store["store"] / DS / PR / "image" / CHUNK).read_bytes()
    reply = requests.get(f"{server.url}{IMAGE}/{CHUNK}", headers={"Range": "bytes=100-4195"}, timeout=10)
    assert reply.status_code == 206
    assert reply.content == whole[100:4196]
    assert reply.headers["content-range"] == f"bytes 100-4195/{len(whole)}"
    assert reply.headers["content-length"] == "4096"
    tail = requests.get(f"{server.url}{IMAGE}/{CHUNK}", headers={"Range": "bytes=-10"}, timeout=10)
    assert tail.status_code == 206 and tail.content == whole[-10:]
    full = requests.get(f"{server.url}{IMAGE}/{CHUNK}", timeout=10)
    assert full.status_code == 200 and full.content == whole and full.headers["accept-ranges"] == "bytes"


def test_an_unsatisfiable_range_gets_416(server, store):
    size = (store["store"] / DS / PR / "image" / CHUNK).stat().st_size
    reply = requests.get(f"{server.url}{IMAGE}/{CHUNK}", headers={"Range": f"bytes={size}-{size + 10}"}, timeout=10)
    assert reply.status_code == 416
    assert reply.headers["content-range"] == f"bytes */{size}"
    assert reply.headers["access-control-allow-origin"] == "*"


def test_cors_headers_on_get_and_on_a_range_preflight(server):
    reply = requests.get(f"{server.url}{IMAGE}/info", headers={"Origin": "http://elsewhere.example"}, timeout=10)
    assert reply.status_code == 200 and reply.json()["scales"][0]["voxel_offset"] == [1000, 2000, 1000]
    assert reply.headers["access-control-allow-origin"] == "*"
    exposed = {h.strip().lower() for h in reply.headers["access-control-expose-headers"].split(",")}
    assert {"content-range", "content-length", "accept-ranges"} <= exposed
    preflight = requests.options(f"{server.url}{IMAGE}/{CHUNK}", timeout=10, headers={
        "Origin": "http://elsewhere.example", "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "range"})
    assert preflight.status_code in (200, 204)
    assert preflight.headers["access-control-allow-origin"] == "*"
    assert "range" in preflight.headers["access-control-allow-headers"].lower()
    assert "GET" in preflight.headers["access-control-allow-methods"]
    missing = requests.get(f"{server.url}{IMAGE}/32_32_40/0-128_0-128_0-16", timeout=10)
    assert missing.status_code == 404 and missing.headers["access-control-allow-origin"] == "*"


@pytest.mark.parametrize("target", [
    f"{IMAGE}/../../../catalog.sqlite",
    f"{IMAGE}/%2e%2e/%2e%2e/%2e%2e/catalog.sqlite",
    f"{IMAGE}/%2E%2E/%2E%2E/%2E%2E/catalog.sqlite",
    f"{IMAGE}/..%2F..%2F..%2Fcatalog.sqlite",
    f"{IMAGE}/%2e%2e%2f%2e%2e%2f%2e%2e%2fcatalog.sqlite",
    f"{IMAGE}/32_32_40/../../../../catalog.sqlite",
    f"{IMAGE}/%2F..%2F..%2F..%2Fcatalog.sqlite",
    f"{IMAGE}//etc/passwd",
    f"{IMAGE}/%2Fetc%2Fpasswd",
    "/precomputed/../catalog.sqlite",
    "/precomputed/%2e%2e/catalog.sqlite",
    "/precomputed/..%2F..%2Fcatalog.sqlite",
    f"/precomputed/{DS}/{PR}/..%2F..%2Fcatalog.sqlite",
    f"/precomputed/{DS}/%2e%2e/%2e%2e/catalog.sqlite",
    f"{IMAGE}/../../../_markers/{DS}/{PR}/image",
    f"{IMAGE}/%2e%2e/annotation/info",
    f"{IMAGE}/.",
    f"{IMAGE}/",
])
def test_no_path_leaves_the_channel_folder(server, target):
    status, body = raw_get(server, target)
    assert status == 404, (target, status, body[:200])
    assert b"SQLite format" not in body and b"root:" not in body


def test_a_symlink_out_of_the_channel_folder_is_not_followed(server, store):
    channel = store["store"] / DS / PR / "image"
    link = channel / "escape"
    os.symlink(store["store"] / "catalog.sqlite", link)
    try:
        status, body = raw_get(server, f"{IMAGE}/escape")
        assert status == 404 and b"SQLite format" not in body
    finally:
        link.unlink()


def test_only_catalogued_channels_are_served(server):
    assert requests.get(f"{server.url}/precomputed/{DS}/{PR}/nochannel/info", timeout=10).status_code == 404
    assert requests.get(f"{server.url}/precomputed/otherdataset/{PR}/image/info", timeout=10).status_code == 404
    assert requests.get(f"{server.url}/precomputed/_markers/{DS}/{PR}/info", timeout=10).status_code == 404


def test_each_time_point_of_a_time_series_is_a_volume_of_its_own(server, store):
    from cloudvolume import CloudVolume

    ds, pr, _ = TIMESERIES
    base = f"/precomputed/{ds}/{pr}/frames"
    assert requests.get(f"{server.url}{base}/info", timeout=10).status_code == 404  # no info above tN/
    data = store["ts_data"]  # (t, z, y, x)
    x0, y0, z0 = TS_OFFSET
    cv = CloudVolume(f"precomputed://{server.url}{base}/t2", mip=0, parallel=1, progress=False, fill_missing=False)
    got = np.asarray(cv[x0:x0 + 50, y0:y0 + 40, z0:z0 + 20])[..., 0]
    np.testing.assert_array_equal(got.transpose(2, 1, 0), data[2])


# --- neuroglancer, headless ---------------------------------------------------------------------
def test_neuroglancer_draws_the_image_channel_from_the_precomputed_route(server, tutorial_data):
    pytest.importorskip("neuroglancer", reason="the view extra: pip install 'ndingest[view]'")
    pytest.importorskip("selenium", reason="the view extra: pip install 'ndingest[view]'")
    from ndingest.view import CHROMEDRIVER, CHROMIUM

    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (/usr/bin/chromium): apt-get install chromium chromium-driver")
    import neuroglancer
    from test_neuroglancer import EXPECTED_TOP_LEFT, IMAGE_BACKGROUND, OFFSET, SIZE, Z, Browser

    source = f"precomputed://{server.url}{IMAGE}"
    layer = neuroglancer.ImageLayer(source=source, opacity=1.0,
                                    shader="void main() { emitGrayscale(toNormalized(getDataValue())); }")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SE_OFFLINE", "true")
        mp.setenv("SE_CHROMEDRIVER", str(CHROMEDRIVER))
        browser = Browser()
        try:
            browser.show("image", layer, IMAGE_BACKGROUND)
            states = browser.wait_for_sources("image")
            assert states == ["ok"], f"neuroglancer could not open {source}: {states}"
            pixels = browser.screenshot()
            errors = list(browser.errors)
        finally:
            browser.close()
    assert not errors, f"neuroglancer logged errors: {errors}"
    expected = read_cutout(tutorial_data / IMAGE_FILE)[Z - OFFSET[2]]  # (y, x)
    top, left = EXPECTED_TOP_LEFT
    drawn = pixels[top:top + SIZE[1], left:left + SIZE[0], :3].astype(int)
    assert (drawn[..., 0] == drawn[..., 1]).all() and (drawn[..., 1] == drawn[..., 2]).all(), "not all grey"
    diff = np.abs(drawn[..., 0] - expected.astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() >= 0.999, f"{(diff == 0).mean():.4%} of the pixels equal"


def test_with_keys_a_private_projects_files_need_the_key(store, tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text("the-key\n")
    ds, pr, _ = TIMESERIES
    with serving(store["store"], api_keys=keys) as keyed:
        private = f"{keyed.url}/precomputed/{ds}/{pr}/frames/t0/info"
        assert requests.get(private, timeout=10).status_code == 401
        assert requests.get(private, headers={"Authorization": "Token wrong"}, timeout=10).status_code == 403
        assert requests.get(private, headers={"Authorization": "Token the-key"}, timeout=10).status_code == 200
        assert requests.get(f"{keyed.url}{IMAGE}/info", timeout=10).status_code == 200  # public: no key
