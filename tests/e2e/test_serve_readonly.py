"""readonly as ndstore honours it: a readonly channel refuses every write (cutout POST,
setPropagate, the window PATCH, the resource DELETE, deleteChannel) with a 403 naming it,
and takes one write, the channel PATCH that sets `readonly` to 0 (with a key where the
server has keys). Real servers on 127.0.0.1 (test_serve_writes.py's fixtures)."""
from __future__ import annotations

import numpy as np
import requests

from test_serve_writes import KEY, PROJECT, TOKEN, bad, post, resource, server_fixtures, shape_of

CHANNELS = {  # name: (channel_type, datatype, readonly, starttime, endtime)
    "frozen": ("image", "uint8", 1, 0, 0),
    "thawed": ("image", "uint8", 1, 0, 0),
    "keyheld": ("annotation", "uint32", 1, 0, 0),
    "plain": ("image", "uint8", 0, 0, 0),
    "spare": ("image", "uint8", 0, 0, 0),
}
BOX = ((1001, 1011), (2003, 2013), (7, 8))

store, url, keyed_url = server_fixtures("serve-readonly", channels=CHANNELS)


def channel_url(base: str, name: str) -> str:
    return resource(base, "project", PROJECT, "channel", name)


def row(base: str, name: str) -> dict:
    reply = requests.get(channel_url(base, name), timeout=30)
    assert reply.status_code == 200, reply.text
    return reply.json()


def writes(base: str, name: str, headers: dict | None = None) -> dict[str, requests.Response]:
    """Every write route of channel `name`, each tried once."""
    nd = f"{base}/nd/sd/{TOKEN}"
    return {
        "cutout POST": post(base, name, BOX, np.ones(shape_of(BOX), np.uint8), headers=headers),
        "setPropagate/1": requests.get(f"{nd}/{name}/setPropagate/1/", headers=headers, timeout=30),
        "setPropagate/0": requests.get(f"{nd}/{name}/setPropagate/0/", headers=headers, timeout=30),
        "window PATCH": requests.patch(channel_url(base, name), json={"startwindow": 1, "endwindow": 2},
                                       headers=headers, timeout=30),
        "readonly 1 PATCH": requests.patch(channel_url(base, name), json={"readonly": 1}, headers=headers,
                                           timeout=30),
        "DELETE": requests.delete(channel_url(base, name), headers=headers, timeout=30),
        "deleteChannel": requests.post(f"{nd}/deleteChannel/", json={"channels": [name]}, headers=headers,
                                       timeout=30),
    }


def test_every_write_to_a_readonly_channel_is_403_naming_it_and_changes_nothing(url, store):
    before = row(url, "frozen")
    for route, reply in writes(url, "frozen").items():
        assert "'frozen'" in bad(reply, 403) and "readonly" in reply.text, route
    assert row(url, "frozen") == before
    assert (store / "wds" / PROJECT / "frozen" / "info").exists()
    cutout = f"{url}/nd/sd/{TOKEN}/frozen/npz/0/1001,1011/2003,2013/7,8/"
    assert requests.get(cutout, timeout=30).status_code == 200  # reads stay open


def test_an_empty_patch_still_checks_the_key_on_a_readonly_channel(url, keyed_url):
    assert requests.patch(channel_url(url, "frozen"), json={}, timeout=30).status_code == 200
    bad(requests.patch(channel_url(keyed_url, "frozen"), json={}, timeout=30), 401)


def test_patching_readonly_to_0_lifts_it_and_the_channel_can_then_be_written_and_deleted(url, store):
    reply = requests.patch(channel_url(url, "thawed"), json={"readonly": 0}, timeout=30)
    assert reply.status_code == 200 and reply.json()["readonly"] == 0, reply.text
    assert post(url, "thawed", BOX, np.ones(shape_of(BOX), np.uint8)).status_code == 200
    assert requests.delete(channel_url(url, "thawed"), timeout=30).status_code == 204
    bad(requests.get(channel_url(url, "thawed"), timeout=30), 404)
    assert not (store / "wds" / PROJECT / "thawed").exists()


def test_with_keys_lifting_readonly_needs_a_key_then_deletechannel_deletes(keyed_url):
    auth = {"Authorization": f"Token {KEY}"}
    bad(requests.patch(channel_url(keyed_url, "keyheld"), json={"readonly": 0}, timeout=30), 401)
    bad(requests.patch(channel_url(keyed_url, "keyheld"), json={"readonly": 0},
                       headers={"Authorization": "Token wrong"}, timeout=30), 403)
    nd = f"{keyed_url}/nd/sd/{TOKEN}"
    assert "'keyheld'" in bad(requests.post(f"{nd}/deleteChannel/", json={"channels": ["keyheld"]}, headers=auth,
                                            timeout=30), 403)
    reply = requests.patch(channel_url(keyed_url, "keyheld"), json={"readonly": 0, "startwindow": 0, "endwindow": 9},
                           headers=auth, timeout=30)
    assert reply.status_code == 200 and (reply.json()["readonly"], reply.json()["endwindow"]) == (0, 9.0), reply.text
    reply = requests.post(f"{nd}/deleteChannel/", json={"channels": ["keyheld"]}, headers=auth, timeout=30)
    assert reply.status_code == 200 and reply.text == "SUCCESS", reply.text
    assert "keyheld" not in requests.get(f"{nd}/info/", timeout=30).json()["channels"]


def test_patching_readonly_to_1_makes_a_channel_readonly(url):
    reply = requests.patch(channel_url(url, "plain"), json={"readonly": 1, "startwindow": 3, "endwindow": 4},
                           timeout=30)
    assert reply.status_code == 200, reply.text
    assert (reply.json()["readonly"], reply.json()["startwindow"], reply.json()["endwindow"]) == (1, 3.0, 4.0)
    assert "'plain'" in bad(post(url, "plain", BOX, np.ones(shape_of(BOX), np.uint8)), 403)
    info = requests.get(f"{url}/nd/sd/{TOKEN}/info/", timeout=30).json()
    assert info["channels"]["plain"]["readonly"] == 1
    bad(requests.patch(channel_url(url, "plain"), json={"readonly": 2}, timeout=30), 400)


def test_deletechannel_of_a_readonly_one_among_others_deletes_none(url):
    nd = f"{url}/nd/sd/{TOKEN}"
    reply = requests.post(f"{nd}/deleteChannel/", json={"channels": ["spare", "frozen"]}, timeout=30)
    assert "'frozen'" in bad(reply, 403)
    assert {"spare", "frozen"} <= set(requests.get(f"{nd}/info/", timeout=30).json()["channels"])
