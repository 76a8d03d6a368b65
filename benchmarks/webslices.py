"""Slices read where they are, over HTTP: time, peak memory and requests against the same
stack read from a local folder.

Run from the project root:

    .venv/bin/python benchmarks/webslices.py [--slices 256] [--side 1024] [--format tif|png] [--rounds 3] [--quick]

In a fresh folder under the system temp dir (or --tmp; removed at the end) it writes a
stack of `side` x `side` uint8 slices (EM-like: a ramp plus noise; TIFF uncompressed, or
PNG), serves the folder with `python -m http.server` on 127.0.0.1 (a file server that
answers no `Range`, one thread per request), and runs `ndingest ingest SPEC` (write and
verify) three ways, each a subprocess with its own store:

- the baseline: the same stack as a local glob (`dir/*.tif`; for PNG, TIFF copies of the
  same pages, since a local stack is TIFF);
- the URL pattern `http://127.0.0.1:PORT/{z:04d}.tif` with `z_range`;
- the URL pattern `file:///…/{z:04d}.tif`;

each URL run staging its slices in a fresh folder (`NDINGEST_SLICE_CACHE`), as a first run does.

It prints the median of `--rounds` interleaved runs: wall time, peak RSS (the child's `ru_maxrss`, Luigi's workers included), the
ratio to the baseline, the GETs and HEADs the server logged per slice, and the CPU time
the server spent (on these 2 cores, taken from the ingest's share). The goal it
checks, the cost of HTTP alone: over HTTP at least 0.5x the speed of the same files read
through `file:///` (same reader, same decoding).
"""
from __future__ import annotations

import argparse
import collections
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from measuring import bench_spec, machine, measure

BIN = Path(sys.executable).parent
NDINGEST = str(BIN / "ndingest")
PYTHON = str(BIN / "python")
MiB = 2**20
GOAL = 0.5

WRITER = """
import sys
import numpy as np
import tifffile
from PIL import Image

folder, pages, side, fmt = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
rng = np.random.default_rng(0)
ramp = (np.add.outer(np.arange(side), np.arange(side)) // 8).astype(np.uint8)
for z in range(pages):
    page = ramp + np.uint8(z % 256) + rng.integers(0, 8, size=(side, side), dtype=np.uint8)
    tifffile.imwrite(f"{folder}/local/{z:04d}.tif", page)
    if fmt == "png":
        Image.fromarray(page).save(f"{folder}/served/{z:04d}.png")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(folder: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([PYTHON, "-m", "http.server", "--bind", "127.0.0.1", str(port)], cwd=folder,
                            stdout=subprocess.DEVNULL, stderr=log.open("w"))
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            urllib.request.urlopen(base + "/", timeout=2).close()
            return proc, base
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                sys.exit("http.server did not start")
            time.sleep(0.1)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def requests_logged(log: Path) -> collections.Counter:
    """Requests by method in http.server's log (one `"GET /x HTTP/1.1" 200 -` line each)."""
    counts: collections.Counter = collections.Counter()
    for line in log.read_text().splitlines():
        parts = line.split('"')
        if len(parts) > 1 and parts[1].split()[:1]:
            counts[parts[1].split()[0]] += 1
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=256)
    parser.add_argument("--side", type=int, default=1024)
    parser.add_argument("--format", choices=("tif", "png"), default="tif")
    parser.add_argument("--quick", action="store_true", help="64 slices of 256 x 256 (overrides both)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each row; the median is printed")
    parser.add_argument("--tmp", default=None, help="folder for the temporary files (default: system temp)")
    args = parser.parse_args()
    slices, side = (64, 256) if args.quick else (args.slices, args.side)

    workdir = Path(tempfile.mkdtemp(prefix="ndingest-webslices-", dir=args.tmp))
    server = None
    try:
        local, served = workdir / "local", workdir / ("served" if args.format == "png" else "local")
        local.mkdir(), served.mkdir(exist_ok=True)
        subprocess.run([PYTHON, "-c", WRITER, str(workdir), str(slices), str(side), args.format], check=True)
        log = workdir / "http.log"
        server, base = start_server(served, log)
        z_range = f"z_range = [0, {slices}]"
        runs = {"local stack (glob, baseline)": bench_spec("web_local", local / "*.tif", store="store_local"),
                "HTTP URL pattern": bench_spec("web_http", f"{base}/{{z:04d}}.{args.format}", store="store_http",
                                               channel_extra=z_range),
                "file:/// URL pattern": bench_spec("web_file", f"{served.as_uri()}/{{z:04d}}.{args.format}",
                                                   store="store_file", channel_extra=z_range)}
        measured: dict[str, list] = {name: [] for name in runs}
        asked = {}
        for _ in range(args.rounds):  # interleaved, so a slow minute of the machine hits every row
            for name, text in runs.items():
                spec = workdir / f"{name.split()[0].strip(':/')}.toml"
                spec.write_text(text)
                shutil.rmtree(workdir / text.split('path = "')[1].split('"')[0], ignore_errors=True)
                os.environ["NDINGEST_SLICE_CACHE"] = str(workdir / "staged" / f"{len(measured[name])}-{spec.stem}")
                before, cpu = requests_logged(log), cpu_seconds(server.pid)
                measured[name].append(measure([NDINGEST, "ingest", str(spec)], workdir, sync_first=True))
                asked[name] = requests_logged(log) - before
                asked[name]["cpu"] = cpu_seconds(server.pid) - cpu
        results = {name: sorted(ms, key=lambda m: m.seconds)[len(ms) // 2] for name, ms in measured.items()}
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)

    volume = slices * side * side
    base_seconds = results["local stack (glob, baseline)"].seconds
    print(f"ndingest ingest (write + verify) of {slices} {args.format.upper()} slices of {side} x {side} uint8 "
          f"= {volume / MiB:.0f} MiB; median of {args.rounds} rounds")
    print()
    print("| source | wall s | MB/s | x baseline | peak RSS MiB | GETs per slice | HEADs per slice | server CPU s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, m in results.items():
        print(f"| {name} | {m.seconds:.2f} | {volume / m.seconds / 1e6:.0f} | {base_seconds / m.seconds:.2f} | "
              f"{m.peak_rss / MiB:.0f} | {asked[name]['GET'] / slices:.2f} | {asked[name]['HEAD'] / slices:.2f} | "
              f"{asked[name]['cpu']:.2f} |")
    print()
    http, local_files = results["HTTP URL pattern"].seconds, results["file:/// URL pattern"].seconds
    ratio = local_files / http
    print(f"- {'PASS' if ratio >= GOAL else 'MISS'}: over HTTP {ratio:.2f}x the speed of the same files read "
          f"locally (file:///, same decoding; goal >= {GOAL}x)")
    print(f"- over HTTP {base_seconds / http:.2f}x a local TIFF stack of the same voxels (no goal: "
          f"a PNG's decoding is in it)")
    print()
    print(f"Machine: {machine()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
