"""`ndingest serve`'s cutout POSTs: write rules, refusals, keys, limits and concurrency,
against real server processes on 127.0.0.1 (propagation: test_serve_propagate.py).

One store per module, made through the resource API (odd offsets, two levels above 0):
a server without keys, one with a key file, and `uvicorn --workers 2` with a 1 MiB body
limit, all three on the same store at once (so concurrency is across processes too).
"""
from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import blosc
import h5py
import numpy as np
import pytest
import requests

from ndingest.markers import channel_dir
from ndingest.edits import read_edits
from ndingest.server.keys import key_id
from serving import HOST, Server, free_port, serving

KEY = "writer-key-for-tests"
KEY_NAME = "test-writer"  # its name in the keys file, which edit records show
DATASET, PROJECT, TOKEN = "wds", "wpr", "wtok"
OFFSET = (1001, 2003, 7)            # x, y, z: odd, so levels round their edges
SIZE = (300, 200, 40)
LEVELS = 2
CHANNELS = {  # name: (channel_type, datatype, readonly, starttime, endtime)
    "img": ("image", "uint8", 0, 0, 0),
    "anno": ("annotation", "uint32", 0, 0, 0),
    "race": ("annotation", "uint32", 0, 0, 0),
    "slabs": ("image", "uint16", 0, 0, 0),
    "frozen": ("image", "uint8", 1, 0, 0),
    "ts": ("timeseries", "uint16", 0, 0, 2),
    "stamp": ("image", "uint8", 0, 0, 0),
}


def resource(base: str, *parts: str) -> str:
    return f"{base}/nd/resource/dataset/{DATASET}/" + "".join(f"{p}/" for p in parts)


def make_store(base: str, *, channels: dict = CHANNELS, headers: dict | None = None) -> None:
    """Dataset, project, public token and channels, created through the resource API."""
    dataset = {**{f"{a}imagesize": s for a, s in zip("xyz", SIZE)}, **{f"{a}offset": o for a, o in zip("xyz", OFFSET)},
               "xvoxelres": 4.0, "yvoxelres": 4.0, "zvoxelres": 40.0, "scalingoption": 0, "scalinglevels": LEVELS,
               "public": 1}
    for url, body in [(resource(base), dataset), (resource(base, "project", PROJECT), {"public": 1}),
                      (resource(base, "project", PROJECT, "token", TOKEN), {"public": 1})]:
        reply = requests.post(url, json=body, headers=headers, timeout=30)
        assert reply.status_code == 201, reply.text
    for name, (kind, dtype, readonly, t0, t1) in channels.items():
        reply = requests.post(resource(base, "project", PROJECT, "channel", name), headers=headers, timeout=30,
                              json={"channel_type": kind, "channel_datatype": dtype, "readonly": readonly,
                                    "starttime": t0, "endtime": t1})
        assert reply.status_code == 201, reply.text


def box_url(base: str, channel: str, fmt: str, box, *, res: int = 0, t: tuple[int, int] | None = None) -> str:
    (x0, x1), (y0, y1), (z0, z1) = box
    tail = f"{t[0]},{t[1]}/" if t else ""
    return f"{base}/nd/sd/{TOKEN}/{channel}/{fmt}/{res}/{x0},{x1}/{y0},{y1}/{z0},{z1}/{tail}"


def npz(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array[np.newaxis])
    return zlib.compress(buf.getvalue())


def post(base: str, channel: str, box, array: np.ndarray, *, fmt: str = "npz", query: str = "",
         headers: dict | None = None, t=None) -> requests.Response:
    body = {"npz": npz, "blosc": lambda a: blosc.pack_array(a[np.newaxis]), "raw": lambda a: a.tobytes()}[fmt](array)
    return requests.post(box_url(base, channel, fmt, box, t=t) + query, data=body, headers=headers, timeout=60)


def get(base: str, channel: str, box, *, res: int = 0, t=None) -> np.ndarray:
    reply = requests.get(box_url(base, channel, "npz", box, res=res, t=t), timeout=60)
    assert reply.status_code == 200, reply.text
    return np.load(io.BytesIO(zlib.decompress(reply.content)))[0]


