"""`ndingest serve`'s propagation: getPropagate / setPropagate and the rebuilt levels,
against a real server process on 127.0.0.1 (the store of test_serve_writes.py's shape).

Rebuilt levels are compared with a plain numpy reduction written here from DESIGN's rule,
not with downsample.py.
"""
from __future__ import annotations

import time

import numpy as np
import pytest
import requests

from test_serve_writes import LEVELS, OFFSET, TOKEN, bad, full_box, get, post, rng, server_fixtures, shape_of


store, url, keyed_url = server_fixtures("serve-propagate")


def reference_level(below: np.ndarray, begin, *, channel_type: str) -> np.ndarray:
    """One level up (x and y halved), as DESIGN states it, in plain numpy: output voxel i
    takes the children at absolute 2i, 2i+1 that exist; mean rounded half up, or the most
    frequent non-zero label (ties to the smallest)."""
    bx, by = begin[0], begin[1]
    nz, ny, nx = below.shape
    ox, oy = bx // 2, by // 2
    out_x, out_y = -(-(bx + nx) // 2) - ox, -(-(by + ny) // 2) - oy
    padded = np.zeros((nz, 2 * out_y, 2 * out_x), below.dtype)
    valid = np.zeros(padded.shape, bool)
    sy, sx = by - 2 * oy, bx - 2 * ox
    padded[:, sy:sy + ny, sx:sx + nx] = below
    valid[:, sy:sy + ny, sx:sx + nx] = True
    kids = [padded[:, dy::2, dx::2] for dy in (0, 1) for dx in (0, 1)]
    ok = [valid[:, dy::2, dx::2] for dy in (0, 1) for dx in (0, 1)]
    if channel_type == "image":
        total = sum(np.where(m, k.astype(np.int64), 0) for k, m in zip(kids, ok))
        count = sum(m.astype(np.int64) for m in ok)
        return ((2 * total + count) // (2 * count)).astype(below.dtype)
    best = np.zeros(kids[0].shape, below.dtype)
    best_count = np.zeros(kids[0].shape, np.int64)
    for k, m in zip(kids, ok):
        count = sum(((other == k) & om).astype(np.int64) for other, om in zip(kids, ok))
        better = m & (k != 0) & ((count > best_count) | ((count == best_count) & (k < best)))
        best = np.where(better, k, best)
        best_count = np.where(better, count, best_count)
    return best


def wait_for_state(base: str, channel: str, wanted: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while True:
        reply = requests.get(f"{base}/nd/sd/{TOKEN}/{channel}/getPropagate/", timeout=30)
        assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/plain")
        if reply.text == wanted or time.monotonic() > deadline:
            return reply.text
        time.sleep(0.1)


@pytest.mark.parametrize("channel, dtype, kind", [("img", np.uint8, "image"), ("anno", np.uint32, "annotation")])
def test_a_post_makes_levels_stale_and_setpropagate_rebuilds_them_exactly(url, channel, dtype, kind):
    shape = shape_of(full_box())
    if kind == "image":
        volume = rng(7).integers(0, 256, shape, dtype=dtype)
    else:  # few labels, many zeros: ties and all-zero children happen
        volume = np.where(rng(8).random(shape) < 0.4, 0, rng(9).integers(1, 4, shape)).astype(dtype)
    assert post(url, channel, full_box(), volume, query="?mode=replace").status_code == 200
    assert wait_for_state(url, channel, "0", timeout=0) == "0"
    reply = requests.get(f"{url}/nd/sd/{TOKEN}/{channel}/setPropagate/1/", timeout=30)
    assert reply.status_code == 200, reply.text
    assert wait_for_state(url, channel, "2") == "2"
    below, begin = volume, OFFSET
    for level in range(1, LEVELS + 1):
        expected = reference_level(below, begin, channel_type=kind)
        np.testing.assert_array_equal(get(url, channel, full_box(level), res=level), expected)
        below, begin = expected, [lo for lo, _ in full_box(level)]
    box = ((1001, 1002), (2003, 2004), (7, 8))
    assert post(url, channel, box, np.ones((1, 1, 1), dtype)).status_code == 200
    assert wait_for_state(url, channel, "0", timeout=0) == "0"


def test_setpropagate_while_built_is_409_and_0_marks_stale(url):
    box = ((1001, 1002), (2003, 2004), (7, 8))
    assert post(url, "slabs", box, np.ones((1, 1, 1), np.uint16)).status_code == 200
    assert requests.get(f"{url}/nd/sd/{TOKEN}/slabs/setPropagate/1/", timeout=30).status_code == 200
    assert wait_for_state(url, "slabs", "2") == "2"
    assert "setPropagate/0/" in bad(requests.get(f"{url}/nd/sd/{TOKEN}/slabs/setPropagate/1/", timeout=30), 409)
    assert requests.get(f"{url}/nd/sd/{TOKEN}/slabs/setPropagate/0/", timeout=30).status_code == 200
    assert wait_for_state(url, "slabs", "0", timeout=0) == "0"
    bad(requests.get(f"{url}/nd/sd/{TOKEN}/slabs/setPropagate/2/", timeout=30), 400)


def test_getpropagate_answers_exactly_one_digit_as_text(url):
    reply = requests.get(f"{url}/ocp/ca/{TOKEN}/img/getPropagate", timeout=30)
    assert reply.status_code == 200 and reply.text in ("0", "1", "2")
    assert reply.headers["content-type"].startswith("text/plain")


def test_a_time_series_rebuilds_every_time_point(url):
    volume = rng(10).integers(0, 60000, (3, *shape_of(full_box())), dtype=np.uint16)
    assert post(url, "ts", full_box(), volume, t=(0, 3)).status_code == 200
    assert requests.get(f"{url}/nd/sd/{TOKEN}/ts/setPropagate/1/", timeout=30).status_code == 200
    assert wait_for_state(url, "ts", "2") == "2"
    for t in range(3):
        expected = reference_level(volume[t], OFFSET, channel_type="image")
        np.testing.assert_array_equal(get(url, "ts", full_box(1), res=1, t=(t, t + 1))[0], expected)


def test_a_post_during_a_rebuild_leaves_the_levels_stale(url, store, monkeypatch):
    """The builder compares the newest edit before and after: a POST made while it read
    level 0 must not end as "2" over voxels it never saw (run in this process, on the
    server's store, with the rebuild paused half-way for the POST)."""
    from ndingest.server import propagate
    from ndingest.server.context import ServerContext

    ctx = ServerContext.open(store)
    channel = ctx.channel(ctx.token(TOKEN), "stamp")
    real = propagate.rebuild_levels
    box = ((1001, 1002), (2003, 2004), (7, 8))

    def rebuild_with_a_post_in_between(ctx_, channel_):
        real(ctx_, channel_)
        assert post(url, "stamp", box, np.full((1, 1, 1), 200, np.uint8)).status_code == 200
    monkeypatch.setattr(propagate, "rebuild_levels", rebuild_with_a_post_in_between)
    propagate.set_state(ctx, channel, propagate.UNDER_WAY)
    propagate._build_while_wanted(ctx, channel)
    assert propagate.read_state(ctx, channel) == propagate.NOT
    assert wait_for_state(url, "stamp", "0", timeout=0) == "0"


def test_a_rebuild_that_died_with_its_process_is_restarted_by_getpropagate(url, store):
    from ndingest.server import propagate
    from ndingest.server.context import ServerContext

    ctx = ServerContext.open(store)
    channel = ctx.channel(ctx.token(TOKEN), "stamp")
    box = ((1001, 1101), (2003, 2103), (7, 23))
    assert post(url, "stamp", box, rng(11).integers(0, 256, shape_of(box), dtype=np.uint8)).status_code == 200
    propagate.set_state(ctx, channel, propagate.UNDER_WAY)  # as a server killed mid-rebuild leaves it
    assert wait_for_state(url, "stamp", "2") == "2"
    level0 = get(url, "stamp", full_box())
    np.testing.assert_array_equal(get(url, "stamp", full_box(1), res=1),
                                  reference_level(level0, OFFSET, channel_type="image"))
