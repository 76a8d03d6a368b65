"""No existence oracle: with `serve --api-keys`, a request without a valid key answers a
private name and a missing one alike (401 with no key, 403 with a wrong one), on every
route family, against a real server on 127.0.0.1. With the key, a missing name is 404.

The store is made through the resource API (small: 64 x 64 x 8 voxels), with one public
and one private project; `build_store` is shared with the fuzz (test_serve_fuzz.py)."""
from __future__ import annotations

import io
import zlib
from pathlib import Path

import numpy as np
import pytest
import requests

from serving import serving

KEY = "oracle-key-for-tests"
AUTH = {"Authorization": f"Token {KEY}"}
SIZE = (64, 64, 8)  # x, y, z
PUBLIC = ("ods", "pub", "pubtk")     # dataset, project, token: all public
PRIVATE = ("pds", "priv", "privtk")  # all private
CHANNELS = {"img": ("image", "uint8"), "anno": ("annotation", "uint32")}


def resource(base: str, dataset: str, *parts: str) -> str:
    return f"{base}/nd/resource/dataset/{dataset}/" + "".join(f"{p}/" for p in parts)


def build_store(base: str, headers: dict | None = None) -> None:
    """A public and a private dataset, each with a project, a token and CHANNELS, and one
    cutout POSTed to each `img` (so each has a chunk file and an edit record)."""
    for (dataset, project, token), public in ((PUBLIC, 1), (PRIVATE, 0)):
        ds = {**{f"{a}imagesize": s for a, s in zip("xyz", SIZE)}, "xvoxelres": 4.0, "yvoxelres": 4.0,
              "zvoxelres": 40.0, "scalinglevels": 1, "public": public}
        for url, body in [(resource(base, dataset), ds), (resource(base, dataset, "project", project), {"public": public}),
                          (resource(base, dataset, "project", project, "token", token), {"public": public}),
                          *((resource(base, dataset, "project", project, "channel", name),
                             {"channel_type": kind, "channel_datatype": dtype}) for name, (kind, dtype) in CHANNELS.items())]:
            reply = requests.post(url, json=body, headers=headers, timeout=30)
            assert reply.status_code == 201, reply.text
        buffer = io.BytesIO()
        np.save(buffer, np.full((1, 8, 16, 16), 7, np.uint8))
        reply = requests.post(f"{base}/nd/sd/{token}/img/npz/0/0,16/0,16/0,8/", data=zlib.compress(buffer.getvalue()),
                              headers=headers, timeout=30)
        assert reply.status_code == 200, reply.text


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve-oracle")
    (folder / "store").mkdir()
    keys = folder / "keys.txt"
    keys.write_text(f"{KEY} oracle-tester\n")
    with serving(folder / "store", api_keys=keys) as server:
        build_store(server.url, AUTH)
        yield server, folder / "store"


def chunk_name(store: Path) -> str:
    """A chunk file of the private `img` at level 0, as `scale/chunk`."""
    folder = store.joinpath(*PRIVATE[:2], "img")
    scale = next(p for p in sorted(folder.iterdir()) if p.is_dir())
    return f"{scale.name}/{next(p.name for p in sorted(scale.iterdir()) if p.is_file())}"


