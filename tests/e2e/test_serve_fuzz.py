"""Every route of `ndingest serve`, fuzzed: no request is answered 500, and every refusal
is one line. One real server on 127.0.0.1 with a key file, over a small store with a
public and a private project (test_serve_oracle.build_store), and a scratch token and
channel that the drawn deletes may remove.

The routes come from the app's own route modules (`server.ROUTE_MODULES`, as `create_app`
mounts them), so a new route is fuzzed without a change here. Each example draws a route, a method (GET, POST, PUT, PATCH,
DELETE, HEAD), path parameters (the store's names, numbers, huge and negative ones, ranges,
unicode, `..`, empty), a body (JSON of random shape, deep nesting, huge numbers, or raw
bytes), a Content-Type and a key (none, the right one, a wrong one). Requests go out by
http.client, so `..` and odd bytes reach the server as drawn. Derandomized: the same
examples on every run."""
from __future__ import annotations

import http.client
import json
import urllib.parse

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serving import serving
from test_serve_oracle import KEY, PRIVATE, PUBLIC, build_store

MAX_EXAMPLES = 185  # drawn, across all routes; with HAND_PICKED, at most 200 requests
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD")
SCRATCH_TOKEN, SCRATCH_CHANNEL = "scrtk", "scr"
NAMES = (*PUBLIC, *PRIVATE, "img", "anno", SCRATCH_TOKEN, SCRATCH_CHANNEL, "nosuch", "npz", "raw", "hdf5", "blosc",
         "xy", "xz", "yz", "info", "_markers", "catalog.sqlite", "0", "1", "2", "4_4_40", "0-64_0-64_0-8")
WEIRD = ("", "..", ".", "%", "%00", "a/b", "é", "名前", "\x00", " ", "-1", "1e23", "nan", "0,", ",", "1,0", "-5,3",
         "0,16", "0,64", "3", "99999999999999999999999", f"0,{2 ** 70}", f"{-2 ** 63},{2 ** 63}", "0,1,2", "t0")
FIELDS = ("ximagesize", "yimagesize", "zimagesize", "xoffset", "xvoxelres", "scalinglevels", "scalingoption",
          "public", "channel_type", "channel_datatype", "datatype", "readonly", "startwindow", "endwindow",
          "starttime", "endtime", "propagate", "channels", "channel_name", "dataset", "project", "token",
          "metadata", "data_url", "file_format", "file_type", "token_name", "project_name", "dataset_name",
          "imagesize", "voxelres", "offset", "timerange")
CONTENT_TYPES = (None, None, None, "application/json", "application/json", "application/octet-stream",
                 "application/json", "application/json; charset=utf-8", "application/octet-stream",
                 "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "image/png",
                 "application/x-hdf5", "nonsense", "")
AUTHS = (None, f"Token {KEY}", f"Token {KEY}", f"Token {KEY}", f"Token {KEY}", "Token not-the-key", "", "Basic abc",
         "Token ")


def route_templates() -> list[tuple[str, tuple[str, ...]]]:
    """(path template, methods) of every route of the app, one per ndstore path: `/ocp/ca/`
    and the slash-less twins answer as `/nd/sd/` does, and are drawn as its variants."""
    import importlib
    from pathlib import Path

    from ndingest import server
    from ndingest.server.context import ServerContext

    # what create_app mounts, without its malloc settings in this process
    ctx = ServerContext.open(Path("/nonexistent-store-for-route-listing"))
    routes = [route for name in server.ROUTE_MODULES
              for route in importlib.import_module(f"ndingest.server.{name}").routes(ctx)]
    out: dict[str, set[str]] = {}
    for route in routes:
        path = route.path.replace("/ocp/ca/", "/nd/sd/").rstrip("/") or "/"
        out.setdefault(path, set()).update(route.methods or ())
    return sorted((path, tuple(sorted(methods))) for path, methods in out.items())


TEMPLATES = route_templates()


