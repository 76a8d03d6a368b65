"""Speed of `ndingest serve`: cutout GETs against a local tensorstore read, ingest into the
server against a local ingest, and a load of 16 concurrent clients.

Run from the project root:

    .venv/bin/python benchmarks/serve.py [--quick] [--load-seconds 60] [--keep] [--tmp DIR]

In a fresh folder (under --tmp, else the system temp dir; removed at the end unless
--keep) it writes one deterministic uint8 volume as an uncompressed HDF5 `image/CUTOUT`
(x 1024, y 1024, z 256; --quick: x 256, y 256, z 64), noise over half the range plus a
gradient as in ingest.py, and ingests it with `ndingest ingest` into a store (zslices,
32x32x40 nm, chunks 128x128x16). Not timed. Then, with `ndingest serve` started by this
script on 127.0.0.1 on a free port (one uvicorn process, no keys):

1. cutouts: every box of a 256x256x256 grid over the volume (--quick: 128x128x64), read
   one after another, after an untimed warm-up pass of each way, median of 3 passes:
   (a) tensorstore opening the same store locally and reading each box in F order
   (what the server does per request; `cache_pool` 0, as the server); (b) GETs of the
   blosc cutout over one keep-alive `requests` session, each decoded to a numpy array
   (`blosc.unpack_array`), the client's cost included; for information (c) npz (`zlib`
   + `numpy.load`) and (d) raw (`numpy.frombuffer`), and (e) the blosc body alone, read
   in one piece (`stream=True`, `raw.read()`, not decoded: the server and loopback
   without `requests`' 10 KiB `.content` loop), (f) `blosc.pack_array` + `unpack_array`
   of each local read in this process, no HTTP, and (g) the ceiling: the same blosc GETs
   and decode from a server that does no work (a process answering each box's body, kept
   in memory from the warm-up, with one socket write). MB/s is voxel bytes / seconds / 1e6.
   The warm-up checks each blosc answer equal to the local read. Goal: blosc >= 0.5x
   tensorstore.
2. ingest: `ndingest ingest` of the same volume into a fresh local store, against the
   same spec with `[store] url = "http://127.0.0.1:PORT/nd"` into a second server on a
   fresh empty store (with a keys file; the key in NDINGEST_API_KEY), both whole
   processes timed by wall clock. While the pipeline refuses a remote target (exit 2,
   "remote REST targets are not supported yet") the row says "not available yet".
   Goal: server >= 0.5x local.
3. load: 16 clients (4 processes of 4 threads, so the clients' GIL is not the limit)
   for --load-seconds (default 60; --quick 5), each drawing its next request at random:
   cutout GETs of 128x128x32 boxes at random places (blosc 25 %, npz 10 %), PNG slices
   (xy 512x512, xz 512 x depth, yz 512 x depth; 10 % each), image POSTs of 64x64x16
   blosc (20 %) and annotation POSTs of 64x64x16 uint32 npz, about half zeros (15 %),
   into a `labels` channel made by `createChannel/` first. Every client posts only
   inside its own x strip (1/16 of the volume), one request at a time, so the result is
   determined: the script replays every accepted POST of each client, in its order,
   onto the source volume (image: overwrite; labels: non-zero voxels overwrite) and
   compares both channels, read back with tensorstore, voxel for voxel. Each client
   stops by itself at the deadline; a request that fails or answers other than 200 is an
   error. Goals: zero errors; both channels bit-exact.

Prints Markdown tables, the goals and the machine.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

from measuring import bench_spec, machine

BIN = Path(sys.executable).parent
NDINGEST = str(BIN / "ndingest")
PYTHON = str(BIN / "python")
HOST = "127.0.0.1"
NAME = "serve_bench"  # dataset, project and token
RESOLUTION = (32.0, 32.0, 40.0)
FULL = {"shape_zyx": (256, 1024, 1024), "box": 256, "load_seconds": 60.0}
QUICK = {"shape_zyx": (64, 256, 256), "box": 128, "load_seconds": 5.0}
PASSES = 3
PROCESSES, THREADS = 4, 4  # 16 clients
CLIENTS = PROCESSES * THREADS
GET_BOX = (128, 128, 32)  # x, y, z of a load cutout (capped by the volume)
POST_BOX = (64, 64, 16)   # x, y, z of a load POST (x capped by the client's strip)
SLICE_SIDE = 512
KINDS = [  # kind, share of the requests
    ("GET blosc", 25), ("GET npz", 10), ("PNG xy", 10), ("PNG xz", 10), ("PNG yz", 10),
    ("POST image blosc", 20), ("POST labels npz", 15),
]
API_KEY = "serve-bench-key"
UNSUPPORTED = "remote REST targets are not supported yet"
FLOOR = "local read + `blosc.pack_array` + `unpack_array`, no server (information)"
WIRE = "the same bodies over a bare loopback socket into one reused buffer: no HTTP, no decode (information: the wire's ceiling)"
CEILING = "GET blosc + `blosc.unpack_array` from a server that only sends bodies held in memory (information: the ceiling)"
INGEST_RUNS = 5  # the remote ingest varies by up to 40 % run to run on these VMs
MB = 1e6


# --- the server ----------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Served:
    """One `ndingest serve` process on 127.0.0.1; stopped with SIGTERM (then SIGKILL)."""

    def __init__(self, store: Path, log: Path, *args: str):
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen([NDINGEST, "serve", "--store", str(store), "--host", HOST,
                                          "--port", str(self.port), *args], stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while not self._answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                sys.exit(f"ndingest serve did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.05)

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/nd/sd/public_tokens/", timeout=2) as reply:
                reply.read()
            return True
        except urllib.error.HTTPError:
            return True
        except OSError:
            return False

    def peak_rss_mib(self) -> float | None:
        """The server process's peak resident memory so far (Linux), None once it has ended."""
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return None
        kib = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), None)
        return None if kib is None else kib / 1024

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(15)


