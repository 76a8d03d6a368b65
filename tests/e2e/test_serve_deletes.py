"""No write is lost and deleted voxels never come back: a delete waits for writes under
way, renames the channel away before its row goes (a channel made again reads zeros), is
refused (409 naming it) while an ingest holds the channel, and a POST that fails part-way
leaves propagate 0 and its edit recorded. Real servers on 127.0.0.1 (test_serve_writes.py's
fixtures); the ingest's lock is taken here with the function `ndingest ingest` uses.
"""
from __future__ import annotations

import fcntl
import json
import os
import subprocess
import threading
import time

import numpy as np
import requests

from ndingest.channellock import ChannelGate, ingest_holding
from ndingest.markers import channel_dir
from ndingest.server.locks import LOCK_STRIPES, flocked
from serving import NDINGEST, TIMESERIES, timeseries_spec
from test_serve_propagate import wait_for_state
from test_serve_writes import DATASET, OFFSET, PROJECT, SIZE, TOKEN, bad, full_box, get, post, resource, \
    server_fixtures, shape_of

CHANNELS = {name: ("image", "uint8", 0, 0, 0) for name in ("race", "built", "busy")}
JOB = "the ingest of /specs/cells.toml (pid 4242)"

store, url, keyed_url = server_fixtures("serve-deletes", channels=CHANNELS)


def nd(base: str) -> str:
    return f"{base}/nd/sd/{TOKEN}"


def delete_channel(base: str, name: str) -> requests.Response:
    return requests.post(f"{nd(base)}/deleteChannel/", json={"channels": [name]}, timeout=60)


def create_channel(base: str, name: str, **fields) -> requests.Response:
    return requests.post(resource(base, "project", PROJECT, "channel", name), timeout=60,
                         json={"channel_type": "image", "channel_datatype": "uint8", **fields})


def in_thread(work) -> tuple[threading.Thread, list]:
    out: list = []
    thread = threading.Thread(target=lambda: out.append(work()), daemon=True)
    thread.start()
    return thread, out


def gone(store, name: str, timeout: float = 10) -> bool:
    """Nothing of channel `name` is left: no volume folder, no markers, an empty trash."""
    places = [store / DATASET / PROJECT / name, channel_dir(store, DATASET, PROJECT, name)]
    deadline = time.monotonic() + timeout
    while True:
        trash = list((store / ".trash").glob("*")) if (store / ".trash").exists() else []
        if not trash and not any(p.exists() for p in places):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def holds_write_lock(store, name: str) -> bool:
    """Whether a request holds the channel's write lock (shared) now."""
    return is_locked(channel_dir(store, DATASET, PROJECT, name) / "write.lock")


def is_locked(path) -> bool:
    """Whether another process or open file holds an flock on `path` now."""
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def test_a_delete_waits_for_a_post_under_way_and_the_channel_made_again_reads_zeros(url, store):
    box = ((1001, 1101), (2003, 2103), (7, 17))
    stripes = channel_dir(store, DATASET, PROJECT, "race") / "locks" / "level0"
    with flocked(stripes, list(range(LOCK_STRIPES))):  # the POST will wait here, inside the channel
        posting, posted = in_thread(lambda: post(url, "race", box, np.full(shape_of(box), 9, np.uint8)))
        deadline = time.monotonic() + 2
        while not holds_write_lock(store, "race") and time.monotonic() < deadline:
            time.sleep(0.02)
        again, answers = in_thread(lambda: (delete_channel(url, "race"), create_channel(url, "race")))
        again.join(0.5)  # sequencing only: the old code deleted and made it again at once
    posting.join(60)
    again.join(60)
    assert posted[0].status_code == 200, posted[0].text  # it began first: it ends first
    deleted, made = answers[0]
    assert deleted.status_code == 200 and made.status_code == 201, (deleted.text, made.text)
    assert not get(url, "race", box).any()  # nothing of the deleted channel came back
    from cloudvolume import CloudVolume  # and the store itself, read by a reader nobody here wrote

    (x0, x1), (y0, y1), (z0, z1) = box
    stored = CloudVolume(f"file://{store}/{DATASET}/{PROJECT}/race", mip=0, parallel=1, progress=False,
                         fill_missing=True)
    assert not np.asarray(stored[x0:x1, y0:y1, z0:z1]).any()


