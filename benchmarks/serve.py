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
   The warm-up checks each blosc answer equal to the local read. Goal: blosc >= 0.6x the
   ceiling (g), median of PASSES passes (issue 28 replaced ">= 0.5x tensorstore", which no
   server of this format can reach: (f) alone, with no HTTP, is 0.1-0.5x).
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
4. heavy (`measuring.heavy`): then, on the same server (`serve`'s default budget,
   --memory 1024), 16 clients (4 processes of 4 threads) for --heavy-seconds (default 60;
   --quick 3; 0 skips it) asking for what the memory budget is for: 256^3 cutouts of the
   volume in every format (hdf5, npz, blosc, raw: 10 % each), PNG slices of a second
   volume `serve_plane` of x 4096, y 4096, z 16 uint8 (--quick: 1024 x 1024 x 16), ingested
   into the same store before the server starts (not timed): the whole xy plane (20 %),
   whole xz and yz planes (4096 x 16; 10 % each), and 256^3 blosc POSTs of random voxels
   (20 %). A 503 (the budget stayed taken 30 s) is counted, not an error. Goals: no 5xx
   but 503s, at most 5 % 503s, and the server's peak RSS (over the whole run) at most its
   budget + 300 MiB.
5. malloc churn (`measuring.churn`), one line: the minor page faults of a fresh
   interpreter allocating and freeing 20 pairs of 16 MiB buffers (a 256^3 cutout and its
   encoding) after a warm-up of two, with glibc's defaults against the same after
   `malloc.few_arenas(2)` and `malloc.keep_freed(256 << 20)` (what the server sets),
   median of 3 interpreters each. Where the C library is not glibc, a note says so.

