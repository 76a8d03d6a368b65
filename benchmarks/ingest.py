"""Speed and peak memory of `ndingest ingest` against a hand-written copy and CloudVolume.

Run from the project root:

    .venv/bin/python benchmarks/ingest.py [--size 1GiB] [--dtype uint8] [--workers 1] [--keep] [--tmp DIR]

In a fresh folder (under --tmp, else the system temp dir; removed at the end unless
--keep) it writes one deterministic volume of --size bytes as an uncompressed HDF5
`image/CUTOUT` (z, y, x) chunked (16, 128, 128): uniform noise over half the value
range plus a smooth x/y/z gradient, so EM-like, cheap to make and not trivially
compressible; uncompressed so that gzip is not what is measured. 1 GiB of uint8 is
1024x1024x1024. It is made slab by slab (never the whole volume) and not timed. Then,
each as its own subprocess, so each has its own peak RSS:

1. baseline copy: a hand-written h5py -> tensorstore copy into a neuroglancer
   precomputed volume with ndingest's layout (chunks 128x128x16, raw encoding), in
   whole-xy slabs one block deep (64 z, whole chunks), tensorstore's default context
   (`file_io_sync` on: an fsync per chunk file; no cache pool). The engine's limit;
2. baseline read-back compare: the copy read back with tensorstore, slab by slab,
   asserted equal to the HDF5 (the copy's equivalent of ndingest's verify);
3. the same copy with `file_io_sync` off and one os.sync() at the end (for information:
   what an fsync per chunk file costs);
4. `ndingest inspect SPEC` before any store exists (scans the window range);
5. `ndingest --debug ingest SPEC --workers N` into a fresh store (inspect of headers,
   catalog, writes, verify; no window-range scan: the blocks give it); its write
   phase is read from the log, as the span from Luigi's first `running IngestBlock`
   to its last `done IngestBlock` (and, beside it, the sum
   of the `wrote N blocks ... in S s` lines of ndingest.tasks);
6. `ndingest verify SPEC` (re-reads every block);
7. CloudVolume (`parallel=1`, `compress=False`, raw) uploading the same slabs, then one
   os.sync(), so its data is as durable as ndingest's and the baseline copy's;
8. the disk floor: one plain file per chunk, each a chunk's size, written with
   open/write/close into one folder, then os.sync() (no ingest into this folder that
   keeps DESIGN.md's one file per chunk can make its data durable faster); beside it,
   the same bytes as one file.

Seconds of the hand-written steps and CloudVolume are their timed loops (the store
opened, every slab moved), without interpreter start-up and imports; ndingest's
commands are whole processes (imports included), so the ratios lean against ndingest.
The "process s" column gives every step's wall time as a process. MB/s is volume
bytes / seconds / 1e6. Peak RSS is the child's `ru_maxrss` from `os.wait4`: the largest
resident set of the child or any process it waited for (with --workers N > 1, Luigi's
forked workers run side by side, so their sum can be up to N times the figure). As in
tutorial_memory.py this script imports nothing heavy, so its own resident set (which a
child inherits at exec) inflates no figure. The goals checked (from the issue): write
phase >= 0.9x the baseline copy; whole ingest >= 0.75x baseline copy + read-back;
whole ingest >= 3x CloudVolume (and, where that is below the disk floor, says so);
ingest peak RSS < 400 MiB for 1 GiB (default settings).

Prints a Markdown table, the goals and the machine.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from measuring import Measured, bench_spec, machine
from measuring import measure as measure_once
from ndingest.blocks import Vec3, chunk_shape  # pure: no numpy, no I/O
from ndingest.spec import DEFAULT_BLOCK_CHUNKS

if TYPE_CHECKING:  # the parent never imports tensorstore
    import tensorstore

BIN = Path(sys.executable).parent
NDINGEST = str(BIN / "ndingest")
PYTHON = str(BIN / "python")
ITEMSIZE = {"uint8": 1, "uint16": 2, "uint32": 4, "uint64": 8, "float32": 4}
RESOLUTION = (32.0, 32.0, 40.0)  # the tutorial's scale 3: zslices chunks are 128x128x16
HDF5_CHUNK_ZYX = (16, 128, 128)
HDF5_DATASET = "image/CUTOUT"
MiB = 2**20
UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}



# --- the volume -----------------------------------------------------------------------

@dataclass(frozen=True)
class Volume:
    """What every step works on: the source, its shape, and the precomputed layout."""

    shape_zyx: tuple[int, int, int]
    dtype: str
    chunk_xyz: tuple[int, int, int]
    slab_z: int  # z depth of one read/write slab: one block deep, whole chunks
    source: str

    @property
    def nbytes(self) -> int:
        z, y, x = self.shape_zyx
        return x * y * z * ITEMSIZE[self.dtype]

    def slabs(self) -> list[tuple[int, int]]:
        z = self.shape_zyx[0]
        return [(z0, min(z, z0 + self.slab_z)) for z0 in range(0, z, self.slab_z)]

    def info(self) -> dict:
        """The precomputed `info` ndingest writes for this volume (one image scale, raw)."""
        z, y, x = self.shape_zyx
        return {
            "@type": "neuroglancer_multiscale_volume", "type": "image", "data_type": self.dtype,
            "num_channels": 1,
            "scales": [{"key": "_".join(f"{r:g}" for r in RESOLUTION), "resolution": list(RESOLUTION),
                        "voxel_offset": [0, 0, 0], "size": [x, y, z], "chunk_sizes": [list(self.chunk_xyz)],
                        "encoding": "raw"}],
        }

    @classmethod
    def load(cls, workdir: Path) -> "Volume":
        raw = json.loads((workdir / "volume.json").read_text())
        return cls(tuple(raw["shape_zyx"]), raw["dtype"], tuple(raw["chunk_xyz"]), raw["slab_z"], raw["source"])

    def save(self, workdir: Path) -> None:
        (workdir / "volume.json").write_text(json.dumps(asdict(self)))


def parse_size(text: str) -> int:
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", text)
    if not match or match.group(2).lower() not in UNITS:
        raise argparse.ArgumentTypeError(f"{text!r}: a size such as 1GiB, 256MiB or 500MB")
    return int(float(match.group(1)) * UNITS[match.group(2).lower()])


def volume_shape(nbytes: int, itemsize: int) -> tuple[int, int, int]:
    """(z, y, x): x = y a power of two (1024 unless the volume is small or huge), z the rest."""
    voxels = max(1, nbytes // itemsize)
    side = 1024
    while side > 128 and side * side * 16 > voxels:
        side //= 2
    while (2 * side) ** 3 <= voxels:
        side *= 2
    return (max(1, voxels // (side * side)), side, side)


# --- the steps, each run as `python benchmarks/ingest.py --step NAME --workdir DIR` ----------

def _seconds_out(seconds: float, **more: float) -> None:
    """What a step reports to the parent: its timed part (and any `more`), as the last line of stdout."""
    print(json.dumps({"seconds": seconds, **more}))


def step_generate(vol: Volume, workdir: Path) -> None:
    """Write the source slab by slab: noise over half the range plus a smooth gradient."""
    import h5py
    import numpy as np

    z, y, x = vol.shape_zyx
    dtype = np.dtype(vol.dtype)
    rng = np.random.default_rng(0)
    if dtype.kind == "f":
        half = 0.5
    else:
        half = (int(np.iinfo(dtype).max) + 1) // 2
    yy, xx = np.mgrid[0:y, 0:x]
    gradient_xy = ((xx + yy) / max(1, x + y - 2) * (half / 2)).astype(dtype)  # [0, half/2]
    chunks = tuple(min(c, s) for c, s in zip(HDF5_CHUNK_ZYX, vol.shape_zyx))
    started = time.perf_counter()
    with h5py.File(workdir / vol.source, "w") as f:
        ds = f.create_dataset(HDF5_DATASET, shape=vol.shape_zyx, dtype=dtype, chunks=chunks)
        for z0, z1 in vol.slabs():
            if dtype.kind == "f":
                slab = rng.random((z1 - z0, y, x), dtype=dtype) * dtype.type(half)
            else:
                slab = rng.integers(0, half, size=(z1 - z0, y, x), dtype=dtype)
            for i, zi in enumerate(range(z0, z1)):
                slab[i] += gradient_xy
                slab[i] += dtype.type(zi / max(1, z - 1) * (half / 2) * 0.999)  # below max: no wrap
            ds[z0:z1] = slab
    _seconds_out(time.perf_counter() - started)


def _open_precomputed(out: Path, context: dict | None, *, create_info: dict | None) -> tensorstore.TensorStore:
    import tensorstore as ts

    if create_info is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "info").write_text(json.dumps(create_info, indent=1))
    spec: dict = {"driver": "neuroglancer_precomputed", "kvstore": {"driver": "file", "path": f"{out}/"},
                  "scale_index": 0, "open": True}
    if context is not None:
        spec["context"] = context
    return ts.open(spec).result()


def step_copy(vol: Volume, workdir: Path, out: Path, fsync_each_file: bool) -> None:
    """h5py -> tensorstore, one slab (whole chunks) at a time. With `fsync_each_file`,
    tensorstore's default context (it fsyncs every chunk file); else `file_io_sync` off
    and one os.sync() at the end, so the copy is as durable either way."""
    import h5py

    started = time.perf_counter()
    context = None if fsync_each_file else {"file_io_sync": False}
    store = _open_precomputed(out, context, create_info=vol.info())
    with h5py.File(workdir / vol.source, "r") as f:
        ds = f[HDF5_DATASET]
        for z0, z1 in vol.slabs():
            slab = ds[z0:z1]  # (z, y, x) C order
            store[:, :, z0:z1, 0].write(slab.T).result()  # precomputed is x, y, z: a view
    if not fsync_each_file:
        os.sync()
    _seconds_out(time.perf_counter() - started)


def step_readback(vol: Volume, workdir: Path, out: Path) -> None:
    """Read the copy back slab by slab (F order, transposed views) and compare with the HDF5."""
    import h5py
    import numpy as np

    started = time.perf_counter()
    store = _open_precomputed(out, None, create_info=None)
    with h5py.File(workdir / vol.source, "r") as f:
        ds = f[HDF5_DATASET]
        for z0, z1 in vol.slabs():
            stored = store[:, :, z0:z1, 0].read(order="F").result().T
            if not np.array_equal(stored, ds[z0:z1]):
                sys.exit(f"baseline read-back: z {z0}-{z1} differs from the source")
    _seconds_out(time.perf_counter() - started)


def step_cloudvolume(vol: Volume, workdir: Path, out: Path) -> None:
    """CloudVolume uploads the same slabs (parallel=1: DESIGN.md's pitfall; raw, uncompressed)."""
    import h5py
    import numpy as np
    from cloudvolume import CloudVolume

    z, y, x = vol.shape_zyx
    started = time.perf_counter()
    info = CloudVolume.create_new_info(
        num_channels=1, layer_type="image", data_type=vol.dtype, encoding="raw", resolution=list(RESOLUTION),
        voxel_offset=[0, 0, 0], chunk_size=list(vol.chunk_xyz), volume_size=[x, y, z])
    cv = CloudVolume(f"file://{out}", info=info, parallel=1, compress=False, progress=False)
    cv.commit_info()
    with h5py.File(workdir / vol.source, "r") as f:
        ds = f[HDF5_DATASET]
        for z0, z1 in vol.slabs():
            cv[:, :, z0:z1] = ds[z0:z1].T
        loop = time.perf_counter() - started
        os.sync()  # as durable as ndingest's write phase and the baseline copies
        seconds = time.perf_counter() - started
        # a cheap check, not timed: one chunk column in the middle reads back equal
        x0, y0 = (x // 2) // vol.chunk_xyz[0] * vol.chunk_xyz[0], (y // 2) // vol.chunk_xyz[1] * vol.chunk_xyz[1]
        x1, y1 = min(x, x0 + vol.chunk_xyz[0]), min(y, y0 + vol.chunk_xyz[1])
        back = CloudVolume(f"file://{out}", parallel=1, progress=False)[x0:x1, y0:y1, 0:z][..., 0]
        if not np.array_equal(np.asarray(back).T, ds[:, y0:y1, x0:x1]):
            sys.exit("CloudVolume upload: read-back differs from the source")
    _seconds_out(seconds, loop=loop)


def step_floor(vol: Volume, workdir: Path) -> None:
    """The disk's own limit for this layout: as many files as the volume has chunks, each
    of a chunk's size, written plainly (open, write, close) into one folder, then os.sync().
    No ingest into this folder that keeps one file per chunk can make its data durable
    faster; the disk's speed for one big file is printed beside it for comparison."""
    z, y, x = vol.shape_zyx
    cx, cy, cz = vol.chunk_xyz
    chunk_bytes = cx * cy * cz * ITEMSIZE[vol.dtype]
    data = os.urandom(chunk_bytes)
    folder = workdir / "floor"
    folder.mkdir()
    started = time.perf_counter()
    for z0 in range(0, z, cz):
        for y0 in range(0, y, cy):
            for x0 in range(0, x, cx):
                (folder / f"{x0}-{x0 + cx}_{y0}-{y0 + cy}_{z0}-{z0 + cz}").write_bytes(data)
    os.sync()
    files = time.perf_counter() - started
    shutil.rmtree(folder)
    os.sync()
    started = time.perf_counter()
    with open(workdir / "floor.bin", "wb", buffering=0) as f:
        for _ in range(vol.nbytes // chunk_bytes):
            f.write(data)
        os.fsync(f.fileno())
    one_file = time.perf_counter() - started
    (workdir / "floor.bin").unlink()
    _seconds_out(files, one_file=one_file)


def run_step(args: argparse.Namespace) -> int:
    workdir = Path(args.workdir)
    vol = Volume.load(workdir)
    out = Path(args.out) if args.out else workdir
    if args.step == "generate":
        step_generate(vol, workdir)
    elif args.step == "copy":
        step_copy(vol, workdir, out, fsync_each_file=args.sync == "default")
    elif args.step == "readback":
        step_readback(vol, workdir, out)
    elif args.step == "cloudvolume":
        step_cloudvolume(vol, workdir, out)
    elif args.step == "floor":
        step_floor(vol, workdir)
    return 0


# --- the parent: runs and measures the steps ---------------------------------------------

def measure(argv: list[str], cwd: Path) -> Measured:
    """Each step starts with the disk flushed: the previous step's writeback is not its cost."""
    return measure_once(argv, cwd, sync_first=True)


def reported_seconds(m: Measured, key: str = "seconds") -> float:
    """The timed part a step printed as its last stdout line."""
    return float(json.loads(m.stdout.strip().splitlines()[-1])[key])


def median_run(runs: list[Measured], *, reported: bool) -> Measured:
    """The run with the median time (timed part or whole process), with the largest peak RSS of all."""
    ordered = sorted(runs, key=lambda m: reported_seconds(m) if reported else m.seconds)
    middle = ordered[len(ordered) // 2]
    return Measured(middle.seconds, max(m.peak_rss for m in runs), middle.stdout, middle.stderr)


def step_argv(step: str, workdir: Path, *extra: str) -> list[str]:
    return [PYTHON, str(Path(__file__).resolve()), "--step", step, "--workdir", str(workdir), *extra]


LOG_TIME = r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) "
LUIGI_TASK = re.compile(LOG_TIME + r"luigi-interface \w+: .*\b(running|done)\s+IngestBlock\(", re.M)
SHARD_LINE = re.compile(LOG_TIME + r"ndingest\.tasks INFO: IngestBlock_\S+: wrote (\d+) blocks "
                        r"\((\d+) already marked\), ([0-9.]+) MB in ([0-9.]+) s$", re.M)


@dataclass
class WritePhase:
    span_seconds: float  # Luigi's first `running IngestBlock` to its last `done IngestBlock`
    shard_seconds: float  # the sum of ndingest's per-shard `in S s` (0.1 s resolution each)
    shards: int
    blocks: int


def write_phase(log: str) -> WritePhase:
    def at(stamp: str) -> float:
        return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()

    events = [(at(stamp), what) for stamp, what in LUIGI_TASK.findall(log)]
    shards = SHARD_LINE.findall(log)
    starts = [t for t, what in events if what == "running"]
    ends = [t for t, what in events if what == "done"]
    if not starts or not ends or not shards:
        sys.exit("could not find the IngestBlock lines in the ingest's --debug log; has its format changed?")
    return WritePhase(max(ends) - min(starts), sum(float(s[4]) for s in shards), len(shards),
                      sum(int(s[1]) for s in shards))


def bench(args: argparse.Namespace) -> int:
    itemsize = ITEMSIZE[args.dtype]
    chunk = chunk_shape("zslices", RESOLUTION, 0)
    block = chunk * Vec3(*DEFAULT_BLOCK_CHUNKS)
    vol = Volume(volume_shape(args.size, itemsize), args.dtype, tuple(chunk), block.z, "source.h5")
    workdir = Path(tempfile.mkdtemp(prefix="ndingest-ingest-bench-", dir=args.tmp))
    spec = workdir / "bench.toml"
    drop = (lambda path: None) if args.keep else (lambda path: shutil.rmtree(path, ignore_errors=True))
    try:
        vol.save(workdir)
        spec.write_text(bench_spec("ingest_bench", "source.h5", resolution=RESOLUTION,
                                   channel_extra=f'datatype = "{args.dtype}"'))
        generate = measure(step_argv("generate", workdir), workdir)

        runs: dict[str, list[Measured]] = {k: [] for k in ("floor", "copy", "readback", "nosync", "inspect",
                                                           "ingest", "verify", "cloudvolume")}
        statuses = []
        for _ in range(args.rounds):  # interleaved, so a slow spell of the disk hits every step alike
            runs["floor"].append(measure(step_argv("floor", workdir), workdir))
            runs["copy"].append(measure(step_argv("copy", workdir, "--out", str(workdir / "baseline")), workdir))
            runs["readback"].append(measure(step_argv("readback", workdir, "--out", str(workdir / "baseline")),
                                            workdir))
            shutil.rmtree(workdir / "baseline", ignore_errors=True)
            runs["nosync"].append(measure(step_argv("copy", workdir, "--out", str(workdir / "baseline_nosync"),
                                                    "--sync", "end"), workdir))
            shutil.rmtree(workdir / "baseline_nosync", ignore_errors=True)
            shutil.rmtree(workdir / "store", ignore_errors=True)
            runs["inspect"].append(measure([NDINGEST, "inspect", str(spec)], workdir))  # no store: scans the source
            runs["ingest"].append(measure([NDINGEST, "--debug", "ingest", str(spec), "--workers", str(args.workers)],
                                          workdir))
            runs["verify"].append(measure([NDINGEST, "verify", str(spec)], workdir))
            statuses.append(json.loads(measure([NDINGEST, "status", "--json", str(spec)], workdir).stdout))
            runs["cloudvolume"].append(measure(step_argv("cloudvolume", workdir, "--out", str(workdir / "cloudvolume")),
                                               workdir))
            shutil.rmtree(workdir / "cloudvolume", ignore_errors=True)
        floor, copy, readback, nosync, cloudvolume = (median_run(runs[k], reported=True)
                                                      for k in ("floor", "copy", "readback", "nosync", "cloudvolume"))
        inspect, ingest, verify = (median_run(runs[k], reported=False) for k in ("inspect", "ingest", "verify"))
        status = statuses[-1]
        if not args.keep:
            drop(workdir / "store")
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    image = status["channels"]["image"]
    if image["done"] != image["total"] or image["verified"] != image["total"]:
        sys.exit(f"ingest did not finish: {image}")
    if any(s["channels"]["image"] != image for s in statuses):
        sys.exit(f"rounds disagree: {statuses}")
    phase = sorted((write_phase(m.stderr) for m in runs["ingest"]), key=lambda p: p.span_seconds)[len(runs["ingest"]) // 2]
    own_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    nbytes = vol.nbytes
    base = reported_seconds(copy)
    base_rb = base + reported_seconds(readback)

    def row(what: str, seconds: float, process: float | None, peak: int | None) -> str:
        process_s = f"{process:.2f}" if process is not None else "-"
        rss = f"{peak / MiB:.0f}" if peak is not None else "-"
        return (f"| {what} | {seconds:.2f} | {process_s} | {nbytes / seconds / 1e6:.0f} | {rss} | "
                f"{base / seconds:.2f} |")

    z, y, x = vol.shape_zyx
    blocks = image["total"]
    print(f"Volume: {x}x{y}x{z} {vol.dtype} = {nbytes:,} bytes ({nbytes / MiB:.0f} MiB), uncompressed HDF5 "
          f"chunked {HDF5_CHUNK_ZYX} (z, y, x); precomputed chunks {chunk.x}x{chunk.y}x{chunk.z}, raw; "
          f"ndingest blocks {block.x}x{block.y}x{block.z} ({blocks} blocks, {phase.shards} shards), "
          f"--workers {args.workers}; median of {args.rounds} interleaved rounds; baseline and CloudVolume slabs {x}x{y}x{vol.slab_z}. "
          f"Source written in {reported_seconds(generate):.1f} s (not timed below).")
    print()
    print("| step | seconds | process s | MB/s | peak RSS MiB | speed vs baseline copy |")
    print("|---|---:|---:|---:|---:|---:|")
    print(row("disk floor: one plain file per chunk (open, write, close), then os.sync()", reported_seconds(floor),
              None, None))
    print(row("(the same bytes as one file, one fsync; for information)", reported_seconds(floor, "one_file"),
              None, None))
    print(row("baseline copy: h5py -> tensorstore, defaults (file_io_sync on)", base, copy.seconds,
              copy.peak_rss))
    print(row("baseline read-back compare (tensorstore vs h5py)", reported_seconds(readback),
              readback.seconds, readback.peak_rss))
    print(row("baseline copy + read-back compare", base_rb, copy.seconds + readback.seconds,
              max(copy.peak_rss, readback.peak_rss)))
    print(row("(baseline copy, file_io_sync off + one os.sync() at the end; for information)",
              reported_seconds(nosync), nosync.seconds, nosync.peak_rss))
    print(row("`ndingest inspect SPEC` (window-range scan, no store yet)", inspect.seconds,
              inspect.seconds, inspect.peak_rss))
    print(row(f"ndingest write phase (Luigi span of {phase.shards} IngestBlock tasks)", phase.span_seconds,
              None, None))
    print(row("`ndingest ingest SPEC` (whole pipeline: inspect, catalog, write, verify)", ingest.seconds,
              ingest.seconds, ingest.peak_rss))
    print(row("`ndingest verify SPEC` (re-reads every block)", verify.seconds, verify.seconds,
              verify.peak_rss))
    print(row("CloudVolume upload (parallel=1, compress=False) + one os.sync()", reported_seconds(cloudvolume),
              cloudvolume.seconds, cloudvolume.peak_rss))
    print(row("(CloudVolume upload loop alone, before its os.sync(); for information)",
              reported_seconds(cloudvolume, "loop"), None, None))
    print()
    print(f"Write phase: Luigi span {phase.span_seconds:.2f} s; sum of ndingest's per-shard times "
          f"{phase.shard_seconds:.1f} s ({phase.blocks} blocks over {phase.shards} shards).")
    print()

    def goal(name: str, value: float, target: float, unit: str = "x", below: bool = False) -> str:
        ok = value < target if below else value >= target
        sign = "<" if below else ">="
        shown = f"{value:.0f}" if unit == " MiB" else f"{value:.3f}"
        return f"- {name}: {shown}{unit} (goal {sign} {target:g}{unit}): {'PASS' if ok else 'MISS'}"

    ingest_mib = ingest.peak_rss / MiB
    print("Goals:")
    print(goal("write phase vs baseline copy (speed ratio)", base / phase.span_seconds, 0.9))
    print(f"  (for information: vs the copy with one os.sync() at the end, "
          f"{reported_seconds(nosync) / phase.span_seconds:.3f}x)")
    print(goal("whole ingest vs baseline copy + read-back compare (speed ratio)", base_rb / ingest.seconds,
               0.75))
    cv = reported_seconds(cloudvolume)
    print(goal("whole ingest vs CloudVolume upload (speed ratio)", cv / ingest.seconds, 3))
    if cv / 3 < reported_seconds(floor):
        print(f"  (out of reach on this disk: 3x CloudVolume means the whole ingest in {cv / 3:.2f} s, but "
              f"writing its chunk files durably takes {reported_seconds(floor):.2f} s by itself, before "
              f"verify's reads of source and store)")
    print(f"  (for information, like for like: write phase vs CloudVolume upload, both durable: "
          f"{cv / phase.span_seconds:.3f}x)")
    per_process = ", largest single process" if args.workers > 1 else ""
    print(goal(f"ingest peak RSS, {nbytes / MiB:.0f} MiB volume, --workers {args.workers}{per_process} "
               f"(goal stated for 1 GiB, defaults)", ingest_mib, 400, unit=" MiB", below=True))
    print()
    print(f"Machine: {machine()}; temp dir {Path(args.tmp or tempfile.gettempdir())}")
    if args.keep:
        print(f"Kept {workdir}")
    if own_peak >= min(m.peak_rss for m in (copy, readback, inspect, ingest, verify, cloudvolume)):
        print(f"warning: this script's own peak RSS ({own_peak / MiB:.0f} MiB) may inflate the children's",
              file=sys.stderr)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=parse_size, default=2**30, help="volume size in bytes, e.g. 1GiB (default), "
                        "256MiB")
    parser.add_argument("--dtype", choices=sorted(ITEMSIZE), default="uint8", help="voxel type (default uint8)")
    parser.add_argument("--workers", type=int, default=1, help="ndingest ingest --workers (default 1)")
    parser.add_argument("--rounds", type=int, default=3, help="measure every step N times, interleaved; report "
                        "the median time and the largest peak RSS (default 3)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder and every output")
    parser.add_argument("--tmp", metavar="DIR", help="where to make the temporary folder (default: system temp dir)")
    parser.add_argument("--step", choices=("generate", "copy", "readback", "cloudvolume", "floor"), help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--sync", choices=("default", "end"), default="default", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        return run_step(args)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    return bench(args)


if __name__ == "__main__":
    sys.exit(main())
