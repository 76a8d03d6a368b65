"""`serve --memory`: what requests hold is bounded by the budget, not by what they ask, in
a real server process on 127.0.0.1 (peak RSS from /proc/PID/status, its VmHWM reset before
each request through /proc/PID/clear_refs). A 2048 x 2048 plane of uint64 labels, four
planes deep; budget 256 MiB: 64 MiB of it malloc's kept heap, 192 MiB for requests."""
from __future__ import annotations

import io
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
import requests
from PIL import Image

from serving import serving
from test_slices import whole_plane_colours, whole_plane_window

DATASET, PROJECT, TOKEN = "mds", "mpr", "mtok"
SIDE, DEPTH = 2048, 4
MEMORY_MIB = 256
MiB = 1 << 20


def resource(base: str, *parts: str) -> str:
    return f"{base}/nd/resource/dataset/{DATASET}/" + "".join(f"{p}/" for p in parts)


def cut(base: str, channel: str, fmt: str, *xyz: tuple[int, int] | int) -> str:
    """A cutout's URL (ranges, lo,hi) or a slice's (one of them a single number)."""
    parts = "/".join(f"{p[0]},{p[1]}" if isinstance(p, tuple) else str(p) for p in xyz)
    return f"{base}/nd/sd/{TOKEN}/{channel}/{fmt}/0/{parts}/"


def rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def peak_rise_mib(pid: int, ask) -> tuple[float, object]:
    """How far the process's peak RSS rose above what it held before `ask()` ran."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # the peak (VmHWM) starts again from VmRSS
    before = rss_kib(pid, "VmHWM")
    answer = ask()
    return (rss_kib(pid, "VmHWM") - before) / 1024, answer


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    rng = np.random.default_rng(11)
    return rng.integers(1, 1 << 40, (SIDE, SIDE), dtype=np.uint64) * rng.integers(0, 2, (SIDE, SIDE), dtype=np.uint64)


@pytest.fixture(scope="module")
def server(tmp_path_factory, labels):
    store = tmp_path_factory.mktemp("serve-memory") / "store"
    store.mkdir()
    with serving(store, args=("--memory", str(MEMORY_MIB)), env={"NDINGEST_MEMORY_WAIT": "0.3"}) as running:
        base = running.url
        dataset = {"ximagesize": SIDE, "yimagesize": SIDE, "zimagesize": DEPTH, "xvoxelres": 4.0, "yvoxelres": 4.0,
                   "zvoxelres": 40.0, "scalingoption": 0, "scalinglevels": 0, "public": 1}
        for url, body in [(resource(base), dataset), (resource(base, "project", PROJECT), {"public": 1}),
                          (resource(base, "project", PROJECT, "token", TOKEN), {"public": 1}),
                          (resource(base, "project", PROJECT, "channel", "anno"),
                           {"channel_type": "annotation", "channel_datatype": "uint64"}),
                          (resource(base, "project", PROJECT, "channel", "img"),
                           {"channel_type": "image", "channel_datatype": "uint16"})]:
            assert requests.post(url, json=body, timeout=30).status_code == 201
        half = SIDE // 2
        for y in (0, half):
            for x in (0, half):
                piece = labels[y:y + half, x:x + half]
                reply = requests.post(cut(base, "anno", "raw", (x, x + half), (y, y + half), (0, 1)),
                                      data=piece.tobytes(), timeout=60)
                assert reply.status_code == 200, reply.text
                image = (piece % 5000).astype(np.uint16)
                reply = requests.post(cut(base, "img", "raw", (x, x + half), (y, y + half), (0, 1)),
                                      data=image.tobytes(), timeout=60)
                assert reply.status_code == 200, reply.text
        yield running


def test_the_png_of_a_large_label_plane_stays_within_the_budget(server, labels):
    rise, reply = peak_rise_mib(server.proc.pid, lambda: requests.get(
        cut(server.url, "anno", "xy", (0, SIDE), (0, SIDE), 0), timeout=120))
    assert reply.status_code == 200, reply.text
    assert rise <= MEMORY_MIB, f"peak RSS rose {rise:.0f} MiB for one slice; the budget is {MEMORY_MIB} MiB"
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(reply.content))), whole_plane_colours(labels))
    rise, reply = peak_rise_mib(server.proc.pid, lambda: requests.get(
        cut(server.url, "img", "xz", (0, SIDE), 5, (0, DEPTH)), timeout=120))
    assert reply.status_code == 200 and rise <= MEMORY_MIB, (reply.text, rise)
    image = np.zeros((DEPTH, SIDE), dtype=np.uint16)
    image[0] = labels[5] % 5000
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(reply.content))), whole_plane_window(image, (0, 65535)))


def test_a_request_larger_than_the_whole_budget_is_413_naming_the_limit(server):
    reply = requests.get(cut(server.url, "anno", "npz", (0, SIDE), (0, SIDE), (0, DEPTH)), timeout=60)
    assert reply.status_code == 413, reply.text
    assert "budget of 192 MiB" in reply.text and "needs about 512 MiB" in reply.text and reply.text.count("\n") == 1


def test_a_request_that_finds_the_budget_taken_is_503_with_retry_after(server, labels):
    held = requests.get(cut(server.url, "anno", "raw", (0, SIDE), (0, SIDE), (0, 1)), stream=True, timeout=60)
    try:  # its 32 MiB answer, unread, holds 128 MiB of the 192 until it is sent
        assert held.status_code == 200
        busy = requests.get(cut(server.url, "anno", "raw", (0, SIDE), (0, SIDE), (1, 2)), timeout=60)
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1", busy.text[:200]
        assert "memory budget" in busy.text and busy.text.count("\n") == 1
        small = requests.get(cut(server.url, "anno", "npz", (0, 64), (0, 64), (0, 1)), timeout=60)
        assert small.status_code == 200  # what fits beside it runs at once
        body = held.raw.read()
    finally:
        held.close()
    assert np.array_equal(np.frombuffer(body, dtype=np.uint64).reshape(SIDE, SIDE), labels)
    again = requests.get(cut(server.url, "anno", "raw", (0, SIDE), (0, SIDE), (1, 2)), timeout=60)
    assert again.status_code == 200 and not np.frombuffer(again.content, dtype=np.uint64).any()


def hdf5_body(dtype, shape: tuple[int, ...], **options) -> bytes:
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        f.create_group("anno").create_dataset("CUTOUT", shape=shape, dtype=dtype, **options)
    return buf.getvalue()


@pytest.mark.parametrize("dtype, shape, options, words", [
    (np.dtype(("f8", (64,))), (1, 1024, 1024), {}, "holds ('<f8', (64,)) voxels"),  # 512 MiB if it were read
    (np.uint64, (1, 1024, 1024), {"chunks": (1, 4096, 4096), "maxshape": (None, None, None)}, "chunks of"),
    (np.uint64, (1, 2048, 512), {}, "has shape (1, 2048, 512)"),
])
def test_an_hdf5_post_is_refused_from_its_header_before_its_data_is_read(server, dtype, shape, options, words):
    body = hdf5_body(dtype, shape, **options)
    assert len(body) < 16 << 10  # no voxels in it: an HDF5 reader would make them up as fill
    rise, reply = peak_rise_mib(server.proc.pid, lambda: requests.post(
        cut(server.url, "anno", "hdf5", (0, 1024), (0, 1024), (3, 4)), data=body, timeout=60))
    assert reply.status_code == 400 and words in reply.text, reply.text
    assert rise < 64, f"peak RSS rose {rise:.0f} MiB refusing a {len(body)}-byte body"