def full_box(level: int = 0):
    lo = [o // (2 ** level if a != "z" else 1) for o, a in zip(OFFSET, "xyz")]
    hi = [-(-(o + s) // (2 ** level if a != "z" else 1)) for o, s, a in zip(OFFSET, SIZE, "xyz")]
    return tuple(zip(lo, hi))


def start_workers(store: Path, folder: Path, *, max_body: int) -> Server:
    """`uvicorn --workers 2` on the app factory (serve has no --workers option), 127.0.0.1."""
    (folder / "launch_ndingest.py").write_text(
        "import os\nfrom pathlib import Path\nfrom ndingest.server import create_app\n\n\n"
        "def app():\n    return create_app(Path(os.environ['NDINGEST_TEST_STORE']), "
        "max_body=int(os.environ['NDINGEST_TEST_MAX_BODY']))\n")
    port = free_port()
    log_path = folder / f"uvicorn-{port}.log"
    env = {**os.environ, "NDINGEST_TEST_STORE": str(store), "NDINGEST_TEST_MAX_BODY": str(max_body)}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "launch_ndingest:app", "--factory", "--workers", "2",
                                 "--host", HOST, "--port", str(port), "--app-dir", str(folder),
                                 "--log-level", "warning"],
                                stdout=log, stderr=subprocess.STDOUT, env=env)
    server = Server(f"http://{HOST}:{port}", port, proc, log_path)
    deadline = time.monotonic() + 30
    while True:
        try:
            if requests.get(f"{server.url}/nd/sd/public_tokens/", timeout=2).status_code == 200:
                return server
        except requests.ConnectionError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"uvicorn --workers 2 did not start: {server.log()}")
        time.sleep(0.1)


def server_fixtures(name: str, *, channels: dict = CHANNELS, key: str = KEY, key_name: str = KEY_NAME):
    """A module's fixtures: `store` (empty at first), `url` of a server on it, made through
    the resource API with `channels`, and `keyed_url` of a second server on the same store
    with `key` in its keys file, named `key_name`. Assign them to those names in the module."""
    @pytest.fixture(scope="module")
    def store(tmp_path_factory) -> Path:
        path = tmp_path_factory.mktemp(name) / "store"
        path.mkdir()
        return path

    @pytest.fixture(scope="module")
    def url(store):
        with serving(store) as server:
            make_store(server.url, channels=channels)
            yield server.url

    @pytest.fixture(scope="module")
    def keyed_url(store, url, tmp_path_factory):
        keys = tmp_path_factory.mktemp(f"{name}-keys") / "keys.txt"
        keys.write_text(f"# writers\n{key} {key_name}\n")
        with serving(store, api_keys=keys) as server:
            yield server.url

    return store, url, keyed_url


store, url, keyed_url = server_fixtures("serve-writes")


@pytest.fixture(scope="module")
def workers_url(store, url, tmp_path_factory):
    server = start_workers(store, tmp_path_factory.mktemp("workers"), max_body=1 << 20)
    try:
        yield server.url
    finally:
        server.stop()


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def shape_of(box) -> tuple[int, int, int]:
    return tuple(hi - lo for lo, hi in reversed(box))


# --- the write rules ---------------------------------------------------------------------------
def test_image_post_overwrites_its_box_and_nothing_else(url):
    around = ((1001, 1301), (2003, 2203), (7, 27))
    before = get(url, "img", around)
    box = ((1050, 1170), (2010, 2100), (9, 20))  # crosses chunk edges, partial chunks
    new = rng(1).integers(0, 256, shape_of(box), dtype=np.uint8)
    reply = post(url, "img", box, new)
    assert reply.status_code == 200, reply.text
    after = get(url, "img", around)
    expected = before.copy()
    expected[2:13, 7:97, 49:169] = new
    np.testing.assert_array_equal(after, expected)


def test_annotation_post_overwrites_only_nonzero_voxels(url):
    box = ((1100, 1164), (2050, 2082), (10, 18))
    old = rng(2).integers(1, 9, shape_of(box), dtype=np.uint32)
    assert post(url, "anno", box, old, query="?mode=replace").status_code == 200
    new = np.where(rng(3).random(shape_of(box)) < 0.5, 0, 77).astype(np.uint32)
    assert post(url, "anno", box, new).status_code == 200
    np.testing.assert_array_equal(get(url, "anno", box), np.where(new != 0, new, old))


