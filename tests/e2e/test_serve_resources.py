"""`ndingest serve`'s resource API and ndio's createChannel/deleteChannel, against real
server processes on 127.0.0.1: one status code and rule per test."""
from __future__ import annotations

import json

import pytest
import requests

from ndingest.markers import channel_dir
from serving import ingest_store, serving
from test_serve_writes import DATASET, PROJECT, TOKEN, resource, server_fixtures

KEY = "resource-key-for-tests"
CHANNELS = {"img": ("image", "uint8", 0, 0, 0), "anno": ("annotation", "uint64", 0, 0, 0)}


store, url, keyed_url = server_fixtures("serve-resources", channels=CHANNELS, key=KEY)


def answer(reply: requests.Response, status: int) -> str:
    assert reply.status_code == status, (reply.status_code, reply.text)
    if status >= 400:
        assert reply.text.count("\n") <= 1 and "Traceback" not in reply.text
    return reply.text


def channel_body(kind="image", dtype="uint8", **more) -> dict:
    return {"channel_type": kind, "channel_datatype": dtype, **more}


def test_get_answers_each_resource_with_ndstore_field_names(url):
    ds = requests.get(resource(url), timeout=30).json()
    assert ds["dataset_name"] == DATASET and ds["ximagesize"] == 300 and ds["scalingoption"] == 0
    pr = requests.get(resource(url, "project", PROJECT), timeout=30).json()
    assert pr["project_name"] == PROJECT and pr["dataset"] == DATASET
    tk = requests.get(resource(url, "project", PROJECT, "token", TOKEN), timeout=30).json()
    assert tk == {"token_name": TOKEN, "project": PROJECT, "public": 1}
    ch = requests.get(resource(url, "project", PROJECT, "channel", "anno"), timeout=30).json()
    assert ch["channel_type"] == "annotation" and ch["channel_datatype"] == "uint64" and "id" not in ch


def test_posting_the_same_values_again_is_201(url):
    body = requests.get(resource(url), timeout=30).json()
    assert answer(requests.post(resource(url), json=body, timeout=30), 201)
    ch = requests.get(resource(url, "project", PROJECT, "channel", "img"), timeout=30).json()
    answer(requests.post(resource(url, "project", PROJECT, "channel", "img"), json=ch, timeout=30), 201)


@pytest.mark.parametrize("path, body, field", [
    ((), {"ximagesize": 301, "yimagesize": 200, "zimagesize": 40, "xvoxelres": 4, "yvoxelres": 4, "zvoxelres": 40},
     "ximagesize"),
    (("project", PROJECT), {"public": 0}, "public"),
    (("project", PROJECT, "channel", "img"), channel_body(dtype="uint16"), "channel_datatype"),
])
def test_posting_other_values_is_409_naming_the_field(url, path, body, field):
    assert field in answer(requests.post(resource(url, *path), json=body, timeout=30), 409)


@pytest.mark.parametrize("path, body, words", [
    (("project", PROJECT, "channel", "bad-name"), channel_body(), "not a valid name"),
    (("project", PROJECT, "channel", "info"), channel_body(), "reserved"),
    (("project", PROJECT, "channel", "c1"), {**channel_body(), "colour": "red"}, "unknown field"),
    (("project", PROJECT, "channel", "c2"), {"channel_datatype": "uint8"}, "channel_type is required"),
    (("project", PROJECT, "channel", "c3"), channel_body(kind="annotation", dtype="float32"), "unsigned"),
    (("project", PROJECT, "channel", "c4"), channel_body(dtype="int8"), "channel_datatype"),
])
def test_bad_resource_bodies_are_400(url, path, body, words):
    assert words in answer(requests.post(resource(url, *path), json=body, timeout=30), 400)


def test_a_body_that_is_not_json_is_400(url):
    reply = requests.post(resource(url, "project", PROJECT, "channel", "c5"), data=b"{nope", timeout=30)
    assert "JSON" in answer(reply, 400)


def test_an_unknown_resource_is_404(url):
    answer(requests.get(resource(url, "project", "nope"), timeout=30), 404)
    answer(requests.get(resource(url, "project", PROJECT, "channel", "nope"), timeout=30), 404)
    answer(requests.delete(resource(url, "project", PROJECT, "token", "nope"), timeout=30), 404)


def test_a_new_channel_gets_a_volume_and_delete_removes_it_with_its_markers(url, store):
    path = resource(url, "project", PROJECT, "channel", "scratch")
    answer(requests.post(path, json=channel_body(dtype="uint16"), timeout=30), 201)
    info = json.loads((store / DATASET / PROJECT / "scratch" / "info").read_text())
    image = json.loads((store / DATASET / PROJECT / "img" / "info").read_text())
    assert info["data_type"] == "uint16" and info["scales"] == image["scales"]
    reply = requests.post(f"{url}/nd/sd/{TOKEN}/scratch/raw/0/1001,1003/2003,2005/7,8/", data=b"\1\0" * 4, timeout=30)
    assert reply.status_code == 200, reply.text
    assert channel_dir(store, DATASET, PROJECT, "scratch").exists()
    assert answer(requests.delete(path, timeout=30), 204) == ""
    assert not (store / DATASET / PROJECT / "scratch").exists()
    assert not channel_dir(store, DATASET, PROJECT, "scratch").exists()
    answer(requests.get(path, timeout=30), 404)


