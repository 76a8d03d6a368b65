"""Speed and peak memory of ndingest's resolution hierarchy against one read of level 0
and against other pyramid builders.

Run from the project root:

    .venv/bin/python benchmarks/pyramid.py [--size 512MiB] [--quick] [--rounds 1] [--keep] [--tmp DIR]

In a fresh folder (under --tmp, else the system temp dir; removed at the end unless
--keep) it writes two deterministic volumes as uncompressed HDF5 cutouts (z, y, x):
an image of --size bytes of uint8 (noise plus a gradient, as in ingest.py; 512 MiB is
x 1024, y 2048, z 256) and labels of half that many bytes of uint32 (x 1024, y 2048,
z 32 at 512 MiB: blobs of 16x16x4 voxels with ids drawn from a few thousand, a quarter
of them zero, so ties and zeros occur). Not timed. Then, per volume, each as its own
subprocess so each has its own peak RSS (the child's `ru_maxrss` from `os.wait4`):

1. `ndingest ingest` with `scaling_levels = 0` into a fresh store (zslices, or
   isotropic with --scaling isotropic);
2. one tensorstore read of that store's level 0, the whole volume in F order: the unit
   every other figure is divided by;
3. `ndingest ingest` with `scaling_levels = 3` into another fresh store; the difference
   from step 1 is what the three levels cost, built and verified;
4. anchors, each building the same three levels from step 1's level 0 into a folder of
   its own, file_io_sync off and one os.sync() at the end (as durable as ndingest's
   batches): tensorstore's `downsample` driver (image: "mean"; labels: "mode", which
   counts zeros), CloudVolume + tinybrain (if installed; image: averaging; labels:
   `downsample_segmentation`, whose ties go by position), and, for the image, a careful
   numpy mean (strided views, uint16 sums, slabs one level-2 chunk deep). None of the
   anchors verifies what it built, and none computes the annotation rule of DESIGN.md.

Anchors' seconds are their timed loops (opened, built, synced) without interpreter
start-up; ndingest's are whole processes, so the ratios lean against ndingest. The goals
(issue 16): image levels <= 3x the read, labels <= 3.3x, peak RSS <= 400 MiB.

Prints a Markdown table per volume, the goals and the machine.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from measuring import NDINGEST, PYTHON, MiB, bench_spec, machine, median, parse_size, reported_seconds, seconds_out
from measuring import measure_synced as measure
from measuring.stores import NO_CACHE, open_precomputed
from measuring.volumes import generate_kind, wide_shape
from ndingest.blocks import chunk_shape  # pure: no numpy, no I/O

RESOLUTION = (32.0, 32.0, 40.0)  # zslices chunks: 128x128x16 at levels 0-1, 64^3 above
LEVELS = 3
SCALING = {"option": "zslices"}  # set from --scaling, in the parent and in every step
KINDS = {  # kind: (channel type, dtype, itemsize, share of --size, HDF5 dataset, goal x the read)
    "image": ("image", "uint8", 1, 1.0, "image/CUTOUT", 3.0),
    "labels": ("annotation", "uint32", 4, 0.5, "annotation/CUTOUT", 3.3),
}
RSS_GOAL_MIB = 400


def z_factor() -> int:
    return 2 if SCALING["option"] == "isotropic" else 1


def slab_depth(z: int) -> int:
    """Level-0 z planes that make whole chunks at every level (capped at the volume's depth)."""
    return min(z, chunk_shape(SCALING["option"], RESOLUTION, LEVELS).z * z_factor() ** LEVELS)


def level_scales(shape_zyx: tuple[int, int, int]) -> list[dict]:
    """The precomputed scales of level 0..LEVELS, as ndingest lays them out (offset 0)."""
    z, y, x = shape_zyx
    scales = []
    for level in range(LEVELS + 1):
        f = 2**level
        fz = z_factor() ** level
        res = [RESOLUTION[0] * f, RESOLUTION[1] * f, RESOLUTION[2] * fz]
        scales.append({"key": "_".join(f"{r:g}" for r in res), "resolution": res, "voxel_offset": [0, 0, 0],
                       "size": [-(-x // f), -(-y // f), -(-z // fz)], "encoding": "raw",
                       "chunk_sizes": [list(chunk_shape(SCALING["option"], RESOLUTION, level))]})
    return scales


# --- the steps, each run as `python benchmarks/pyramid.py --step NAME --kind K --workdir DIR` ---

def _open(path: Path, level: int, *, sync: bool = True):
    return open_precomputed(path, {**NO_CACHE, "file_io_sync": sync}, level=level)


def _out_volume(out: Path, level0: Path) -> None:
    """An empty precomputed volume with level 0's info and three more scales."""
    info = json.loads((level0 / "info").read_text())
    z = info["scales"][0]["size"][2]
    y, x = info["scales"][0]["size"][1], info["scales"][0]["size"][0]
    info["scales"] = level_scales((z, y, x))
    out.mkdir(parents=True)
    (out / "info").write_text(json.dumps(info))


def step_read(level0: Path) -> None:
    """One tensorstore read of level 0, the whole volume, F order."""
    started = time.perf_counter()
    data = _open(level0, 0)[..., 0].read(order="F").result()
    seconds = time.perf_counter() - started
    seconds_out(seconds, voxels=int(data.size))


def step_tensorstore(kind: str, level0: Path, out: Path) -> None:
    """tensorstore's downsample driver, level by level, each from the one written below."""
    import tensorstore as ts

    started = time.perf_counter()
    _out_volume(out, level0)
    method = "mean" if kind == "image" else "mode"
    for level in range(1, LEVELS + 1):
        below = _open(level0 if level == 1 else out, level - 1, sync=False)
        _open(out, level, sync=False).write(ts.downsample(below, [2, 2, z_factor(), 1], method)).result()
    os.sync()
    seconds_out(time.perf_counter() - started)


def step_tinybrain(kind: str, level0: Path, out: Path) -> None:
    """CloudVolume reads slabs one level-2 chunk deep, tinybrain makes three levels, CloudVolume writes them."""
    import tinybrain
    from cloudvolume import CloudVolume

    started = time.perf_counter()
    _out_volume(out, level0)
    source = CloudVolume(f"file://{level0}", parallel=1, progress=False)
    targets = [CloudVolume(f"file://{out}", mip=level, parallel=1, progress=False, compress=False)
               for level in range(LEVELS + 1)]
    x, y, z = source.bounds.size3()
    depth = slab_depth(z)
    for z0 in range(0, z, depth):
        z1 = min(z, z0 + depth)
        slab = source[:, :, z0:z1]
        if kind == "image":
            mips = tinybrain.downsample_with_averaging(slab, (2, 2, z_factor()), num_mips=LEVELS)
        else:
            mips = tinybrain.downsample_segmentation(slab, (2, 2, z_factor()), num_mips=LEVELS)
        for level, mip in enumerate(mips, start=1):
            zf = z_factor() ** level
            targets[level][:, :, z0 // zf:-(-z1 // zf)] = mip
    os.sync()
    seconds_out(time.perf_counter() - started)


def step_numpy(level0: Path, out: Path) -> None:
    """A careful numpy mean: slabs one level-2 chunk deep, strided views summed in uint16."""
    import numpy as np

    started = time.perf_counter()
    _out_volume(out, level0)
    source = _open(level0, 0)
    targets = [_open(out, level, sync=False) for level in range(LEVELS + 1)]
    z = source.shape[2]
    depth, fz = slab_depth(z), z_factor()
    for z0 in range(0, z, depth):
        z1 = min(z, z0 + depth)
        voxels = source[:, :, z0:z1, 0].read(order="F").result().T  # (z, y, x), a view
        writes = []
        for level in range(1, LEVELS + 1):  # sizes are even here: x, y (and z) are powers of two
            total = voxels[0::fz, 0::2, 0::2].astype(np.uint16)
            for dz in range(fz):
                for dy in range(2):
                    for dx in range(2):
                        if dz or dy or dx:
                            total += voxels[dz::fz, dy::2, dx::2]
            total += 2 * fz
            total //= 4 * fz
            voxels = total.astype(np.uint8)
            zf = fz**level
            writes.append(targets[level][:, :, z0 // zf:z1 // zf, 0].write(voxels.T))
        for w in writes:
            w.result()
    os.sync()
    seconds_out(time.perf_counter() - started)


def run_step(args: argparse.Namespace) -> int:
    workdir = Path(args.workdir)
    level0 = workdir / args.kind / "store0" / "pyramid_bench" / "pyramid_bench" / args.kind
    out = workdir / args.kind / f"anchor_{args.step}"
    if args.step == "generate":
        _, dtype, _, _, dataset, _ = KINDS[args.kind]
        generate_kind(args.kind, dtype, dataset, tuple(json.loads(args.shape)), workdir / args.kind / "source.h5")
    elif args.step == "read":
        step_read(level0)
    elif args.step == "tensorstore":
        step_tensorstore(args.kind, level0, out)
    elif args.step == "tinybrain":
        step_tinybrain(args.kind, level0, out)
    elif args.step == "numpy":
        step_numpy(level0, out)
    if out.exists():
        shutil.rmtree(out)
    return 0


# --- the parent ----------------------------------------------------------------------------

def step_argv(step: str, kind: str, workdir: Path, *extra: str) -> list[str]:
    return [PYTHON, str(Path(__file__).resolve()), "--step", step, "--kind", kind, "--workdir", str(workdir),
            "--scaling", SCALING["option"], *extra]


def has_tinybrain() -> bool:
    import importlib.util

    return importlib.util.find_spec("tinybrain") is not None


def bench_kind(kind: str, workdir: Path, size: int, rounds: int) -> list[str]:
    """Generate, measure and print one volume's table; returns its goal lines."""
    channel_type, dtype, itemsize, share, _, goal = KINDS[kind]
    shape = wide_shape(int(size * share), itemsize)
    folder = workdir / kind
    folder.mkdir()
    measure(step_argv("generate", kind, workdir, "--shape", json.dumps(shape)), workdir)
    specs = {}
    for levels in (0, LEVELS):
        specs[levels] = folder / f"levels{levels}.toml"
        specs[levels].write_text(bench_spec("pyramid_bench", "source.h5", resolution=RESOLUTION,
                                            scaling_option=SCALING["option"], levels=levels, channel=kind,
                                            channel_type=channel_type, channel_extra=f'datatype = "{dtype}"',
                                            store=f"store{levels}"))
    anchors = ["tensorstore"] + (["tinybrain"] if has_tinybrain() else []) + (["numpy"] if kind == "image" else [])
    times: dict[str, list[float]] = {k: [] for k in ["read", "ingest0", "ingest3", *anchors]}
    peaks: dict[str, int] = {k: 0 for k in times}
    for _ in range(rounds):  # interleaved, so a slow spell of the disk hits every step alike
        for levels in (0, LEVELS):
            shutil.rmtree(folder / f"store{levels}", ignore_errors=True)
            m = measure([NDINGEST, "ingest", str(specs[levels])], folder)
            status = json.loads(measure([NDINGEST, "status", "--json", str(specs[levels])], folder).stdout)
            done = status["channels"][kind]
            if not done["done"] == done["total"] == done["verified"]:
                sys.exit(f"{kind}: ingest with {levels} levels did not finish: {done}")
            times[f"ingest{levels}"].append(m.seconds)
            peaks[f"ingest{levels}"] = max(peaks[f"ingest{levels}"], m.peak_rss)
            if levels == 0:
                m = measure(step_argv("read", kind, workdir), workdir)
                times["read"].append(reported_seconds(m))
                peaks["read"] = max(peaks["read"], m.peak_rss)
        for anchor in anchors:
            m = measure(step_argv(anchor, kind, workdir), workdir)
            times[anchor].append(reported_seconds(m))
            peaks[anchor] = max(peaks[anchor], m.peak_rss)
    t = {k: median(v) for k, v in times.items()}
    unit = t["read"]
    pyramid = t["ingest3"] - t["ingest0"]
    z, y, x = shape
    nbytes = x * y * z * itemsize

    def row(what: str, seconds: float, key: str | None) -> str:
        rss = f"{peaks[key] / MiB:.0f}" if key else "-"
        return f"| {what} | {seconds:.2f} | {seconds / unit:.2f} | {rss} |"

    print(f"{kind}: x {x}, y {y}, z {z} {dtype} = {nbytes / MiB:.0f} MiB, {SCALING['option']}, {LEVELS} levels; "
          f"median of {rounds} round(s)")
    print()
    print("| step | seconds | x the read | peak RSS MiB |")
    print("|---|---:|---:|---:|")
    print(row("one tensorstore read of level 0, F order (the unit)", unit, "read"))
    print(row("`ndingest ingest`, scaling_levels = 0", t["ingest0"], "ingest0"))
    print(row(f"`ndingest ingest`, scaling_levels = {LEVELS}", t["ingest3"], "ingest3"))
    print(row(f"ndingest's {LEVELS} levels, built and verified (the difference)", pyramid, None))
    names = {"tensorstore": f"tensorstore `downsample` driver ({'mean' if kind == 'image' else 'mode, counts zeros'})",
             "tinybrain": "CloudVolume + tinybrain (" + ("averaging" if kind == "image" else
                                                          "downsample_segmentation, ties by position") + ")",
             "numpy": "careful numpy mean (strided views, uint16 sums)"}
    for anchor in anchors:
        print(row(f"{names[anchor]}, {LEVELS} levels, not verified", t[anchor], anchor))
    if not has_tinybrain():
        print("| CloudVolume + tinybrain | not installed (`pip install tinybrain`) | - | - |")
    print()
    ok = pyramid / unit <= goal
    rss_ok = peaks["ingest3"] <= RSS_GOAL_MIB * MiB
    return [f"- {kind}: {LEVELS} levels built and verified in {pyramid / unit:.2f}x the read (goal <= {goal:g}x): "
            f"{'PASS' if ok else 'MISS'}",
            f"- {kind}: ingest peak RSS with {LEVELS} levels {peaks['ingest3'] / MiB:.0f} MiB "
            f"(goal <= {RSS_GOAL_MIB} MiB): {'PASS' if rss_ok else 'MISS'}"]


def bench(args: argparse.Namespace) -> int:
    size = 8 * MiB if args.quick and args.size is None else (args.size or 512 * MiB)
    workdir = Path(tempfile.mkdtemp(prefix="ndingest-pyramid-bench-", dir=args.tmp))
    try:
        goals = []
        for kind in KINDS:
            goals += bench_kind(kind, workdir, size, args.rounds)
    finally:
        if args.keep:
            print(f"Kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print("Goals:")
    print("\n".join(goals))
    print()
    print(f"Machine: {machine()}; temp dir {Path(args.tmp or tempfile.gettempdir())}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=parse_size, help="image size in bytes (labels: half), default 512MiB")
    parser.add_argument("--quick", action="store_true", help="8 MiB image, 4 MiB labels: checks the script runs")
    parser.add_argument("--rounds", type=int, default=1, help="measure every step N times, interleaved; report the "
                        "median time and the largest peak RSS (default 1)")
    parser.add_argument("--scaling", choices=("zslices", "isotropic"), default="zslices",
                        help="the datasets' scaling_option (default zslices)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--tmp", metavar="DIR", help="where to make the temporary folder (default: system temp dir)")
    parser.add_argument("--step", choices=("generate", "read", "tensorstore", "tinybrain", "numpy"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--kind", choices=sorted(KINDS), help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--shape", help=argparse.SUPPRESS)
    args = parser.parse_args()
    SCALING["option"] = args.scaling
    if args.step:
        return run_step(args)
    return bench(args)


if __name__ == "__main__":
    sys.exit(main())
