"""Bad input is a 4xx with one line, never a 500: JSON bodies nested without bound, and
whole numbers past what the catalog keeps (sizes, offsets, times below 2^40). Real
servers on 127.0.0.1 (test_serve_writes.py's fixtures)."""
from __future__ import annotations

import json

import pytest
import requests

from test_serve_writes import DATASET, PROJECT, TOKEN, bad, resource, server_fixtures

CHANNELS = {"img": ("image", "uint8", 0, 0, 0)}

store, url, keyed_url = server_fixtures("serve-bad-input", channels=CHANNELS)

DEEP = b'{"channels": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"


def json_routes(base: str) -> list[tuple[str, str]]:
    return [("POST", resource(base).replace(f"/{DATASET}/", "/deep/")),
            ("POST", resource(base, "project", "deep")),
            ("POST", resource(base, "project", PROJECT, "channel", "deep")),
            ("PATCH", resource(base, "project", PROJECT, "channel", "img")),
            ("POST", f"{base}/nd/sd/{TOKEN}/createChannel/"),
            ("POST", f"{base}/nd/sd/{TOKEN}/deleteChannel/")]


def test_a_json_body_nested_100k_deep_is_400_on_every_json_route(url):
    for method, address in json_routes(url):
        reply = requests.request(method, address, data=DEEP, headers={"Content-Type": "application/json"}, timeout=30)
        assert "nested" in bad(reply, 400), (method, address)
    shallow = b'{"channels": ' + b"[" * 20 + b"]" * 20 + b"}"  # still parsed, then refused for its shape
    reply = requests.post(f"{url}/nd/sd/{TOKEN}/deleteChannel/", data=shallow, timeout=30)
    assert "deleteChannel" in bad(reply, 400)
    assert "img" in requests.get(f"{url}/nd/sd/{TOKEN}/info/", timeout=30).json()["channels"]


DATASET_BODY = {"ximagesize": 64, "yimagesize": 64, "zimagesize": 8, "xvoxelres": 1.0, "yvoxelres": 1.0,
                "zvoxelres": 1.0}


@pytest.mark.parametrize("field, value", [("ximagesize", 10 ** 23), ("yimagesize", 1 << 40), ("zoffset", 1 << 63),
                                          ("xoffset", -(1 << 70)), ("scalinglevels", 10 ** 30)])
def test_a_dataset_number_past_2_40_is_400_naming_it(url, field, value):
    reply = requests.post(resource(url).replace(f"/{DATASET}/", "/huge/"), timeout=30,
                          data=json.dumps({**DATASET_BODY, field: value}), headers={"Content-Type": "application/json"})
    assert field in bad(reply, 400)
    bad(requests.get(resource(url).replace(f"/{DATASET}/", "/huge/"), timeout=30), 404)


@pytest.mark.parametrize("field", ["starttime", "endtime", "resolution", "propagate"])
def test_a_channel_number_past_2_40_is_400_naming_it(url, field):
    body = {"channel_type": "timeseries", "channel_datatype": "uint8", field: 10 ** 23}
    assert field in bad(requests.post(resource(url, "project", PROJECT, "channel", "huge"), json=body, timeout=30), 400)
    body = {"channels": {"huge": {"channel_name": "huge", "channel_type": "image", "datatype": "uint8",
                                  "readonly": 10 ** 23}}}
    assert "readonly" in bad(requests.post(f"{url}/nd/sd/{TOKEN}/createChannel/", json=body, timeout=30), 400)
    assert "readonly" in bad(requests.patch(resource(url, "project", PROJECT, "channel", "img"), timeout=30,
                                            json={"readonly": 10 ** 23}), 400)


def test_a_name_outside_name_re_is_400(url):
    reply = requests.post(resource(url, "project", "bad-name!"), json={}, timeout=30)
    assert "not a valid name" in bad(reply, 400)