def test_replace_mode_writes_annotation_zeros_too(url):
    box = ((1200, 1232), (2100, 2132), (20, 30))
    assert post(url, "anno", box, np.full(shape_of(box), 5, np.uint32)).status_code == 200
    zeros = np.zeros(shape_of(box), np.uint32)
    assert post(url, "anno", box, zeros).status_code == 200
    assert (get(url, "anno", box) == 5).all()  # zeros are "no label" by default
    assert post(url, "anno", box, zeros, query="?mode=replace").status_code == 200
    assert not get(url, "anno", box).any()


def test_an_unknown_mode_is_400(url):
    box = ((1001, 1011), (2003, 2013), (7, 8))
    reply = post(url, "anno", box, np.ones(shape_of(box), np.uint32), query="?mode=merge")
    assert reply.status_code == 400 and "replace" in reply.text


@pytest.mark.parametrize("fmt", ["blosc", "raw"])
def test_blosc_and_raw_posts_are_written_as_sent(url, fmt):
    box = ((1260, 1301), (2190, 2203), (40, 47))  # the volume's far corner
    new = rng(4).integers(0, 256, shape_of(box), dtype=np.uint8)
    assert post(url, "img", box, new, fmt=fmt).status_code == 200
    np.testing.assert_array_equal(get(url, "img", box), new)


def test_hdf5_post_with_a_group_named_after_the_channel(url):
    box = ((1010, 1030), (2010, 2030), (8, 12))
    new = rng(5).integers(0, 256, shape_of(box), dtype=np.uint8)
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        f.create_group("img").create_dataset("CUTOUT", data=new)
    reply = requests.post(box_url(url, "img", "hdf5", box), data=buf.getvalue(), timeout=30)
    assert reply.status_code == 200, reply.text
    np.testing.assert_array_equal(get(url, "img", box), new)


def test_time_series_post_writes_each_time_point(url):
    box = ((1001, 1101), (2003, 2043), (7, 17))
    new = rng(6).integers(0, 60000, (2, *shape_of(box)), dtype=np.uint16)
    reply = post(url, "ts", box, new, t=(1, 3))
    assert reply.status_code == 200, reply.text
    np.testing.assert_array_equal(get(url, "ts", box, t=(1, 3)), new)
    assert not get(url, "ts", box, t=(0, 1)).any()


# --- what is refused -----------------------------------------------------------------------------
def bad(reply: requests.Response, status: int) -> str:
    assert reply.status_code == status, (reply.status_code, reply.text)
    assert reply.text.count("\n") <= 1 and "Traceback" not in reply.text and reply.text.strip()
    return reply.text


@pytest.mark.parametrize("case", ["shape", "dtype", "truncated", "garbage"])
def test_bad_bodies_are_400_with_one_line(url, case):
    box = ((1001, 1033), (2003, 2035), (7, 15))
    good = np.ones(shape_of(box), np.uint8)
    body = {"shape": npz(np.ones((8, 32, 31), np.uint8)), "dtype": npz(good.astype(np.uint16)),
            "truncated": npz(good)[:-7], "garbage": os.urandom(500)}[case]
    text = bad(requests.post(box_url(url, "img", "npz", box), data=body, timeout=30), 400)
    assert "npz" in text


def test_a_box_outside_the_volume_is_400(url):
    box = ((1001, 1401), (2003, 2035), (7, 15))
    assert "x range" in bad(post(url, "img", box, np.ones(shape_of(box), np.uint8)), 400)


def test_a_post_above_level_0_is_400(url):
    box = ((500, 532), (1001, 1033), (7, 15))
    body = npz(np.ones(shape_of(box), np.uint8))
    reply = requests.post(box_url(url, "img", "npz", box, res=1), data=body, timeout=30)
    assert "setPropagate" in bad(reply, 400)


def test_a_readonly_channel_is_403(url):
    box = ((1001, 1011), (2003, 2013), (7, 8))
    assert "readonly" in bad(post(url, "frozen", box, np.ones(shape_of(box), np.uint8)), 403)


@pytest.mark.parametrize("token, channel", [("nope", "img"), (TOKEN, "nope")])
def test_an_unknown_token_or_channel_is_404(url, token, channel):
    reply = requests.post(f"{url}/nd/sd/{token}/{channel}/npz/0/1001,1002/2003,2004/7,8/",
                          data=npz(np.ones((1, 1, 1), np.uint8)), timeout=30)
    assert "nope" in bad(reply, 404)