def test_a_delete_during_a_level_rebuild_leaves_nothing_and_the_channel_made_again_is_empty(url, store,
                                                                                            monkeypatch):
    """setPropagate/1's builder, run here on the server's store and paused in its first
    write, its volume already open: the delete waits for that write, and the builder
    writes no other."""
    from ndingest.server import propagate
    from ndingest.server.context import ServerContext

    box = full_box()
    assert post(url, "built", box, np.full(shape_of(box), 200, np.uint8)).status_code == 200
    ctx = ServerContext.open(store)
    channel = ctx.channel(ctx.token(TOKEN), "built")
    inside, go = threading.Event(), threading.Event()

    def paused_write(ref, level, box, array):
        handle = ctx.handles.get(ref, level)
        inside.set()
        go.wait(30)
        x, y, z = (slice(b, e) for b, e in zip(box.begin, box.end))
        handle[x, y, z, 0].write(array.T).result()
    monkeypatch.setattr(ctx.handles, "write", paused_write)
    propagate.set_state(ctx, channel, propagate.UNDER_WAY)
    builder = threading.Thread(target=propagate._build_while_wanted, args=(ctx, channel), daemon=True)
    builder.start()
    assert inside.wait(30)
    deleting, deleted = in_thread(lambda: delete_channel(url, "built"))
    deleting.join(0.5)
    go.set()
    builder.join(60)
    deleting.join(60)
    assert deleted[0].status_code == 200, deleted[0].text
    assert gone(store, "built", timeout=3), sorted(str(p) for p in store.rglob("*built*"))
    assert create_channel(url, "built").status_code == 201
    assert not get(url, "built", box).any() and not get(url, "built", full_box(1), res=1).any()
    assert wait_for_state(url, "built", "0", timeout=0) == "0"


def test_while_an_ingest_holds_the_channel_writes_and_deletes_are_409_naming_it(url, store):
    box = ((1001, 1011), (2003, 2013), (7, 8))
    channel = resource(url, "project", PROJECT, "channel", "busy")
    with ingest_holding([channel_dir(store, DATASET, PROJECT, "busy")], job=JOB):
        refused = {
            "POST": post(url, "busy", box, np.ones(shape_of(box), np.uint8)),
            "setPropagate/1": requests.get(f"{nd(url)}/busy/setPropagate/1/", timeout=30),
            "setPropagate/0": requests.get(f"{nd(url)}/busy/setPropagate/0/", timeout=30),
            "deleteChannel": delete_channel(url, "busy"),
            "DELETE": requests.delete(channel, timeout=30),
        }
        for route, reply in refused.items():
            assert "'busy'" in bad(reply, 409) and "/specs/cells.toml" in reply.text, route
        assert requests.get(channel, timeout=30).status_code == 200
        assert (store / DATASET / PROJECT / "busy" / "info").exists()
    assert post(url, "busy", box, np.ones(shape_of(box), np.uint8)).status_code == 200  # the lock went with it
    assert requests.delete(channel, timeout=30).status_code == 204
    assert gone(store, "busy")


def test_ndingest_ingest_holds_its_channel_for_the_run_after_writes_under_way_end(tmp_path):
    """A real `ndingest ingest` of a small local store, started while a write of serve is
    under way (held here with serve's own gate): it takes the channel's ingest lock, waits
    for the write, then runs to exit 0, and lets go of the lock with its process."""
    spec, _ = timeseries_spec(tmp_path)
    markers = channel_dir(tmp_path / "store", TIMESERIES[0], TIMESERIES[1], "frames")
    with ChannelGate(markers, "frames") as gate:
        with gate.writing():
            run = subprocess.Popen([NDINGEST, "ingest", str(spec)], stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
            deadline = time.monotonic() + 60
            while not is_locked(markers / "ingest.lock") and run.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            held = is_locked(markers / "ingest.lock")
            waiting = run.poll() is None
        output, _ = run.communicate(timeout=120)
        assert held and waiting, output
        assert run.returncode == 0, output
        assert "timeseries.toml" in (markers / "ingest.holder").read_text()
        with gate.writing():  # the lock went with the process
            pass


def test_a_post_that_fails_part_way_leaves_propagate_0_and_its_edit_recorded(url, store):
    assert create_channel(url, "broken", propagate=2).status_code == 201
    assert wait_for_state(url, "broken", "2", timeout=0) == "2"
    info = json.loads((store / DATASET / PROJECT / "broken" / "info").read_text())
    scale = info["scales"][0]
    cx, cy, cz = scale["chunk_sizes"][0]
    x0, y0, z0 = OFFSET
    ends = [min(o + c * n, o + s) for o, c, s, n in zip(OFFSET, (cx, cy, cz), SIZE, (2, 1, 1))]
    # the box's second chunk along x cannot be written: a folder stands where its file goes
    (store / DATASET / PROJECT / "broken" / scale["key"] / f"{x0 + cx}-{ends[0]}_{y0}-{ends[1]}_{z0}-{ends[2]}").mkdir(parents=True)
    box = ((x0, x0 + cx + 8), (y0, y0 + 4), (z0, z0 + 2))
    reply = post(url, "broken", box, np.full(shape_of(box), 7, np.uint8))
    assert reply.status_code >= 400, reply.text
    assert wait_for_state(url, "broken", "0", timeout=0) == "0"
    edits = requests.get(f"{nd(url)}/broken/edits/", timeout=30).json()
    assert [e["boxes"] for e in edits] == [[f"{x0}-{x0 + cx + 8}_{y0}-{y0 + 4}_{z0}-{z0 + 2}"]]