def test_head_of_a_resource_is_a_get_and_deletes_nothing(url, store):
    """HEAD (which a browser sends cross-site unasked) fell through to DELETE and removed
    the channel with its volume."""
    path = resource(url, "project", PROJECT, "channel", "headed")
    answer(requests.post(path, json=channel_body(), timeout=30), 201)
    for what in (path, resource(url, "project", PROJECT, "token", TOKEN), resource(url, "project", PROJECT),
                 resource(url)):
        head = requests.head(what, timeout=30)
        assert head.status_code == 200 and head.content == b"", (what, head.status_code)
        answer(requests.get(what, timeout=30), 200)
    assert (store / DATASET / PROJECT / "headed" / "info").exists()
    answer(requests.delete(path, timeout=30), 204)


def test_deleting_a_project_or_dataset_still_in_use_is_409_naming_what_remains(url):
    assert "channel img" in answer(requests.delete(resource(url, "project", PROJECT), timeout=30), 409)
    assert f"project {PROJECT}" in answer(requests.delete(resource(url), timeout=30), 409)


def test_a_token_is_made_and_deleted(url):
    path = resource(url, "project", PROJECT, "token", "second")
    answer(requests.post(path, json={}, timeout=30), 201)
    assert requests.get(path, timeout=30).json()["public"] == 0
    answer(requests.delete(path, timeout=30), 204)
    answer(requests.get(path, timeout=30), 404)


def test_createchannel_answers_200_and_the_channel_can_be_written(url):
    body = {"channels": {"viandio": {"channel_name": "viandio", "channel_type": "annotation", "datatype": "uint32",
                                     "readonly": 0}}}
    reply = requests.post(f"{url}/nd/sd/{TOKEN}/createChannel/", json=body, timeout=30)
    assert answer(reply, 200) == "SUCCESS"
    info = requests.get(f"{url}/nd/sd/{TOKEN}/info/", timeout=30).json()
    assert info["channels"]["viandio"]["datatype"] == "uint32"
    body["channels"]["viandio"]["datatype"] = "uint8"
    reply = requests.post(f"{url}/ocp/ca/{TOKEN}/createChannel", json=body, timeout=30)
    assert "channel_datatype" in answer(reply, 409)


def test_deletechannel_refuses_an_unknown_name_before_deleting_anything(url):
    body = {"channels": {"gone": {"channel_name": "gone", "channel_type": "image", "datatype": "uint8", "readonly": 1}}}
    answer(requests.post(f"{url}/nd/sd/{TOKEN}/createChannel/", json=body, timeout=30), 200)
    reply = requests.post(f"{url}/nd/sd/{TOKEN}/deleteChannel/", json={"channels": ["gone", "nope"]}, timeout=30)
    assert "nope" in answer(reply, 404)
    assert "gone" in requests.get(f"{url}/nd/sd/{TOKEN}/info/", timeout=30).json()["channels"]
    reply = requests.post(f"{url}/nd/sd/{TOKEN}/deleteChannel/", json={"channels": ["gone"]}, timeout=30)
    assert "'gone'" in answer(reply, 403)  # readonly: ndstore's deleteChannel deletes only writable channels
    assert "gone" in requests.get(f"{url}/nd/sd/{TOKEN}/info/", timeout=30).json()["channels"]
    answer(requests.patch(resource(url, "project", PROJECT, "channel", "gone"), json={"readonly": 0}, timeout=30), 200)
    reply = requests.post(f"{url}/nd/sd/{TOKEN}/deleteChannel/", json={"channels": ["gone"]}, timeout=30)
    assert answer(reply, 200) == "SUCCESS"
    assert "gone" not in requests.get(f"{url}/nd/sd/{TOKEN}/info/", timeout=30).json()["channels"]


def test_with_keys_resource_writes_need_a_key_and_private_reads_too(keyed_url):
    path = resource(keyed_url, "project", PROJECT, "channel", "keyed")
    answer(requests.post(path, json=channel_body(), timeout=30), 401)
    answer(requests.post(path, json=channel_body(), headers={"Authorization": "Token wrong"}, timeout=30), 403)
    answer(requests.delete(resource(keyed_url, "project", PROJECT, "channel", "img"), timeout=30), 401)
    answer(requests.post(path, json=channel_body(), headers={"Authorization": f"Token {KEY}"}, timeout=30), 201)
    answer(requests.get(path, timeout=30), 200)  # its project is public
    private = resource(keyed_url, "project", PROJECT, "token", "hidden")
    answer(requests.post(private, json={"public": 0}, headers={"Authorization": f"Token {KEY}"}, timeout=30), 201)
    answer(requests.get(private, timeout=30), 401)
    answer(requests.get(private, headers={"Authorization": f"Token {KEY}"}, timeout=30), 200)


@pytest.fixture(scope="module")
def ingested(tmp_path_factory, tutorial_data):
    return ingest_store(tmp_path_factory.mktemp("serve-resources-ingested"), tutorial_data, levels=1)


def test_a_channel_made_through_the_api_matches_what_ingest_writes(ingested):
    store = ingested["store"]
    with serving(store) as server:
        base = f"{server.url}/nd/resource/dataset/neurostorm_kat11_scale3/project/kat11_scale3/channel/"
        row = requests.get(base + "image/", timeout=30).json()
        answer(requests.post(base + "image/", json=row, timeout=30), 201)  # the same values and info: no-op
        answer(requests.post(base + "extra/", json=channel_body(), timeout=30), 201)
    made = json.loads((store / "neurostorm_kat11_scale3" / "kat11_scale3" / "extra" / "info").read_text())
    ingest = json.loads((store / "neurostorm_kat11_scale3" / "kat11_scale3" / "image" / "info").read_text())
    assert made == ingest