def raw_request(base: str, head: bytes, body_parts, *, timeout: float = 10) -> bytes:
    """Send a request by hand (headers, then body parts until the server stops reading),
    and return what the server answered."""
    port = int(base.rsplit(":", 1)[1])
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.sendall(head)
        try:
            for part in body_parts:
                s.sendall(part)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed: what we want to read
        answer = b""
        try:
            while not _complete(answer):
                chunk = s.recv(65536)
                if not chunk:
                    break
                answer += chunk
        except ConnectionResetError:
            pass
    return answer


def _complete(answer: bytes) -> bool:
    """A whole HTTP answer: its headers, and as many body bytes as they announce."""
    head, sep, body = answer.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


def test_a_content_length_past_the_limit_is_413_before_the_body_is_read(url):
    path = box_url(url, "img", "raw", ((1001, 1011), (2003, 2013), (7, 8))).split(str(HOST))[1].split("/", 1)[1]
    head = (f"POST /{path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {2 << 30}\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode()
    # 100 bytes of the 2 GiB it claims: any answer at all comes before the body was read
    answer = raw_request(url, head, [b"x" * 100])
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"limit" in answer


def test_a_streamed_body_growing_past_the_limit_is_413(workers_url):
    box = ((1001, 1301), (2003, 2203), (7, 47))  # 2.4 MB of uint8: past the 1 MiB limit
    path = box_url(workers_url, "img", "raw", box).split(str(HOST))[1].split("/", 1)[1]
    head = f"POST /{path} HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
    part = 64 << 10
    chunks = (f"{part:x}\r\n".encode() + b"\0" * part + b"\r\n" for _ in range(40))
    answer = raw_request(workers_url, head, chunks)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


def test_a_box_holding_more_voxels_than_the_limit_is_413_whatever_the_body(workers_url):
    box = ((1001, 1301), (2003, 2203), (7, 47))  # 2.4 MB of uint8 voxels, past the 1 MiB limit
    body = zlib.compress(b"\0" * 100)  # small: an npz this size could inflate to anything
    text = bad(requests.post(box_url(workers_url, "img", "npz", box), data=body, timeout=30), 413)
    assert "limit" in text


# --- keys ----------------------------------------------------------------------------------------
def test_with_keys_a_post_without_a_key_is_401(keyed_url):
    box = ((1001, 1011), (2003, 2013), (7, 8))
    reply = post(keyed_url, "img", box, np.ones(shape_of(box), np.uint8))
    bad(reply, 401)
    assert reply.headers["WWW-Authenticate"].startswith("Token")
    bad(post(keyed_url, "img", box, np.ones(shape_of(box), np.uint8), headers={"Authorization": "Token "}), 401)


def test_with_keys_a_wrong_key_is_403(keyed_url):
    box = ((1001, 1011), (2003, 2013), (7, 8))
    reply = post(keyed_url, "img", box, np.ones(shape_of(box), np.uint8), headers={"Authorization": "Token nope"})
    assert "nope" not in bad(reply, 403)


def test_with_keys_a_known_key_writes_and_the_edit_names_it_by_name_only(keyed_url, store):
    box = ((1280, 1290), (2150, 2160), (30, 31))
    new = np.full(shape_of(box), 9, np.uint8)
    reply = post(keyed_url, "img", box, new, headers={"Authorization": f"Token {KEY}"})
    assert reply.status_code == 200, reply.text
    np.testing.assert_array_equal(get(keyed_url, "img", box), new)  # public token: read without a key
    edits = read_edits(channel_dir(store, DATASET, PROJECT, "img"))
    mine = [e for e in edits if e.key_name == KEY_NAME]
    assert not any(e.key_id for e in edits)
    assert [tuple(zip(b.begin, b.end)) for e in mine for b in e.boxes] == [box]
    assert abs(mine[0].when - time.time()) < 60
    assert not any(KEY in p.read_text() or key_id(KEY) in p.read_text()
                   for p in (channel_dir(store, DATASET, PROJECT, "img") / "edits").iterdir())
    listed = requests.get(f"{keyed_url}/nd/sd/{TOKEN}/img/edits/", timeout=30)
    assert KEY_NAME in listed.text and key_id(KEY) not in listed.text and KEY not in listed.text


def test_with_keys_propagation_and_channel_writes_need_a_key(keyed_url):
    bad(requests.get(f"{keyed_url}/nd/sd/{TOKEN}/img/setPropagate/0/", timeout=30), 401)
    reply = requests.get(f"{keyed_url}/nd/sd/{TOKEN}/img/getPropagate/", timeout=30)
    assert reply.status_code == 200  # a read of a public token
    bad(requests.post(f"{keyed_url}/nd/sd/{TOKEN}/createChannel/", timeout=30,
                      json={"channels": {"x": {"channel_name": "x", "channel_type": "image", "datatype": "uint8",
                                               "readonly": 0}}}), 401)


def test_every_post_is_recorded_for_verify(url, store):
    box = ((1003, 1009), (2005, 2011), (8, 9))
    assert post(url, "img", box, np.ones(shape_of(box), np.uint8)).status_code == 200
    edits = read_edits(channel_dir(store, DATASET, PROJECT, "img"))
    last = edits[-1]
    assert [tuple(zip(b.begin, b.end)) for b in last.boxes] == [box]
    assert last.key_id is None and last.mode == "overwrite" and last.times is None
    assert [e.when for e in edits] == sorted(e.when for e in edits)
    listed = requests.get(f"{url}/nd/sd/{TOKEN}/img/edits/", timeout=30).json()
    assert len(listed) == len(edits) and listed[-1]["boxes"] == ["1003-1009_2005-2011_8-9"]
    assert listed[-1]["when"] == last.when and listed[-1]["key"] is None


# --- concurrency ---------------------------------------------------------------------------------
def striped_labels(box, owner: int, owners: int) -> np.ndarray:
    """Label owner+1 on the voxels whose (x + y + z) % owners is `owner`, zero elsewhere."""
    z, y, x = np.indices(shape_of(box))
    return np.where((x + y + z) % owners == owner, owner + 1, 0).astype(np.uint32)


def post_together(jobs) -> list[int]:
    """Run each job (a callable returning a status) at once from its own thread."""
    statuses: list[int] = [0] * len(jobs)
    start = threading.Barrier(len(jobs))

    def run(i):
        start.wait()
        statuses[i] = jobs[i]()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    return statuses


def servers_for(mode: str, request) -> list[str]:
    """One server's URL, or three processes writing at once: the plain server and both
    workers of `uvicorn --workers 2` (requests alternate between the two servers)."""
    if mode == "threads":
        return [request.getfixturevalue("url")]
    return [request.getfixturevalue("url"), request.getfixturevalue("workers_url")]


@pytest.mark.parametrize("mode", ["threads", "processes"])
def test_concurrent_overlapping_annotation_posts_lose_no_label(mode, request):
    bases = servers_for(mode, request)
    box = ((1001, 1201), (2003, 2103), (7, 23)) if mode == "threads" else ((1101, 1301), (2103, 2203), (23, 31))
    owners = 8
    assert post(bases[0], "race", box, np.zeros(shape_of(box), np.uint32), query="?mode=replace").status_code == 200
    jobs = [lambda i=i, base=bases[(i + k) % len(bases)]: post(base, "race", box, striped_labels(box, i, owners))
            .status_code for k in range(2) for i in range(owners)]
    assert post_together(jobs) == [200] * owners * 2
    expected = sum(striped_labels(box, i, owners) for i in range(owners))
    np.testing.assert_array_equal(get(bases[0], "race", box), expected)


@pytest.mark.parametrize("mode", ["threads", "processes"])
def test_concurrent_image_posts_sharing_chunks_lose_nothing(mode, request):
    bases = servers_for(mode, request)
    z = (7, 23) if mode == "threads" else (23, 39)
    slabs = [((1001 + 12 * i, 1001 + 12 * (i + 1)), (2003, 2203), z) for i in range(16)]  # 16 slabs in 2 chunks
    values = [rng(100 + i).integers(1, 60000, shape_of(b), dtype=np.uint16) for i, b in enumerate(slabs)]
    jobs = [lambda b=b, v=v, base=bases[i % len(bases)]: post(base, "slabs", b, v, fmt="blosc").status_code
            for i, (b, v) in enumerate(zip(slabs, values))]
    assert post_together(jobs) == [200] * len(slabs)
    whole = get(bases[0], "slabs", ((1001, 1001 + 12 * 16), (2003, 2203), z))
    np.testing.assert_array_equal(whole, np.concatenate(values, axis=2))
