"""ndio 1.1.6, unchanged, against a real `ndingest serve` on 127.0.0.1.

ndio calls a module-level `getURL` it never defines (its class has a `getURL` method that
sends `Authorization: Token <user_token>`); the one patch here defines that name the way
the method does. Nothing else of ndio is touched. Without keys every call works; with a
key file the same writes are refused with 401, since ndio's writes send no key.
"""
from __future__ import annotations

import io
import time
import zlib
from importlib import import_module

import numpy as np
import pytest
import requests
from ndio.remote.errors import RemoteDataUploadError

from test_serve_writes import DATASET, OFFSET, SIZE, TOKEN, server_fixtures

# installed by `make venv` (--no-deps: see the Makefile); the module, not the class that
# `ndio.remote`'s star import puts under the same name
neurodata_module = import_module("ndio.remote.neurodata")

KEY = "ndio-test-key"
CHANNELS = {"img": ("image", "uint8", 0, 0, 0), "anno": ("annotation", "uint32", 0, 0, 0)}


def remote(base: str, user_token: str = ""):
    """An ndio remote on `base` (plain http, ndio's `nd/sd/` prefix)."""
    return neurodata_module.neurodata(user_token, hostname=base.split("://", 1)[1], protocol="http")


@pytest.fixture(autouse=True)
def ndio_geturl(monkeypatch):
    """The module-level getURL ndio calls but never defines, as its own `neurodata.getURL`
    method behaves: a GET carrying `Authorization: Token <token>` (empty here)."""
    def get_url(url, token=""):
        return requests.get(url, headers={"Authorization": f"Token {token}"}, timeout=60)
    monkeypatch.setattr(neurodata_module, "getURL", get_url, raising=False)


store, url, keyed_url = server_fixtures("serve-ndio", channels=CHANNELS, key=KEY)


def npz_get(base: str, channel: str, x, y, z) -> np.ndarray:
    reply = requests.get(f"{base}/nd/sd/{TOKEN}/{channel}/npz/0/{x[0]},{x[1]}/{y[0]},{y[1]}/{z[0]},{z[1]}/", timeout=60)
    assert reply.status_code == 200, reply.text
    return np.load(io.BytesIO(zlib.decompress(reply.content)))[0]


def test_ndio_reads_project_info_and_public_tokens(url):
    nd = remote(url)
    assert TOKEN in nd.get_public_tokens()
    info = nd.get_proj_info(TOKEN)
    assert set(info["channels"]) == set(CHANNELS)
    assert nd.get_image_size(TOKEN, 0) == list(SIZE)
    assert nd.get_image_offset(TOKEN, 0) == list(OFFSET)
    assert nd.get_block_size(TOKEN, 0) == [128, 128, 16]
    assert nd.get_token_dataset(TOKEN) == DATASET
    assert nd.get_public_datasets() == [DATASET]


def test_ndio_posts_and_gets_cutouts_in_xyz(url):
    nd = remote(url)
    x0, y0, z0 = OFFSET[0] + 10, OFFSET[1] + 20, OFFSET[2] + 3
    data_xyz = np.random.default_rng(1).integers(0, 256, (70, 50, 12), dtype=np.uint8)
    assert nd.post_cutout(TOKEN, "img", x0, y0, z0, data_xyz) is True
    back = nd.get_cutout(TOKEN, "img", x0, x0 + 70, y0, y0 + 50, z0, z0 + 12, resolution=0)
    assert back.shape == (70, 50, 12)  # ndio hands (x, y, z) back
    np.testing.assert_array_equal(back, data_xyz)
    np.testing.assert_array_equal(npz_get(url, "img", (x0, x0 + 70), (y0, y0 + 50), (z0, z0 + 12)),
                                  data_xyz.transpose(2, 1, 0))


def test_ndio_annotation_posts_keep_labels_where_it_sends_zeros(url):
    nd = remote(url)
    x0, y0, z0 = OFFSET
    first = np.full((20, 20, 4), 7, np.uint32)
    second = np.zeros((20, 20, 4), np.uint32)
    second[:10] = 9
    nd.post_cutout(TOKEN, "anno", x0, y0, z0, first)
    nd.post_cutout(TOKEN, "anno", x0, y0, z0, second)
    back = nd.get_cutout(TOKEN, "anno", x0, x0 + 20, y0, y0 + 20, z0, z0 + 4, resolution=0)
    np.testing.assert_array_equal(back, np.where(second != 0, second, first))


def test_ndio_creates_and_deletes_a_channel(url):
    nd = remote(url)
    assert nd.create_channel(TOKEN, "made", nd.IMAGE, "uint16", False) is True
    assert nd.get_channels(TOKEN)["made"]["datatype"] == "uint16"
    assert nd.create_channel(TOKEN, "made", nd.IMAGE, "uint16", False) is True  # the same again
    with pytest.raises(RemoteDataUploadError, match="datatype"):
        nd.create_channel(TOKEN, "made", nd.IMAGE, "uint8", False)
    nd.delete_channel(TOKEN, "made")  # ndio compares bytes with "SUCCESS": its answer is always False
    assert "made" not in nd.get_channels(TOKEN)


def test_ndio_propagates_and_reads_the_status(url):
    nd = remote(url)
    nd.post_cutout(TOKEN, "img", OFFSET[0], OFFSET[1], OFFSET[2], np.ones((4, 4, 2), np.uint8))
    assert nd.get_propagate_status(TOKEN, "img") == "0"
    assert nd.propagate(TOKEN, "img") is True
    deadline = time.monotonic() + 60
    while nd.get_propagate_status(TOKEN, "img") != "2" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert nd.get_propagate_status(TOKEN, "img") == "2"
    assert nd.propagate(TOKEN, "img") is None  # ndio's own no-op once propagated


def test_with_keys_ndio_writes_are_refused_with_401_and_change_nothing(url, keyed_url):
    nd = remote(keyed_url)
    x0, y0, z0 = OFFSET[0] + 200, OFFSET[1] + 100, OFFSET[2] + 30
    before = npz_get(url, "img", (x0, x0 + 8), (y0, y0 + 8), (z0, z0 + 2))
    with pytest.raises(RemoteDataUploadError, match="needs a key"):
        nd.post_cutout(TOKEN, "img", x0, y0, z0, np.full((8, 8, 2), 3, np.uint8))
    with pytest.raises(RemoteDataUploadError, match="needs a key"):
        nd.create_channel(TOKEN, "sneaky", nd.IMAGE, "uint8", False)
    remote(url).post_cutout(TOKEN, "img", *OFFSET, np.ones((2, 2, 1), np.uint8))  # stale, without keys
    assert nd.get_propagate_status(TOKEN, "img") == "0"  # a read of a public token needs no key
    with pytest.raises(RemoteDataUploadError, match="empty key"):  # ndio's GETs send "Token " (401 too)
        nd.propagate(TOKEN, "img")
    assert requests.get(f"{keyed_url}/nd/sd/{TOKEN}/img/setPropagate/1/", timeout=30).status_code == 401
    np.testing.assert_array_equal(npz_get(url, "img", (x0, x0 + 8), (y0, y0 + 8), (z0, z0 + 2)), before)
    assert "sneaky" not in remote(url).get_channels(TOKEN)