def examples_per_route() -> dict[str, int]:
    """MAX_EXAMPLES shared out by what a route takes: more for one with more path
    parameters and a body, at least 2 each."""
    weight = {t: 1 + t.count("{") + 3 * bool({"POST", "PATCH"} & set(m)) for t, m in TEMPLATES}
    spare = MAX_EXAMPLES - 2 * len(weight)
    total = sum(weight.values())
    return {t: 2 + spare * w // total for t, w in weight.items()}


EXAMPLES = examples_per_route()

numbers = st.one_of(st.integers(-2 ** 70, 2 ** 70), st.integers(-3, 70))
weird = st.one_of(st.sampled_from(NAMES), st.sampled_from(WEIRD), numbers.map(str),
                  st.tuples(numbers, numbers).map(lambda p: f"{p[0]},{p[1]}"), st.text(max_size=6))
in_volume = st.tuples(st.integers(-2, 70), st.integers(-2, 70)).map(lambda p: f"{p[0]},{p[1]}")
GOOD = {  # what each path parameter usually is, so most examples get past the routing into the checks
    "token": st.sampled_from((PUBLIC[2], PRIVATE[2], SCRATCH_TOKEN)),
    "channel": st.sampled_from(("img", "anno", SCRATCH_CHANNEL)),
    "dataset": st.sampled_from((PUBLIC[0], PRIVATE[0])),
    "project": st.sampled_from((PUBLIC[1], PRIVATE[1])),
    "fmt": st.sampled_from(("npz", "raw", "hdf5", "blosc", "xy", "xz", "yz")),
    "res": st.sampled_from(("0", "1", "2")),
    "x": in_volume, "y": in_volume, "z": st.one_of(in_volume, st.integers(-1, 9).map(str)),
    "t": st.one_of(st.sampled_from(("0,1", "0", "1,0")), in_volume),
    "value": st.sampled_from(("0", "1", "2")),
    "path": st.sampled_from(("info", "4_4_40/0-64_0-64_0-8", "8_8_40/0-32_0-32_0-8", "4_4_40", "../../catalog.sqlite",
                             "provenance", "4_4_40/0-64_0-64_0-80")),
}


def path_values(name: str):
    good = GOOD.get(name, weird)
    return st.one_of(good, good, good, weird)


leaves = st.one_of(st.none(), st.booleans(), numbers, st.floats(allow_nan=True, allow_infinity=True),
                   st.text(max_size=8), st.sampled_from(NAMES))
json_values = st.recursive(leaves, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.one_of(st.sampled_from(FIELDS), st.sampled_from(NAMES), st.text(max_size=5)), inner,
                    max_size=5)), max_leaves=24)
DTYPES = ("uint8", "uint16", "uint32", "uint64", "float32", "float64", "int8", "bool", "complex64", "<U2", ">u4")
shapes = st.one_of(st.just((1, 8, 16, 16)), st.lists(st.integers(0, 17), min_size=0, max_size=5).map(tuple))


def cutout_body(draw_args) -> bytes:
    """A cutout body of one of the formats, of any dtype and shape (not always the box's)."""
    import io
    import zlib

    import numpy as np

    fmt, dtype, shape = draw_args
    array = np.ones(shape, dtype=dtype)
    if fmt == "npz":
        buffer = io.BytesIO()
        np.save(buffer, array)
        return zlib.compress(buffer.getvalue())
    if fmt == "blosc":
        import blosc

        return blosc.pack_array(array)
    if fmt == "hdf5":
        import h5py

        buffer = io.BytesIO()
        with h5py.File(buffer, "w") as f:
            if array.dtype.kind != "U":
                f.create_dataset("img/CUTOUT", data=array)
        return buffer.getvalue()
    return array.tobytes()


bodies = st.one_of(
    st.none(),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6).map(lambda v: json.dumps(v).encode()),
    st.tuples(st.sampled_from(("npz", "blosc", "hdf5", "raw")), st.sampled_from(DTYPES), shapes).map(cutout_body),
    st.sampled_from([b"[" * 100_000, b'{"a":' * 50_000, b"{" + b'"x":' * 3, b"\xff\xfe\x00", b"1" * 400,
                     json.dumps({"ximagesize": 10 ** 23}).encode(), b"1e99999", b'{"channels": {"c": 1e400}}']),
    st.binary(max_size=64))


def quoted(value: str) -> str:
    return urllib.parse.quote(value, safe=",.-_~")


def request_path(template: str, params: dict[str, str], *, ocp: bool, slash: bool) -> str:
    path = template
    for name, value in params.items():
        path = path.replace(f"{{{name}:path}}", "/".join(quoted(p) for p in value.split("/")))
        path = path.replace(f"{{{name}}}", quoted(value))
    if ocp:
        path = path.replace("/nd/sd/", "/ocp/ca/", 1)
    return path + "/" if slash and not path.endswith("/") else path


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve-fuzz")
    (folder / "store").mkdir()
    keys = folder / "keys.txt"
    keys.write_text(f"{KEY}\n")
    auth = {"Authorization": f"Token {KEY}"}
    with serving(folder / "store", api_keys=keys) as running:
        build_store(running.url, auth)
        import requests

        ds, pr, _ = PUBLIC
        base = f"{running.url}/nd/resource/dataset/{ds}/project/{pr}/"
        for url, body in [(f"{base}token/{SCRATCH_TOKEN}/", {"public": 1}),
                          (f"{base}channel/{SCRATCH_CHANNEL}/", {"channel_type": "image", "channel_datatype": "uint8"})]:
            assert requests.post(url, json=body, headers=auth, timeout=30).status_code == 201
        yield running


def ask(port: int, method: str, path: str, body: bytes | None, headers: dict) -> tuple[int, bytes, str]:
    """(status, body, Content-Type) of one request. A server that answers without reading a
    large body (a GET's, or a 405, 401, 413) closes with the rest unread, which resets the
    connection under the client's read: then the answer is the one it gives without a body."""
    try:
        return _ask(port, method, path, body, headers)
    except ConnectionResetError:
        return _ask(port, method, path, None, headers)


