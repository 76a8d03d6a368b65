"""serve.py's load: clients (threads, THREADS to a process, started as `serve.py --step
load`) drawing requests at random from KINDS until a deadline, each posting only inside
its own x strip and logging what it posted (by seed), so the script can replay the POSTs."""
from __future__ import annotations

import argparse
import io
import json
import random
import sys
import time
import zlib

from measuring.servers import TOKEN, Served, cutout_url

PROCESSES, THREADS = 4, 4  # 16 clients
CLIENTS = PROCESSES * THREADS
GET_BOX = (128, 128, 32)  # x, y, z of a load cutout (capped by the volume)
POST_BOX = (64, 64, 16)   # x, y, z of a load POST (x capped by the client's strip)
SLICE_SIDE = 512
KINDS = [  # kind, share of the requests
    ("GET blosc", 25), ("GET npz", 10), ("PNG xy", 10), ("PNG xz", 10), ("PNG yz", 10),
    ("POST image blosc", 20), ("POST labels npz", 15),
]


def strip_of(client: int, width: int) -> tuple[int, int]:
    """The x range client `client` alone posts into."""
    step = width // CLIENTS
    return client * step, (client + 1) * step


def post_data(seed: int, kind: str, shape_zyx):
    """A POST's voxels, regenerated from its seed when the script replays it."""
    import numpy as np

    rng = np.random.default_rng(seed)
    if kind == "POST image blosc":
        return rng.integers(0, 256, size=shape_zyx, dtype=np.uint8)
    labels = rng.integers(1, 1 << 20, size=shape_zyx, dtype=np.uint32)
    labels[rng.random(shape_zyx) < 0.5] = 0
    return labels


def random_box(rng: random.Random, shape_zyx, size_xyz, x_range=None):
    z, y, x = shape_zyx
    lo_x, hi_x = x_range or (0, x)
    sx, sy, sz = min(size_xyz[0], hi_x - lo_x), min(size_xyz[1], y), min(size_xyz[2], z)
    x0 = rng.randrange(lo_x, hi_x - sx + 1)
    y0, z0 = rng.randrange(0, y - sy + 1), rng.randrange(0, z - sz + 1)
    return ((x0, x0 + sx), (y0, y0 + sy), (z0, z0 + sz))


def slice_url(base: str, plane: str, rng: random.Random, shape_zyx) -> str:
    z, y, x = shape_zyx
    sx, sy = min(SLICE_SIDE, x), min(SLICE_SIDE, y)
    x0, y0 = rng.randrange(0, x - sx + 1), rng.randrange(0, y - sy + 1)
    xs, ys, zs = f"{x0},{x0 + sx}", f"{y0},{y0 + sy}", f"0,{z}"
    parts = {"xy": (xs, ys, str(rng.randrange(z))), "xz": (xs, str(rng.randrange(y)), zs),
             "yz": (str(rng.randrange(x)), ys, zs)}[plane]
    return f"{base}/nd/sd/{TOKEN}/image/{plane}/0/{'/'.join(parts)}/"


def client_thread(base: str, client: int, shape_zyx, start: float, deadline: float, out: dict) -> None:
    """One client: requests one at a time from `start` until `deadline` (epoch seconds);
    POSTs only into its own strip."""
    import blosc
    import numpy as np
    import requests

    rng = random.Random(1000 + client)
    session = requests.Session()
    kinds, weights = zip(*KINDS)
    strip = strip_of(client, shape_zyx[2])
    latencies = {k: [] for k in kinds}
    accepted, uncertain, errors = [], [], []
    serial = 0
    time.sleep(max(0.0, start - time.time()))
    while time.time() < deadline:
        kind = rng.choices(kinds, weights)[0]
        data = None
        if kind.startswith("GET"):
            fmt = kind.split()[1]
            method, url = "GET", cutout_url(base, "image", fmt, random_box(rng, shape_zyx, GET_BOX))
        elif kind.startswith("PNG"):
            method, url = "GET", slice_url(base, kind.split()[1], rng, shape_zyx)
        else:
            box = random_box(rng, shape_zyx, POST_BOX, strip)
            seed = client * 10**7 + serial
            serial += 1
            shape = tuple(e - b for b, e in reversed(box))
            voxels = post_data(seed, kind, shape)
            if kind == "POST image blosc":
                method, url = "POST", cutout_url(base, "image", "blosc", box)
                data = blosc.pack_array(voxels[np.newaxis])
            else:
                buf = io.BytesIO()
                np.save(buf, voxels[np.newaxis])
                method, url, data = "POST", cutout_url(base, "labels", "npz", box), zlib.compress(buf.getvalue(), 1)
        started = time.perf_counter()
        try:
            reply = session.request(method, url, data=data, timeout=120)
            ok, why = reply.status_code == 200 and len(reply.content) > 0, f"{reply.status_code} {reply.text[:200]}"
        except requests.RequestException as exc:
            ok, why = False, f"{type(exc).__name__}: {exc}"
        latencies[kind].append(time.perf_counter() - started)
        if data is not None:  # a failed POST may or may not have been written: not replayed
            (accepted if ok else uncertain).append({"kind": kind, "box": box, "seed": seed})
        if not ok:
            errors.append({"kind": kind, "url": url, "why": why})
    out[client] = {"latencies": latencies, "posts": accepted, "errors": errors, "uncertain": uncertain,
                   "ended": time.time()}


def run_clients(thread, args: argparse.Namespace, shape, threads: int = THREADS) -> None:
    """One client process: `threads` threads running `thread` (a `client_thread`), one
    client number each from `args.first_client`; their logs as JSON on stdout."""
    import threading

    out: dict = {}
    workers = [threading.Thread(target=thread, args=(args.url, c, shape, args.start, args.deadline, out))
               for c in range(args.first_client, args.first_client + threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    print(json.dumps(out))


def step_load(args: argparse.Namespace) -> None:
    """One client process of the light mix."""
    run_clients(client_thread, args, tuple(json.loads(args.shape)))


def make_labels(server: Served) -> None:
    import requests

    body = {"channels": {"labels": {"channel_name": "labels", "channel_type": "annotation", "datatype": "uint32",
                                    "readonly": 0}}}
    reply = requests.post(f"{server.url}/nd/sd/{TOKEN}/createChannel/", json=body, timeout=60)
    if reply.status_code != 200:
        sys.exit(f"createChannel: {reply.status_code} {reply.text}")