def pairs(store: Path) -> list[tuple[str, str, str, bytes | None]]:
    """(method, a path naming what exists but is private, the same naming what does not, body)."""
    ds, pr, tk = PRIVATE
    chunk = chunk_name(store)
    cut = "img/raw/0/0,16/0,16/0,8/"
    body = zlib.compress(b"")
    out = []
    for prefix in ("/nd/sd/", "/ocp/ca/"):
        out += [
            ("GET", f"{prefix}{tk}/info/", f"{prefix}nosuchtk/info/", None),
            ("GET", f"{prefix}{tk}/{cut}", f"{prefix}nosuchtk/{cut}", None),
            ("GET", f"{prefix}{tk}/{cut}", f"{prefix}{tk}/{cut.replace('img', 'nosuchch')}", None),
            ("GET", f"{prefix}{tk}/img/xy/0/0,16/0,16/3/", f"{prefix}nosuchtk/img/xy/0/0,16/0,16/3/", None),
            ("GET", f"{prefix}{tk}/img/xz/1/0,8/2/0,8/", f"{prefix}{tk}/nosuchch/xz/1/0,8/2/0,8/", None),
            ("GET", f"{prefix}{tk}/img/edits/", f"{prefix}nosuchtk/img/edits/", None),
            ("GET", f"{prefix}{tk}/img/edits/", f"{prefix}{tk}/nosuchch/edits/", None),
            ("GET", f"{prefix}{tk}/img/getPropagate/", f"{prefix}nosuchtk/img/getPropagate/", None),
            ("GET", f"{prefix}{tk}/img/setPropagate/0/", f"{prefix}nosuchtk/img/setPropagate/0/", None),
            ("POST", f"{prefix}{tk}/{cut}".replace("/raw/", "/npz/"), f"{prefix}nosuchtk/{cut}".replace("/raw/", "/npz/"),
             body),
            ("POST", f"{prefix}{tk}/createChannel/", f"{prefix}nosuchtk/createChannel/", b'{"channels": {}}'),
            ("POST", f"{prefix}{tk}/deleteChannel/", f"{prefix}nosuchtk/deleteChannel/", b'{"channels": ["img"]}'),
        ]
    out += [
        ("GET", f"/precomputed/{ds}/{pr}/img/info", f"/precomputed/{ds}/nosuchpr/img/info", None),
        ("GET", f"/precomputed/{ds}/{pr}/img/{chunk}", f"/precomputed/{ds}/{pr}/img/{chunk}0", None),
        ("HEAD", f"/precomputed/{ds}/{pr}/img/{chunk}", f"/precomputed/{ds}/{pr}/nosuchch/{chunk}", None),
        ("GET", f"/precomputed/{ds}/{pr}/img/info", f"/precomputed/nosuchds/{pr}/img/info", None),
    ]
    res = "/nd/resource/dataset/"
    for method in ("GET", "HEAD", "DELETE", "PATCH", "POST"):
        data = b"{}" if method in ("PATCH", "POST") else None
        out += [
            (method, f"{res}{ds}/", f"{res}nosuchds/", data),
            (method, f"{res}{ds}/project/{pr}/", f"{res}{ds}/project/nosuchpr/", data),
            (method, f"{res}{ds}/project/{pr}/token/{tk}/", f"{res}{ds}/project/{pr}/token/nosuchtk/", data),
            (method, f"{res}{ds}/project/{pr}/channel/img/", f"{res}{ds}/project/{pr}/channel/nosuchch/", data),
            (method, f"{res}{ds}/project/{pr}/channel/img/", f"{res}nosuchds/project/{pr}/channel/img/", data),
        ]
    return [p for p in out if not (p[0] in ("PATCH",) and "/channel/" not in p[1])]  # only a channel has PATCH


def test_without_a_valid_key_a_private_name_and_a_missing_one_answer_alike(keyed):
    server, store = keyed
    unlike = []
    for method, private, missing, body in pairs(store):
        for headers in ({}, {"Authorization": "Token not-the-key"}):
            status = 401 if not headers else 403
            answers = [requests.request(method, server.url + path, data=body, headers=headers, timeout=30)
                       for path in (private, missing)]
            seen = [(a.status_code, a.content, a.headers.get("www-authenticate")) for a in answers]
            if seen[0] != seen[1] or seen[0][0] != status:
                unlike.append((method, private, missing, headers, seen))
    assert not unlike, "\n".join(map(str, unlike))


def test_the_cors_of_a_private_file_and_a_missing_one_is_alike(keyed):
    server, store = keyed
    ds, pr, _ = PRIVATE
    origin = {"Origin": "https://elsewhere.example"}
    answers = [requests.get(f"{server.url}/precomputed/{ds}/{name}/img/info", headers=origin, timeout=30)
               for name in (pr, "nosuchpr")]
    assert [a.status_code for a in answers] == [401, 401]
    assert [a.headers.get("access-control-allow-origin") for a in answers] == [None, None]


def test_with_the_key_a_missing_name_is_404_and_a_private_one_answers(keyed):
    server, store = keyed
    ds, pr, tk = PRIVATE
    for path in (f"/nd/sd/{tk}/info/", f"/precomputed/{ds}/{pr}/img/info", f"/precomputed/{ds}/{pr}/img/{chunk_name(store)}",
                 f"/nd/resource/dataset/{ds}/project/{pr}/channel/img/", f"/nd/sd/{tk}/img/getPropagate/"):
        assert requests.get(server.url + path, headers=AUTH, timeout=30).status_code == 200, path
    for path in ("/nd/sd/nosuchtk/info/", f"/precomputed/{ds}/{pr}/img/{chunk_name(store)}0",
                 f"/nd/resource/dataset/{ds}/project/nosuchpr/", f"/nd/sd/{tk}/nosuchch/getPropagate/"):
        reply = requests.get(server.url + path, headers=AUTH, timeout=30)
        assert reply.status_code == 404 and reply.text.count("\n") == 1, (path, reply.text)


def test_public_names_still_answer_without_a_key_and_their_missing_parts_are_404(keyed):
    server, store = keyed
    ds, pr, tk = PUBLIC
    assert requests.get(f"{server.url}/nd/sd/{tk}/info/", timeout=30).status_code == 200
    assert requests.get(f"{server.url}/nd/resource/dataset/{ds}/project/{pr}/channel/img/", timeout=30).status_code == 200
    assert requests.get(f"{server.url}/nd/sd/{tk}/nosuchch/getPropagate/", timeout=30).status_code == 404
    assert requests.get(f"{server.url}/nd/resource/dataset/{ds}/project/{pr}/channel/nosuchch/",
                        timeout=30).status_code == 404
    missing = requests.get(f"{server.url}/precomputed/{ds}/{pr}/img/0-1_0-1_0-1", timeout=30)
    assert missing.status_code == 404 and missing.headers["access-control-allow-origin"] == "*"
