"""Peak memory and time of ingesting one compressed multi-page TIFF, against its size.

Run from the project root:

    .venv/bin/python benchmarks/tiff_memory.py [--size 384MiB] [--quick] [--compression zlib]

In a fresh folder under the system temp dir (or --tmp; removed at the end) it writes one
TIFF of 1024 x 1024 x N uint8 pages (N = size / 1 MiB), deflate-compressed by default,
page by page in a subprocess of its own (so this script never holds the volume), then
runs, each as its own subprocess:

- a bare `python -c "import ndingest.tasks, tensorstore, h5py, pandas, sqlalchemy"`:
  the import floor;
- opening the source (`open_source`: every page header checked, no pixel read);
- `ndingest ingest SPEC` at default settings (block 256 x 256 x 64 voxels), through Verify,
  which reads every block from the source a second time.

Peak RSS is the child's `ru_maxrss` from `os.wait4`: the largest resident set of the
process and of any process it waited for (Luigi's workers included). The goal it checks:
the ingest's peak stays under 450 MiB for a 384 MiB file (a whole-file decode per block,
as before, needs the file's size on top of the floor). Prints a Markdown table.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from measuring import bench_spec, machine, measure

BIN = Path(sys.executable).parent
NDINGEST = str(BIN / "ndingest")
PYTHON = str(BIN / "python")
IMPORT_FLOOR = "import ndingest.tasks, tensorstore, h5py, pandas, sqlalchemy"
MiB = 2**20
GOAL_BYTES, GOAL_VOLUME = 450 * MiB, 384 * MiB
SIDE = 1024

WRITER = """
import sys
import numpy as np
import tifffile

path, pages, compression = sys.argv[1], int(sys.argv[2]), sys.argv[3]
side = {side}
rng = np.random.default_rng(0)
ramp = (np.add.outer(np.arange(side), np.arange(side)) // 8).astype(np.uint8)

def planes():  # compressible like EM: a slowly moving ramp plus a little noise
    for z in range(pages):
        yield ramp + np.uint8(z % 256) + rng.integers(0, 8, size=(side, side), dtype=np.uint8)

tifffile.imwrite(path, planes(), shape=(pages, side, side), dtype=np.uint8,
                 compression=None if compression == "none" else compression)
"""

OPEN = "import sys, time; from ndingest.sources import open_source; t = time.perf_counter(); " \
       "s = open_source(sys.argv[1]); print(time.perf_counter() - t, s.shape_tzyx)"



def parse_size(text: str) -> int:
    units = {"kib": 2**10, "mib": 2**20, "gib": 2**30, "": 1}
    number = text.rstrip("KMGiBkmgib")
    return int(float(number) * units[text[len(number):].lower()])


def mib(n: float) -> str:
    return f"{n / MiB:.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="384MiB", help="voxel bytes of the volume (default 384MiB)")
    parser.add_argument("--quick", action="store_true", help="a 64 MiB volume (overrides --size)")
    parser.add_argument("--compression", default="zlib", help="tifffile compression: zlib (deflate), none, ...")
    parser.add_argument("--tmp", default=None, help="folder for the temporary files (default: system temp)")
    args = parser.parse_args()
    pages = max(64, (64 * MiB if args.quick else parse_size(args.size)) // (SIDE * SIDE))

    workdir = Path(tempfile.mkdtemp(prefix="ndingest-tiff-", dir=args.tmp))
    try:
        tif = workdir / "volume.tif"
        subprocess.run([PYTHON, "-c", WRITER.format(side=SIDE), str(tif), str(pages), args.compression],
                       check=True, cwd=workdir)
        (workdir / "spec.toml").write_text(bench_spec("tiff_memory", "volume.tif"))
        floor = measure([PYTHON, "-c", IMPORT_FLOOR], workdir)
        opened = measure([PYTHON, "-c", OPEN, str(tif)], workdir)
        ingest = measure([NDINGEST, "ingest", "spec.toml"], workdir, sync_first=True)
        file_bytes = tif.stat().st_size
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    volume = pages * SIDE * SIDE
    open_seconds = float(opened.stdout.split()[0])
    print(f"ndingest ingest of one {args.compression} TIFF: {SIDE}x{SIDE}x{pages} uint8 = {mib(volume)} MiB of voxels, "
          f"file {mib(file_bytes)} MiB")
    print()
    print("| step | wall s | peak RSS MiB | above import floor MiB |")
    print("|---|---:|---:|---:|")
    print(f"| import floor | {floor.seconds:.2f} | {mib(floor.peak_rss)} | 0 |")
    print(f"| open_source (every page header; {open_seconds * 1000:.0f} ms inside) | {opened.seconds:.2f} | "
          f"{mib(opened.peak_rss)} | {mib(opened.peak_rss - floor.peak_rss)} |")
    print(f"| `ndingest ingest SPEC` (write + verify) | {ingest.seconds:.2f} | {mib(ingest.peak_rss)} | "
          f"{mib(ingest.peak_rss - floor.peak_rss)} |")
    print()
    if volume == GOAL_VOLUME:
        verdict = "PASS" if ingest.peak_rss < GOAL_BYTES else "MISS"
        print(f"- {verdict}: ingest peak RSS {mib(ingest.peak_rss)} MiB < {mib(GOAL_BYTES)} MiB for 384 MiB of voxels")
    else:
        print("- goal (peak < 450 MiB) is set for 384 MiB of voxels; run with --size 384MiB to check it")
    print()
    print(f"Machine: {machine()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
