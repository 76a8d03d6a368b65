"""serve.py's heavy phase: 16 clients (4 processes of 4 threads, started as `serve.py
--step heavy`) asking what the memory budget is for until a deadline: 256^3 cutouts of the
main volume in every format, xy/xz/yz PNG slices of the `plane` volume (4k x 4k), and
256^3 blosc POSTs. A 503 (the budget stayed taken: `Retry-After`) is counted, not an error;
any other 5xx is. The POSTs overlap (their boxes are larger than a client's strip), so
nothing is replayed: the light phase checks the writes."""
from __future__ import annotations

import argparse
import json
import random
import time

from measuring.load import run_clients
from measuring.servers import cutout_url

PLANE = "serve_plane"  # the plane volume's dataset, project and token
PROCESSES, THREADS = 4, 4
HEAVY_BOX = 256
KINDS = [  # kind, share of the requests
    ("GET hdf5", 10), ("GET npz", 10), ("GET blosc", 10), ("GET raw", 10),
    ("PNG xy 4k", 20), ("PNG xz 4k", 10), ("PNG yz 4k", 10), ("POST blosc", 20),
]


def box_in(rng: random.Random, shape_zyx, side: int):
    z, y, x = shape_zyx
    sx, sy, sz = min(side, x), min(side, y), min(side, z)
    x0, y0, z0 = rng.randrange(0, x - sx + 1), rng.randrange(0, y - sy + 1), rng.randrange(0, z - sz + 1)
    return ((x0, x0 + sx), (y0, y0 + sy), (z0, z0 + sz))


def plane_url(base: str, plane: str, rng: random.Random, plane_zyx) -> str:
    z, y, x = plane_zyx
    whole_x, whole_y, whole_z = f"0,{x}", f"0,{y}", f"0,{z}"
    parts = {"xy": (whole_x, whole_y, str(rng.randrange(z))), "xz": (whole_x, str(rng.randrange(y)), whole_z),
             "yz": (str(rng.randrange(x)), whole_y, whole_z)}[plane]
    return f"{base}/nd/sd/{PLANE}/image/{plane}/0/{'/'.join(parts)}/"


def client_thread(base: str, client: int, shapes: dict, start: float, deadline: float, out: dict) -> None:
    import blosc
    import numpy as np
    import requests

    rng = random.Random(5000 + client)
    session = requests.Session()
    kinds, weights = zip(*KINDS)
    counts: dict[str, dict[str, int]] = {k: {} for k in kinds}
    latencies: dict[str, list[float]] = {k: [] for k in kinds}
    failures = []
    time.sleep(max(0.0, start - time.time()))
    while time.time() < deadline:
        kind = rng.choices(kinds, weights)[0]
        data = None
        if kind.startswith("GET"):
            url = cutout_url(base, "image", kind.split()[1], box_in(rng, shapes["main"], HEAVY_BOX))
        elif kind.startswith("PNG"):
            url = plane_url(base, kind.split()[1], rng, shapes["plane"])
        else:
            box = box_in(rng, shapes["main"], HEAVY_BOX)
            voxels = np.random.default_rng(rng.randrange(1 << 30)).integers(
                0, 256, tuple(e - b for b, e in reversed(box)), dtype=np.uint8)
            url, data = cutout_url(base, "image", "blosc", box), blosc.pack_array(voxels[np.newaxis])
        started = time.perf_counter()
        try:
            with session.request("POST" if data is not None else "GET", url, data=data, timeout=300) as reply:
                reply.content
                status = str(reply.status_code)
                if reply.status_code not in (200, 503):
                    failures.append(f"{kind} {url}: {reply.status_code} {reply.text[:200]}")
        except requests.RequestException as exc:
            status = "failed"
            failures.append(f"{kind} {url}: {type(exc).__name__}: {exc}")
        latencies[kind].append(time.perf_counter() - started)
        counts[kind][status] = counts[kind].get(status, 0) + 1
    out[client] = {"counts": counts, "latencies": latencies, "failures": failures, "ended": time.time()}


def step_heavy(args: argparse.Namespace) -> None:
    """One client process of the heavy mix."""
    run_clients(client_thread, args, json.loads(args.shape), threads=THREADS)


def summary(logs: dict, elapsed: float) -> tuple[list[str], dict]:
    """Table rows per kind (count, 200s, 503s, other, p50/p99 ms) and the totals."""
    from measuring import percentile

    kinds = [k for k, _ in KINDS]
    rows, totals = [], {"total": 0, "503": 0, "5xx": 0, "other": 0}
    for kind in kinds:
        merged: dict[str, int] = {}
        for log in logs.values():
            for status, n in log["counts"][kind].items():
                merged[status] = merged.get(status, 0) + n
        lat = [v for log in logs.values() for v in log["latencies"][kind]]
        n = sum(merged.values())
        busy = merged.get("503", 0)
        fivexx = sum(v for s, v in merged.items() if s.startswith("5") and s != "503")
        other = n - merged.get("200", 0) - busy - fivexx
        totals["total"] += n
        totals["503"] += busy
        totals["5xx"] += fivexx
        totals["other"] += other
        rows.append(f"| {kind} | {n} | {merged.get('200', 0)} | {busy} | {fivexx} | {other} | "
                    f"{percentile(lat, 0.5) * 1e3:.0f} | {percentile(lat, 0.99) * 1e3:.0f} |")
    totals["rate"] = totals["total"] / elapsed
    totals["failures"] = [f for log in logs.values() for f in log["failures"]]
    return rows, totals