class Canned:
    """A server that does no work: `--step canned` in a process of its own, answering
    `GET /N` with the N-th body of `bodies` from memory in one write. What ndio's client
    gets from it is the most any server of this format can give that client. On
    `wire_port`, no HTTP: each 4-byte index read is answered with that body, bare."""

    def __init__(self, bodies: list[bytes], folder: Path):
        folder.mkdir()
        for i, body in enumerate(bodies):
            (folder / str(i)).write_bytes(body)
        self.port, self.wire_port = free_port(), free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.proc = subprocess.Popen([PYTHON, str(Path(__file__).resolve()), "--step", "canned",
                                      "--bodies", str(folder), "--url", self.url, "--wire-port", str(self.wire_port)])
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection((HOST, self.port), timeout=1).close()
                socket.create_connection((HOST, self.wire_port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    sys.exit("the canned-body server did not start")
                time.sleep(0.05)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(15)


def step_canned(args: argparse.Namespace) -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    folder = Path(args.bodies)
    bodies = {f"/{p.name}": p.read_bytes() for p in folder.iterdir()}

    def wire() -> None:
        listener = socket.create_server((HOST, args.wire_port))
        while True:
            conn, _ = listener.accept()
            with conn:
                while len(head := conn.recv(4, socket.MSG_WAITALL)) == 4:
                    conn.sendall(bodies[f"/{struct.unpack('<I', head)[0]}"])

    threading.Thread(target=wire, daemon=True).start()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as uvicorn

        def do_GET(self) -> None:
            body = bodies[self.path]
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args) -> None:
            pass

    port = int(args.url.rsplit(":", 1)[1])
    ThreadingHTTPServer((HOST, port), Handler).serve_forever()


# --- the volume ----------------------------------------------------------------------------------

def generate(path: Path, shape_zyx: tuple[int, int, int]) -> None:
    """Noise over half the range plus a smooth gradient (as ingest.py), slab by slab."""
    import h5py
    import numpy as np

    z, y, x = shape_zyx
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:y, 0:x]
    gradient = ((xx + yy) * 64 // (x + y)).astype(np.uint8)
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("image/CUTOUT", shape=shape_zyx, dtype="uint8", chunks=(min(16, z), 128, 128))
        for z0 in range(0, z, 16):
            z1 = min(z, z0 + 16)
            slab = rng.integers(0, 128, size=(z1 - z0, y, x), dtype=np.uint8) + gradient
            slab += (np.arange(z0, z1) * 60 // max(1, z)).astype(np.uint8)[:, None, None]
            ds[z0:z1] = slab


def read_source(path: Path):
    import h5py

    with h5py.File(path, "r") as f:
        return f["image/CUTOUT"][...]


def open_level0(volume: Path):
    import tensorstore as ts

    return ts.open({"driver": "neuroglancer_precomputed", "kvstore": {"driver": "file", "path": f"{volume}/"},
                    "scale_index": 0, "open": True,
                    "context": {"cache_pool": {"total_bytes_limit": 0}}}).result()


def read_zyx(handle, box) -> "object":
    """(z, y, x) voxels of box ((x0, x1), (y0, y1), (z0, z1)), as the server reads them."""
    (x0, x1), (y0, y1), (z0, z1) = box
    return handle[x0:x1, y0:y1, z0:z1, 0].read(order="F").result().T


def run_timed(argv: list[str], cwd: Path, env: dict | None = None) -> tuple[float, subprocess.CompletedProcess]:
    """A whole process's wall time (after a sync, so earlier writeback is not its cost)."""
    os.sync()
    started = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    return time.perf_counter() - started, proc


def ingest_ok(argv: list[str], cwd: Path) -> float:
    seconds, proc = run_timed(argv, cwd)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr[-5000:]}")
    return seconds


# --- 1. cutouts ----------------------------------------------------------------------------------

def grid_boxes(shape_zyx: tuple[int, int, int], side: int) -> list:
    z, y, x = shape_zyx
    sz = min(side, z)
    return [((x0, x0 + side), (y0, y0 + side), (z0, z0 + sz))
            for z0 in range(0, z - sz + 1, sz) for y0 in range(0, y - side + 1, side)
            for x0 in range(0, x - side + 1, side)]


def cutout_url(base: str, channel: str, fmt: str, box) -> str:
    (x0, x1), (y0, y1), (z0, z1) = box
    return f"{base}/nd/sd/{NAME}/{channel}/{fmt}/0/{x0},{x1}/{y0},{y1}/{z0},{z1}/"


def decode(fmt: str, body: bytes, box):
    import blosc
    import numpy as np

    if fmt == "blosc":
        return blosc.unpack_array(body)[0]
    if fmt == "npz":
        return np.load(io.BytesIO(zlib.decompress(body)), allow_pickle=False)[0]
    (x0, x1), (y0, y1), (z0, z1) = box
    return np.frombuffer(body, dtype=np.uint8).reshape(z1 - z0, y1 - y0, x1 - x0)


def bench_cutouts(server: Served, volume: Path, shape_zyx, side: int, workdir: Path) -> tuple[list[str], float, float]:
    """The cutout table's rows, blosc's ratio to tensorstore, and the ratio the same client
    reaches from a server that does no work (`Canned`): what no server can beat."""
    import numpy as np
    import requests

    boxes = grid_boxes(shape_zyx, side)
    handle = open_level0(volume)
    session = requests.Session()

    def local() -> None:
        for box in boxes:
            read_zyx(handle, box)

    def over_http(fmt: str):
        def run() -> None:
            for box in boxes:
                reply = session.get(cutout_url(server.url, "image", fmt, box), timeout=120)
                if reply.status_code != 200:
                    sys.exit(f"GET {fmt} {box}: {reply.status_code} {reply.text}")
                decode(fmt, reply.content, box)
        return run

    bodies = []
    for box in boxes:  # warm-up, and every blosc answer checked against the local read
        reply = session.get(cutout_url(server.url, "image", "blosc", box), timeout=120)
        if not np.array_equal(decode("blosc", reply.content, box), read_zyx(handle, box)):
            sys.exit(f"GET blosc {box} differs from tensorstore's read of the store")
        bodies.append(reply.content)
    canned = Canned(bodies, workdir / "canned")
    sizes = [len(b) for b in bodies]
    del bodies

    def from_canned() -> None:
        for i, box in enumerate(boxes):
            reply = session.get(f"{canned.url}/{i}", timeout=120)
            decode("blosc", reply.content, box)

    wire = socket.create_connection((HOST, canned.wire_port))
    received = memoryview(bytearray(max(sizes)))

    def over_wire() -> None:
        for i, size in enumerate(sizes):
            wire.sendall(struct.pack("<I", i))
            done = 0
            while done < size:
                done += wire.recv_into(received[done:size])

    def body_only() -> None:
        for box in boxes:
            with session.get(cutout_url(server.url, "image", "blosc", box), stream=True, timeout=120) as reply:
                reply.raw.read()

    def format_floor() -> None:
        import blosc

        for box in boxes:  # what the server's encode and the client's decode cost with no server at all
            blosc.unpack_array(blosc.pack_array(read_zyx(handle, box)[np.newaxis], clevel=5, cname="lz4"))

    ways = {"tensorstore, local, F order (the unit)": local, "GET blosc + `blosc.unpack_array`": over_http("blosc"),
            CEILING: from_canned, WIRE: over_wire, FLOOR: format_floor,
            "GET blosc, body only (`stream=True`, `raw.read()`; information)": body_only,
            "GET npz + `numpy.load` (information)": over_http("npz"),
            "GET raw + `numpy.frombuffer` (information)": over_http("raw")}
    try:
        for run in ways.values():
            run()  # warm-up (page cache, connection)
        seconds = {name: [] for name in ways}
        for _ in range(PASSES):  # interleaved, so a slow spell hits every way alike
            for name, run in ways.items():
                started = time.perf_counter()
                run()
                seconds[name].append(time.perf_counter() - started)
    finally:
        wire.close()
        canned.stop()
    nbytes = sum((b[0][1] - b[0][0]) * (b[1][1] - b[1][0]) * (b[2][1] - b[2][0]) for b in boxes)
    unit = median(seconds["tensorstore, local, F order (the unit)"])
    rows = []
    for name, values in seconds.items():
        s = median(values)
        rows.append(f"| {name} | {len(boxes)} | {s:.2f} | {nbytes / s / MB:.0f} | {unit / s:.2f} |")
    blosc_ratio = unit / median(seconds["GET blosc + `blosc.unpack_array`"])
    return rows, blosc_ratio, unit / median(seconds[CEILING])


# --- 2. ingest -----------------------------------------------------------------------------------

def bench_ingest(workdir: Path, source: Path) -> tuple[list[str], float | None, str]:
    """Rows, the server/local ratio (None while unavailable) and its note: the median of
    INGEST_RUNS runs of each, alternated, each into a fresh store (and a fresh server)."""
    local_s, remote_s = [], []
    for run in range(INGEST_RUNS):
        local = workdir / f"ingest_local{run}"
        local.mkdir()
        (local / "spec.toml").write_text(bench_spec(NAME, source, resolution=RESOLUTION, store="store"))
        local_s.append(ingest_ok([NDINGEST, "ingest", "spec.toml"], local))
        shutil.rmtree(local)

        remote = workdir / f"ingest_remote{run}"
        (remote / "store").mkdir(parents=True)
        keys = remote / "keys.txt"
        keys.write_text(f"{API_KEY}\n")
        server = Served(remote / "store", remote / "serve.log", "--api-keys", str(keys))
        try:
            spec = bench_spec(NAME, source, resolution=RESOLUTION, store="unused")
            spec = spec.replace('path = "unused"', f'url = "{server.url}/nd"')
            (remote / "spec.toml").write_text(spec)
            seconds, proc = run_timed([NDINGEST, "ingest", "spec.toml"], remote, env={"NDINGEST_API_KEY": API_KEY})
        finally:
            server.stop()
        if proc.returncode == 2 and UNSUPPORTED in proc.stderr:
            return ([f"| `ndingest ingest`, local store | {median(local_s):.2f} | 1.00 |",
                     "| `ndingest ingest`, `[store] url` on a server over loopback | not available yet | - |"],
                    None, "not available yet (the pipeline refuses `[store] url`)")
        if proc.returncode != 0:
            sys.exit(f"ndingest ingest into the server exited {proc.returncode}:\n{proc.stdout}{proc.stderr[-5000:]}")
        remote_s.append(seconds)
        shutil.rmtree(remote)
    spread = lambda values: f"{min(values):.2f}-{max(values):.2f}"  # noqa: E731
    rows = [f"| `ndingest ingest`, local store | {median(local_s):.2f} ({spread(local_s)}) | 1.00 |",
            f"| `ndingest ingest`, `[store] url` on a server over loopback | {median(remote_s):.2f} "
            f"({spread(remote_s)}) | {median(local_s) / median(remote_s):.2f} |"]
    return rows, median(local_s) / median(remote_s), ""


# --- 3. load -------------------------------------------------------------------------------------

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
    return f"{base}/nd/sd/{NAME}/image/{plane}/0/{'/'.join(parts)}/"


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


def step_load(args: argparse.Namespace) -> None:
    """One client process: THREADS client threads; their logs as JSON on stdout."""
    import threading

    shape = tuple(json.loads(args.shape))
    out: dict = {}
    threads = [threading.Thread(target=client_thread, args=(args.url, c, shape, args.start, args.deadline, out))
               for c in range(args.first_client, args.first_client + THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps(out))


def make_labels(server: Served) -> None:
    import requests

    body = {"channels": {"labels": {"channel_name": "labels", "channel_type": "annotation", "datatype": "uint32",
                                    "readonly": 0}}}
    reply = requests.post(f"{server.url}/nd/sd/{NAME}/createChannel/", json=body, timeout=60)
    if reply.status_code != 200:
        sys.exit(f"createChannel: {reply.status_code} {reply.text}")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def bench_load(server: Served, workdir: Path, store: Path, source, shape_zyx, seconds: float) -> tuple[list[str], dict]:
    import numpy as np

    make_labels(server)
    start = time.time() + 3.0  # every client process has started and imported by then
    deadline = start + seconds
    procs = [subprocess.Popen([PYTHON, str(Path(__file__).resolve()), "--step", "load", "--url", server.url,
                               "--shape", json.dumps(list(shape_zyx)), "--start", repr(start),
                               "--deadline", repr(deadline),
                               "--first-client", str(p * THREADS)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              cwd=workdir, text=True)
             for p in range(PROCESSES)]
    logs: dict = {}
    for proc in procs:
        out, err = proc.communicate(timeout=seconds + 600)
        if proc.returncode != 0:
            sys.exit(f"a load client exited {proc.returncode}:\n{err[-3000:]}")
        logs.update(json.loads(out))
    elapsed = max(log["ended"] for log in logs.values()) - start  # the last request ends after the deadline
    kinds = [k for k, _ in KINDS]
    per_kind = {k: [v for log in logs.values() for v in log["latencies"][k]] for k in kinds}
    total = sum(len(v) for v in per_kind.values())
    errors = [e for log in logs.values() for e in log["errors"]]
    uncertain = sum(len(log["uncertain"]) for log in logs.values())
    rows = [f"| {k} | {len(per_kind[k])} | {len(per_kind[k]) / elapsed:.1f} | {percentile(per_kind[k], 0.5) * 1e3:.0f} | "
            f"{percentile(per_kind[k], 0.99) * 1e3:.0f} |" for k in kinds]
    every = [v for k in kinds for v in per_kind[k]]
    rows.append(f"| all | {total} | {total / elapsed:.1f} | {percentile(every, 0.5) * 1e3:.0f} | "
                f"{percentile(every, 0.99) * 1e3:.0f} |")

    # replay every accepted POST, client by client, in its order, and compare with the store
    image = source.copy()
    labels = np.zeros(shape_zyx, dtype=np.uint32)
    for log in logs.values():
        for post in log["posts"]:
            (x0, x1), (y0, y1), (z0, z1) = post["box"]
            voxels = post_data(post["seed"], post["kind"], (z1 - z0, y1 - y0, x1 - x0))
            if post["kind"] == "POST image blosc":
                image[z0:z1, y0:y1, x0:x1] = voxels
            else:
                region = labels[z0:z1, y0:y1, x0:x1]
                region[voxels != 0] = voxels[voxels != 0]
    volumes = store / NAME / NAME
    exact = {}
    for name, expected in (("image", image), ("labels", labels)):
        handle = open_level0(volumes / name)
        z = shape_zyx[0]
        exact[name] = all(np.array_equal(read_zyx(handle, ((0, shape_zyx[2]), (0, shape_zyx[1]), (z0, min(z, z0 + 32)))),
                                         expected[z0:z0 + 32]) for z0 in range(0, z, 32))
    posts = sum(len(log["posts"]) for log in logs.values())
    return rows, {"total": total, "rate": total / elapsed, "errors": errors, "uncertain": uncertain,
                  "exact": exact, "posts": posts,
                  "elapsed": elapsed}


# --- the parent ----------------------------------------------------------------------------------

def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def bench(args: argparse.Namespace) -> int:
    size = QUICK if args.quick else FULL
    shape = size["shape_zyx"]
    load_seconds = args.load_seconds if args.load_seconds is not None else size["load_seconds"]
    workdir = Path(tempfile.mkdtemp(prefix="ndingest-serve-bench-", dir=args.tmp))
    servers: list[Served] = []
    try:
        source = workdir / "source.h5"
        generate(source, shape)
        served = workdir / "served"
        served.mkdir()
        (served / "spec.toml").write_text(bench_spec(NAME, source, resolution=RESOLUTION, store="store"))
        ingest_ok([NDINGEST, "ingest", "spec.toml"], served)  # not timed
        z, y, x = shape
        nbytes = x * y * z

        server = Served(served / "store", workdir / "serve.log")
        servers.append(server)
        cut_rows, blosc_ratio, ceiling_ratio = bench_cutouts(server, served / "store" / NAME / NAME / "image", shape, size["box"],
                                                         workdir)
        side = size["box"]
        print(f"Volume: x {x}, y {y}, z {z} uint8 = {nbytes / 2**20:.0f} MiB, chunks 128x128x16, raw; "
              f"`ndingest serve` on {HOST}, one process")
        print()
        print(f"Cutouts: {side}x{side}x{min(side, z)} uint8 boxes one after another, median of {PASSES} passes")
        print()
        print("| way | boxes | seconds | MB/s | x tensorstore |")
        print("|---|---:|---:|---:|---:|")
        print("\n".join(cut_rows))
        print()

        load_rows, load = bench_load(server, workdir, served / "store", read_source(source), shape, load_seconds)
        server_peak = server.peak_rss_mib()
        server.stop()
        ingest_rows, ingest_ratio, ingest_note = bench_ingest(workdir, source)

        print(f"Ingest of the same volume ({nbytes / 2**20:.0f} MiB), whole processes, median (min-max) "
              f"of {INGEST_RUNS} runs each")
        print()
        print("| step | seconds | x local |")
        print("|---|---:|---:|")
        print("\n".join(ingest_rows))
        print()
        print(f"Load: {CLIENTS} clients ({PROCESSES} processes x {THREADS} threads) for {load['elapsed']:.1f} s "
              f"(--load-seconds {load_seconds:g}, then each finishes its request); {load['posts']} POSTs accepted "
              f"and replayed")
        print()
        print("| request | count | per second | p50 ms | p99 ms |")
        print("|---|---:|---:|---:|---:|")
        print("\n".join(load_rows))
        print()
        if server_peak is not None:
            print(f"The server's peak RSS over the cutouts and the load: {server_peak:.0f} MiB")
            print()
        for e in load["errors"][:10]:
            print(f"error: {e['kind']} {e['url']}: {e['why']}")
        goals = [f"- cutout GETs, blosc: {blosc_ratio:.2f}x tensorstore's local read (goal >= 0.5x): "
                 f"{verdict(blosc_ratio >= 0.5)}; the same client reaches {ceiling_ratio:.2f}x from a server "
                 f"that does no work (a ceiling for any server of this format), so this one reaches "
                 f"{blosc_ratio / ceiling_ratio:.2f}x of what any server could"]
        if ingest_ratio is None:
            goals.append(f"- ingest into the server: {ingest_note} (goal >= 0.5x the local ingest)")
        else:
            goals.append(f"- ingest into the server: {ingest_ratio:.2f}x the local ingest (goal >= 0.5x): "
                         f"{verdict(ingest_ratio >= 0.5)}")
        goals.append(f"- load: {len(load['errors'])} errors in {load['total']} requests (goal: none): "
                     f"{verdict(not load['errors'])}")
        exact = all(load["exact"].values())
        goals.append(f"- load: image and labels bit-exact after every accepted POST replayed "
                     f"({', '.join(f'{k} {verdict(v)}' for k, v in load['exact'].items())}; "
                     f"{load['uncertain']} POSTs failed and so undetermined): {verdict(exact)}")
        print("Goals:")
        print("\n".join(goals))
        print()
        print(f"Machine: {machine()}; temp dir {Path(args.tmp or tempfile.gettempdir())}")
    finally:
        for s in servers:
            s.stop()
        if args.keep:
            print(f"Kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="x 256, y 256, z 64 and a 5 s load: checks the script runs")
    parser.add_argument("--load-seconds", type=float, help="length of the load (default 60; --quick 5)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--tmp", metavar="DIR", help="where to make the temporary folder (default: system temp dir)")
    parser.add_argument("--step", choices=("load", "canned"), help=argparse.SUPPRESS)
    parser.add_argument("--bodies", help=argparse.SUPPRESS)
    parser.add_argument("--wire-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--shape", help=argparse.SUPPRESS)
    parser.add_argument("--start", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--first-client", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step == "load":
        step_load(args)
        return 0
    if args.step == "canned":
        step_canned(args)
        return 0
    return bench(args)


if __name__ == "__main__":
    sys.exit(main())
