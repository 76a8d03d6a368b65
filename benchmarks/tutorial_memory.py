"""Time and peak memory of the tutorial ingest, against the volume's size.

Run from the project root:

    .venv/bin/python benchmarks/tutorial_memory.py [--runs N] [--workers N]

In a fresh folder under the system temp dir (removed at the end) it writes the
tutorial sample (`ndingest sample`), copies configs/kasthuri11_scale3.toml beside it,
and runs, each as its own subprocess:

- a bare `python -c "import ndingest.tasks, tensorstore, h5py, pandas, sqlalchemy"`:
  the import floor, what any ndingest process costs before it reads a voxel;
- `ndingest inspect SPEC` before any store exists (scans both sources' window range);
- `ndingest ingest SPEC` into a fresh store (N runs; median time, largest peak RSS);
- `ndingest ingest SPEC` again on the finished store (nothing left to write);
- `ndingest verify SPEC` (re-reads every block).

Peak RSS is the child's `ru_maxrss` from `os.wait4` (KiB on Linux): the largest
resident set of the child and of any process it waited for (a maximum, not a sum).
On Linux a child's ru_maxrss also counts the parent's resident set at the moment it
exec'ed, so this script imports nothing heavy itself (stdlib and two pure ndingest
modules) and checks its own peak stays below every figure it reports.

Prints a Markdown table and the machine it ran on. Dependency-free beyond the venv.
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from measuring import Measured, machine, measure
from ndingest.blocks import Box, Vec3, chunk_shape, plan_blocks  # pure: no numpy, no I/O
from ndingest.spec import DEFAULT_BLOCK_CHUNKS

ROOT = Path(__file__).resolve().parent.parent
SPEC_SOURCE = ROOT / "configs" / "kasthuri11_scale3.toml"
BIN = Path(sys.executable).parent
NDINGEST = str(BIN / "ndingest")
PYTHON = str(BIN / "python")
IMPORT_FLOOR = "import ndingest.tasks, tensorstore, h5py, pandas, sqlalchemy"
ITEMSIZE = {"uint8": 1, "uint16": 2, "uint32": 4, "uint64": 8, "float32": 4}
MiB = 2**20


def volume_figures(workdir: Path, spec_text: str) -> tuple[int, str, list[str]]:
    """Voxel bytes of both channels (from `ndingest inspect --json` of each source), the
    largest block's bytes and a line describing it."""
    import tomllib

    spec = tomllib.loads(spec_text)
    total, lines, largest = 0, [], (0, "")
    ds = spec["dataset"]
    chunk = chunk_shape(ds["scaling_option"], tuple(ds["voxel_resolution"]), 0)
    block_chunks = Vec3(*DEFAULT_BLOCK_CHUNKS)
    for name, ch in spec["channels"].items():
        info = json.loads(subprocess.run([NDINGEST, "inspect", "--json", ch["source"]], cwd=workdir,
                                         capture_output=True, text=True, check=True).stdout)
        size = Vec3(info["x_size"], info["y_size"], info["z_size"])
        t = info["time_range"][1] - info["time_range"][0] + 1
        itemsize = ITEMSIZE[info["datatype"]]
        nbytes = size.volume * t * itemsize
        total += nbytes
        lines.append(f"{name}: {size.x}x{size.y}x{size.z} {info['datatype']} = {nbytes:,} bytes")
        extent = Box.from_shape(Vec3(*ds["offset"]), size)
        for box in plan_blocks(extent, chunk, block_chunks):
            if box.shape.volume * itemsize > largest[0]:
                s = box.shape
                largest = (box.shape.volume * itemsize, f"{s.x}x{s.y}x{s.z} {info['datatype']} ({name})")
    nominal = chunk * block_chunks
    lines.append(f"block = chunk {chunk.x}x{chunk.y}x{chunk.z} x block_chunks {tuple(block_chunks)} = "
                 f"{nominal.x}x{nominal.y}x{nominal.z} voxels; largest block in this volume: "
                 f"{largest[1]} = {largest[0]:,} bytes")
    return total, largest[0], lines


def mib(n: float) -> str:
    return f"{n / MiB:.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="fresh ingests to time (default 3)")
    parser.add_argument("--workers", type=int, default=1, help="ndingest ingest --workers (default 1)")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="ndingest-bench-"))
    try:
        measure([NDINGEST, "sample", "data"], workdir)
        spec_text = SPEC_SOURCE.read_text()
        spec = workdir / SPEC_SOURCE.name
        spec.write_text(spec_text)
        volume_bytes, block_bytes, volume_lines = volume_figures(workdir, spec_text)

        floor = [measure([PYTHON, "-c", IMPORT_FLOOR], workdir) for _ in range(args.runs)]
        inspect = measure([NDINGEST, "inspect", str(spec)], workdir)  # no store yet: scans both sources
        ingest_argv = [NDINGEST, "ingest", str(spec), "--workers", str(args.workers)]
        ingests = []
        for _ in range(args.runs):
            shutil.rmtree(workdir / "store", ignore_errors=True)
            ingests.append(measure(ingest_argv, workdir))
        rerun = measure(ingest_argv, workdir)
        verify = measure([NDINGEST, "verify", str(spec)], workdir)
        status = json.loads(measure([NDINGEST, "status", "--json", str(spec)], workdir).stdout)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    for name, s in status["channels"].items():
        if s["done"] != s["total"] or s["verified"] != s["total"]:
            sys.exit(f"channel {name} not complete after the ingest: {s}")
    own_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    floor_rss = max(m.peak_rss for m in floor)
    if own_peak >= min(floor_rss, *(m.peak_rss for m in ingests)):
        print(f"warning: this script's own peak RSS ({mib(own_peak)} MiB) may inflate the children's", file=sys.stderr)

    def row(what: str, runs: list[Measured]) -> str:
        seconds = statistics.median(m.seconds for m in runs)
        peak = max(m.peak_rss for m in runs)
        above = peak - floor_rss
        ratios = f"{above / volume_bytes:.2f} | {above / block_bytes:.1f}" if above > 0 else "- | -"
        return f"| {what} | {seconds:.2f} | {mib(peak)} | {mib(above)} | {ratios} |"

    blocks = sum(s["total"] for s in status["channels"].values())
    n = f"median of {args.runs}" if args.runs > 1 else "1 run"
    print(f"ndingest tutorial ingest: {blocks} blocks over {len(status['channels'])} channels, "
          f"--workers {args.workers}")
    print()
    print("| step | wall s | peak RSS MiB | above import floor MiB | / volume bytes | / largest block |")
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| import floor: `python -c \"{IMPORT_FLOOR}\"` ({n}) | "
          f"{statistics.median(m.seconds for m in floor):.2f} | {mib(floor_rss)} | 0 | - | - |")
    print(row("`ndingest inspect SPEC` (window-range scan of both sources)", [inspect]))
    print(row(f"`ndingest ingest SPEC`, fresh store ({n})", ingests))
    print(row("`ndingest ingest SPEC` again (nothing left to do)", [rerun]))
    print(row("`ndingest verify SPEC` (re-reads every block)", [verify]))
    print()
    print(f"Volume: {volume_bytes:,} voxel bytes ({mib(volume_bytes)} MiB) in both channels; "
          f"largest block {block_bytes:,} bytes ({mib(block_bytes)} MiB).")
    for line in volume_lines:
        print(f"- {line}")
    print()
    print(f"Machine: {machine()}, temp dir {tempfile.gettempdir()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