def _ask(port: int, method: str, path: str, body: bytes | None, headers: dict) -> tuple[int, bytes, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for name, value in {**headers, "Content-Length": str(len(body or b""))}.items():
            conn.putheader(name, value)
        conn.endheaders(body or None)
        reply = conn.getresponse()
        return reply.status, reply.read(), reply.getheader("content-type") or ""
    finally:
        conn.close()


DEEP = b"[" * 100_000
HUGE = "99999999999999999999999"
DATASET_BODY = {"ximagesize": 10 ** 23, "yimagesize": 4, "zimagesize": 4, "xvoxelres": 1, "yvoxelres": 1,
                "zvoxelres": 1}
# what the draws must cover: requests that were 500s (deep JSON, 1e23 sizes, huge coordinates)
HAND_PICKED = [
    ("POST", "/nd/resource/dataset/fz/", DEEP),
    ("POST", "/nd/resource/dataset/fz/", json.dumps(DATASET_BODY).encode()),
    ("POST", f"/nd/resource/dataset/{PUBLIC[0]}/project/{PUBLIC[1]}/channel/fz/", b'{"a":' * 50_000),
    ("PATCH", f"/nd/resource/dataset/{PUBLIC[0]}/project/{PUBLIC[1]}/channel/img/", DEEP),
    ("POST", f"/nd/sd/{PUBLIC[2]}/createChannel/", DEEP),
    ("POST", "/nd/sd/autoIngest/", DEEP),
    ("GET", f"/nd/sd/{PUBLIC[2]}/img/raw/0/0,{HUGE}/0,1/0,1/", None),
    ("GET", f"/nd/sd/{PUBLIC[2]}/img/xy/0/0,16/0,16/{HUGE}/", None),
    ("GET", f"/nd/sd/{PUBLIC[2]}/img/npz/0/0,1/0,1/0,1/0,{HUGE}/", None),
    ("POST", f"/nd/sd/{PUBLIC[2]}/img/raw/0/-{HUGE},1/0,1/0,1/", b"\x00"),
    ("GET", f"/precomputed/{PUBLIC[0]}/{PUBLIC[1]}/img/info", None),
]


@pytest.mark.parametrize("method, path, body", HAND_PICKED, ids=[f"{m} {p[:60]}" for m, p, _ in HAND_PICKED])
def test_hand_picked_bad_input_is_4xx_in_one_line(server, method, path, body):
    start = len(server.log())
    status, content, kind = ask(server.port, method, path, body, {
        "Host": f"127.0.0.1:{server.port}", "Content-Type": "application/json", "Authorization": f"Token {KEY}"})
    assert status < 500, (status, content[:300], server.log()[-2000:])
    assert content.count(b"\n") <= 1 or status < 400, content[:300]
    assert "Traceback" not in server.log()[start:], server.log()[start:][-3000:]


@pytest.mark.parametrize("template", [t for t, _ in TEMPLATES])
def test_no_route_answers_500_and_every_refusal_is_one_line(server, template):
    failures: list[str] = []
    start = len(server.log())

    @settings(derandomize=True, max_examples=EXAMPLES[template], deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def fuzz(data):
        own = dict(TEMPLATES)[template]
        method = data.draw(st.one_of(st.sampled_from(own), st.sampled_from(own), st.sampled_from(METHODS)),
                           label="method")
        names = [part.split(":")[0] for part in template.replace("}", "{").split("{")[1::2]]
        destructive = method == "DELETE" or "deleteChannel" in template
        params = {}
        for name in names:
            if destructive and name in ("token", "channel"):  # deletes remove only the scratch ones
                params[name] = data.draw(st.sampled_from((SCRATCH_TOKEN, SCRATCH_CHANNEL, "nosuch", "..", "")))
            else:
                params[name] = data.draw(path_values(name), label=name)
        body = data.draw(bodies, label="body")
        headers = {"Host": f"127.0.0.1:{server.port}"}
        content_type = data.draw(st.sampled_from(CONTENT_TYPES), label="content-type")
        if content_type is not None:
            headers["Content-Type"] = content_type
        auth = data.draw(st.sampled_from(AUTHS), label="auth")
        if auth is not None:
            headers["Authorization"] = auth
        path = request_path(template, params, ocp=data.draw(st.booleans(), label="ocp"),
                            slash=data.draw(st.booleans(), label="slash"))
        try:
            status, content, kind = ask(server.port, method, path, body, headers)
        except OSError as exc:
            failures.append(f"{method} {path} ({content_type}, {auth}, body {body[:80] if body else body!r}): {exc}")
            return
        if status >= 500 or (status >= 400 and kind.startswith("text/plain") and content.count(b"\n") > 1):
            failures.append(f"{method} {path} ({content_type}, {auth}, body {body[:80] if body else body!r}): "
                            f"{status} {content[:200]!r}")

    fuzz()
    assert not failures, "\n".join(failures) + "\n" + server.log()[start:][-3000:]
    assert "Traceback" not in server.log()[start:], server.log()[start:][-3000:]