Prints Markdown tables, the malloc line, the goals and the machine.
"""
from __future__ import annotations

import argparse
import json
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from measuring import NDINGEST, PYTHON, bench_spec, heavy, machine, median, percentile, verdict
from measuring.churn import churn_line
from measuring.heavy import PLANE, step_heavy
from measuring.load import CLIENTS, KINDS, PROCESSES, THREADS, make_labels, post_data, step_load
from measuring.servers import HOST, Canned, Served, cutout_url, decode, grid_boxes, ingest_ok, run_timed, step_canned
from measuring.servers import TOKEN as NAME  # dataset, project and token
from measuring.stores import open_level0, read_zyx
from measuring.volumes import generate_uint8, read_source

RESOLUTION = (32.0, 32.0, 40.0)
FULL = {"shape_zyx": (256, 1024, 1024), "box": 256, "load_seconds": 60.0, "ingest_runs": 5,
        "plane_zyx": (16, 4096, 4096), "heavy_seconds": 60.0}
QUICK = {"shape_zyx": (64, 256, 256), "box": 128, "load_seconds": 5.0, "ingest_runs": 1,  # every row, no figure
         "plane_zyx": (16, 1024, 1024), "heavy_seconds": 3.0}
BUDGET_MIB = 1024  # serve's default --memory: the heavy phase's server runs with it
RSS_MARGIN_MIB = 300  # the goal: peak RSS <= budget + this (Python, tensorstore, the libraries)
BUSY_SHARE = 0.05  # the goal: at most this share of the heavy phase's requests 503
PASSES = 3
CEILING_GOAL = 0.6  # blosc GETs / the no-work server's, for the same bodies
API_KEY = "serve-bench-key"
UNSUPPORTED = "remote REST targets are not supported yet"
FLOOR = "local read + `blosc.pack_array` + `unpack_array`, no server (information)"
WIRE = "the same bodies over a bare loopback socket into one reused buffer: no HTTP, no decode (information: the wire's ceiling)"
CEILING = "GET blosc + `blosc.unpack_array` from a server that only sends bodies held in memory (information: the ceiling)"
# ingest runs of each kind: 5 in full (the remote ingest varies by up to 40 % run to run on these VMs)
MB = 1e6


# --- 1. cutouts ----------------------------------------------------------------------------------

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
    canned = Canned(bodies, workdir / "canned", Path(__file__).resolve())
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

def bench_ingest(workdir: Path, source: Path, runs: int) -> tuple[list[str], float | None, str]:
    """Rows, the server/local ratio (None while unavailable) and its note: the median of
    `runs` runs of each, alternated, each into a fresh store (and a fresh server)."""
    local_s, remote_s = [], []
    for run in range(runs):
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

def run_client_processes(step: str, server: Served, workdir: Path, shape: str, seconds: float, *,
                         processes: int, threads: int, grace: float) -> tuple[dict, float]:
    """Start `processes` client processes of `--step step` (`threads` clients each) that all
    begin at one moment and stop asking after `seconds`; their merged logs, and the seconds
    from the start to the last request's end (it ends after the deadline)."""
    start = time.time() + 3.0  # every client process has started and imported by then
    deadline = start + seconds
    procs = [subprocess.Popen([PYTHON, str(Path(__file__).resolve()), "--step", step, "--url", server.url,
                               "--shape", shape, "--start", repr(start), "--deadline", repr(deadline),
                               "--first-client", str(p * threads)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, cwd=workdir, text=True)
             for p in range(processes)]
    logs: dict = {}
    for proc in procs:
        out, err = proc.communicate(timeout=seconds + grace)
        if proc.returncode != 0:
            sys.exit(f"a {step} client exited {proc.returncode}:\n{err[-3000:]}")
        logs.update(json.loads(out))
    return logs, max(log["ended"] for log in logs.values()) - start


def bench_load(server: Served, workdir: Path, store: Path, source, shape_zyx, seconds: float) -> tuple[list[str], dict]:
    import numpy as np

    make_labels(server)
    logs, elapsed = run_client_processes("load", server, workdir, json.dumps(list(shape_zyx)), seconds,
                                         processes=PROCESSES, threads=THREADS, grace=600)
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


# --- 4. heavy ------------------------------------------------------------------------------------

def bench_heavy(server: Served, workdir: Path, shapes: dict, seconds: float) -> tuple[list[str], dict]:
    logs, elapsed = run_client_processes("heavy", server, workdir, json.dumps(shapes), seconds,
                                         processes=heavy.PROCESSES, threads=heavy.THREADS, grace=900)
    rows, totals = heavy.summary(logs, elapsed)
    totals["elapsed"] = elapsed
    return rows, totals


# --- the parent ----------------------------------------------------------------------------------

def bench(args: argparse.Namespace) -> int:
    size = QUICK if args.quick else FULL
    shape = size["shape_zyx"]
    load_seconds = args.load_seconds if args.load_seconds is not None else size["load_seconds"]
    workdir = Path(tempfile.mkdtemp(prefix="ndingest-serve-bench-", dir=args.tmp))
    servers: list[Served] = []
    try:
        source = workdir / "source.h5"
        generate_uint8(source, shape)
        served = workdir / "served"
        served.mkdir()
        (served / "spec.toml").write_text(bench_spec(NAME, source, resolution=RESOLUTION, store="store"))
        ingest_ok([NDINGEST, "ingest", "spec.toml"], served)  # not timed
        heavy_seconds = args.heavy_seconds if args.heavy_seconds is not None else size["heavy_seconds"]
        if heavy_seconds > 0:  # the heavy phase's 4k x 4k planes, in the same store
            plane_source = workdir / "plane.h5"
            generate_uint8(plane_source, size["plane_zyx"])
            (served / "plane.toml").write_text(bench_spec(PLANE, plane_source, resolution=RESOLUTION, store="store"))
            ingest_ok([NDINGEST, "ingest", "plane.toml"], served)  # not timed
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
        heavy_rows, heavy_totals = [], None
        if heavy_seconds > 0:
            heavy_rows, heavy_totals = bench_heavy(server, workdir, {"main": list(shape),
                                                                    "plane": list(size["plane_zyx"])}, heavy_seconds)
            heavy_peak = server.peak_rss_mib()
        server.stop()
        ingest_rows, ingest_ratio, ingest_note = bench_ingest(workdir, source, size["ingest_runs"])

        print(f"Ingest of the same volume ({nbytes / 2**20:.0f} MiB), whole processes, median (min-max) "
              f"of {size['ingest_runs']} runs each")
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
        if heavy_totals is not None:
            pz, py, px = size["plane_zyx"]
            print(f"Heavy: {heavy.PROCESSES * heavy.THREADS} clients for {heavy_totals['elapsed']:.1f} s "
                  f"(--heavy-seconds {heavy_seconds:g}), `serve --memory {BUDGET_MIB}` (its default); 256^3 boxes "
                  f"of the volume, whole planes of x {px}, y {py}, z {pz} uint8")
            print()
            print("| request | count | 200 | 503 | other 5xx | other | p50 ms | p99 ms |")
            print("|---|---:|---:|---:|---:|---:|---:|---:|")
            print("\n".join(heavy_rows))
            print()
            print(f"The server's peak RSS over the whole run: {heavy_peak:.0f} MiB "
                  f"(budget {BUDGET_MIB} MiB + {RSS_MARGIN_MIB} MiB = {BUDGET_MIB + RSS_MARGIN_MIB} MiB)")
            print()
            for failure in heavy_totals["failures"][:10]:
                print(f"heavy: {failure}")
        print(churn_line())
        print()
        for e in load["errors"][:10]:
            print(f"error: {e['kind']} {e['url']}: {e['why']}")
        goals = [f"- cutout GETs, blosc: {blosc_ratio / ceiling_ratio:.2f}x the throughput of a server that does no "
                 f"work, for the same bodies and client (goal >= {CEILING_GOAL}x, median of {PASSES} passes): "
                 f"{verdict(blosc_ratio >= CEILING_GOAL * ceiling_ratio)}; {blosc_ratio:.2f}x tensorstore's local read "
                 f"(information: `blosc.pack_array` is a pickle, so no server of this format comes near it)"]
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
        if heavy_totals is not None:
            share = heavy_totals["503"] / max(1, heavy_totals["total"])
            goals.append(f"- heavy: {heavy_totals['5xx']} 5xx but 503s and {heavy_totals['other']} other failures in "
                         f"{heavy_totals['total']} requests ({heavy_totals['rate']:.1f}/s) (goal: none): "
                         f"{verdict(heavy_totals['5xx'] == 0 and heavy_totals['other'] == 0)}")
            goals.append(f"- heavy: {heavy_totals['503']} 503s, {share:.1%} of the requests (goal <= "
                         f"{BUSY_SHARE:.0%}): {verdict(share <= BUSY_SHARE)}")
            goals.append(f"- heavy: server peak RSS {heavy_peak:.0f} MiB (goal <= budget + {RSS_MARGIN_MIB} = "
                         f"{BUDGET_MIB + RSS_MARGIN_MIB} MiB): {verdict(heavy_peak <= BUDGET_MIB + RSS_MARGIN_MIB)}")
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
    parser.add_argument("--heavy-seconds", type=float,
                        help="length of the heavy phase (default 60; --quick 3; 0 skips it and its plane volume)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--tmp", metavar="DIR", help="where to make the temporary folder (default: system temp dir)")
    parser.add_argument("--step", choices=("load", "canned", "heavy"), help=argparse.SUPPRESS)
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
    if args.step == "heavy":
        step_heavy(args)
        return 0
    if args.step == "canned":
        step_canned(args)
        return 0
    return bench(args)


if __name__ == "__main__":
    sys.exit(main())
